"""Bulk consent import from CSV or TSV, with every row's problems reported by line number."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from consent.errors import InvalidConsentError
from consent.records import (
    PENDING_PSEUDONYM,
    ConsentInput,
    participant_id_problem,
    validate_consent,
)

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
#: Registration tables name participants not yet uploaded by the site's own id (and site code)
#: instead of a pseudonym; the repository derives the pseudonym exactly as the anonymizer does.
PARTICIPANT_COLUMNS = ("participant_id", "site")
MAX_ROWS = 20_000


@dataclass(frozen=True)
class RowError:
    line: int  # 1-based line in the file (the header is line 1)
    problems: tuple[str, ...]


@dataclass(frozen=True)
class Participant:
    """A site's own participant id (never stored) and the site code ("" = the default site)."""

    participant_id: str
    site: str = ""

    def __repr__(self) -> str:  # never print the identifier
        return f"Participant(site={self.site!r})"


@dataclass(frozen=True)
class ParsedTable:
    rows: tuple[tuple[int, ConsentInput], ...]
    errors: tuple[RowError, ...]
    #: line -> participant, for registration tables (rows then carry PENDING_PSEUDONYM)
    participants: tuple[tuple[int, Participant], ...] = ()
    registration: bool = False  # the table names participants by participant_id

    @property
    def ok(self) -> bool:
        return not self.errors


def parse_table(text: str, *, delimiter: str | None = None) -> ParsedTable:
    """Parse a consent table; ``delimiter`` defaults to tab if the header has one, else comma.

    Header problems (missing or unknown columns) are reported as a :class:`RowError` on line 1
    and no row is returned. A pseudonym appearing twice is an error on its second line.

    A *registration* table has ``participant_id`` (and optionally ``site``) instead of
    ``pseudonym``: participants not uploaded yet. Problems never quote the participant id.
    """
    text = text.lstrip("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = delimiter or ("\t" if "\t" in first else ",")
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter, strict=True)
    header = [h.strip() for h in (reader.fieldnames or [])]
    registration = "participant_id" in header
    required = (
        tuple(c for c in REQUIRED_COLUMNS if c != "pseudonym") if registration else REQUIRED_COLUMNS
    )
    known = required + OPTIONAL_COLUMNS + (PARTICIPANT_COLUMNS if registration else ())
    missing = [c for c in required if c not in header]
    unknown = [c for c in header if c not in known]
    header_problems = []
    if registration and "pseudonym" in header:
        header_problems.append("give either pseudonym or participant_id columns, not both")
        unknown = [c for c in unknown if c != "pseudonym"]
    if missing:
        header_problems.append(f"missing columns: {', '.join(missing)}")
    if unknown:
        header_problems.append(f"unknown columns: {', '.join(unknown)}")
    if header_problems:
        return ParsedTable(rows=(), errors=(RowError(1, tuple(header_problems)),))
    reader.fieldnames = header
    rows: list[tuple[int, ConsentInput]] = []
    participants: list[tuple[int, Participant]] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    seen_participants: dict[Participant, int] = {}
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
            participant = None
            if registration:
                problem = participant_id_problem(raw.get("participant_id"))
                participant = Participant(
                    str(raw.get("participant_id") or "").strip(),
                    str(raw.get("site") or "").strip(),
                )
                raw = {**raw, "pseudonym": PENDING_PSEUDONYM}
            try:
                record = validate_consent(raw)
            except InvalidConsentError as exc:
                errors.append(
                    RowError(
                        line, ((problem,) if participant and problem else ()) + tuple(exc.problems)
                    )
                )
                continue
            if participant is not None:
                if problem:
                    errors.append(RowError(line, (problem,)))
                elif participant in seen_participants:
                    errors.append(
                        RowError(
                            line,
                            (
                                "the same participant is already given on line "
                                f"{seen_participants[participant]}",
                            ),
                        )
                    )
                else:
                    seen_participants[participant] = line
                    rows.append((line, record))
                    participants.append((line, participant))
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
    return ParsedTable(
        rows=tuple(rows),
        errors=tuple(errors),
        participants=tuple(participants),
        registration=registration,
    )
