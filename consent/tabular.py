"""Bulk consent import from CSV or TSV, with every row's problems reported by line number."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from consent.errors import InvalidConsentError
from consent.records import ConsentInput, validate_consent

REQUIRED_COLUMNS = (
    "pseudonym",
    "form",
    "form_version",
    "signed_on",
    "duo_terms",
    "lawful_basis",
    "special_category_basis",
)
OPTIONAL_COLUMNS = ("recontact_allowed", "expires_on")
MAX_ROWS = 20_000


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based line in the file (the header is line 1)
    problems: tuple[str, ...]


@dataclass(frozen=True)
class ParsedTable:
    rows: tuple[tuple[int, ConsentInput], ...]
    errors: tuple[RowError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_table(text: str, *, delimiter: str | None = None) -> ParsedTable:
    """Parse a consent table; ``delimiter`` defaults to tab if the header has one, else comma.

    Header problems (missing or unknown columns) are reported as a :class:`RowError` on line 1
    and no row is returned. A pseudonym appearing twice is an error on its second line.
    """
    text = text.lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = delimiter or ("\t" if "\t" in first else ",")
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, strict=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    header_problems = []
    if missing:
        header_problems.append(f"missing columns: {', '.join(missing)}")
    if unknown:
        header_problems.append(f"unknown columns: {', '.join(unknown)}")
    if header_problems:
        return ParsedTable(rows=(), errors=(RowError(1, tuple(header_problems)),))
    reader.fieldnames = header
    rows: list[tuple[int, ConsentInput]] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    try:
        for index, raw in enumerate(reader):
            line = reader.line_num
            if index >= MAX_ROWS:
                errors.append(RowError(line, (f"more than {MAX_ROWS} rows; split the file",)))
                break
            if None in raw:
                errors.append(RowError(line, ("more fields than columns",)))
                continue
            if all(not (v or "").strip() for v in raw.values()):
                continue
            try:
                record = validate_consent(raw)
            except InvalidConsentError as exc:
                errors.append(RowError(line, tuple(exc.problems)))
                continue
            if record.pseudonym in seen:
                errors.append(
                    RowError(
                        line,
                        (f"{record.pseudonym} already given on line {seen[record.pseudonym]}",),
                    )
                )
                continue
            seen[record.pseudonym] = line
            rows.append((line, record))
    except csv.Error as exc:
        errors.append(RowError(reader.line_num, (f"unreadable CSV: {exc}",)))
    return ParsedTable(rows=tuple(rows), errors=tuple(errors))
