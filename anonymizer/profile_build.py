"""Generate MyoVault's de-identification recipe from the pinned copies of PS3.15 Table E.1-1.

Run ``python -m anonymizer.profile_build`` after changing a pinned source, the keep-list, the
safe-private list or a rule below; commit the regenerated ``anonymizer/data/*.deid``. A test
checks that the committed recipe equals a fresh generation, so the data file can never drift from
its sources.

Sources (see ``anonymizer/data/source/README.md``):

* ``dicomfields_2026c.py.txt`` — Basic Profile action of every Table E.1-1 attribute, 2026c
  edition (PyPI ``dicom-anonymizer`` 2.1.0), parsed with :mod:`ast`, never executed;
* ``ps315_e1_1_2024b_innolitics.json`` — the 2024b table with the option columns.

Resolution of the table's actions (PS3.15 E.1.1 and Table E.1-1 legend), applied in this order:

1. an option column of a claimed option overrides the Basic Profile action:

   * Retain Longitudinal Temporal Information with Modified Dates ``C``: dates and date-times
     are shifted by the subject's offset (``JITTER``); times are kept because the offset is a
     whole number of days;
   * Retain Patient Characteristics ``K`` → keep; ``C`` → see 2.;
   * Clean Descriptors ``C`` → ``func:clean_text`` (see 2.);
   * Retain Safe Private ``C`` → the explicit list in ``safe_private.json``.
2. only the technical descriptors in ``CLEANED_DESCRIPTORS`` (series description, protocol
   name, …) are retained after cleaning; every other ``C`` of Clean Descriptors or Retain Patient
   Characteristics gets its Basic Profile action: automatic cleaning of free narrative is not
   trustworthy. This is stricter than the options allow, never weaker;
3. combinations resolve to the action that keeps the object valid whatever the attribute's type
   in its IOD: ``X/Z`` → ``Z``; ``X/D``, ``Z/D``, ``X/Z/D`` → ``D``; ``X/Z/U*`` → the
   sequence is kept and cleaned recursively (its UIDs are remapped by their own ``U`` rows);
4. single actions: ``X`` → ``REMOVE``, ``Z`` → ``BLANK``, ``D`` → ``REPLACE func:dummy``
   (an empty sequence for SQ), ``U`` → ``REPLACE func:remap_uid``, ``K`` → ``KEEP``;
5. project overrides: Patient's Name and Patient ID carry the keyed pseudonym.

Public attributes that are not in the table are kept only if listed in ``research_keep.json``;
the recipe ends with ``REMOVE ALL`` (fail closed).
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from anonymizer.edition import DATA_DIR, EDITION, PROFILE_VERSION, RECIPE_PATH
from anonymizer.errors import ProfileError

SOURCE_DIR = DATA_DIR / "source"
TABLE_2026C = SOURCE_DIR / "dicomfields_2026c.py.txt"
TABLE_2024B = SOURCE_DIR / "ps315_e1_1_2024b_innolitics.json"
KEEP_LIST = DATA_DIR / "research_keep.json"
SAFE_PRIVATE = DATA_DIR / "safe_private.json"


#: CID 7050 codes of what this profile claims (DCM coding scheme).
CLAIMED_OPTIONS: tuple[tuple[str, str], ...] = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113105", "Clean Descriptors Option"),
    ("113111", "Retain Safe Private Option"),
)

_LIST_TO_ACTION = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}

#: Descriptors retained after cleaning (Clean Descriptors option). Every other attribute with
#: a ``C`` under Clean Descriptors or Retain Patient Characteristics gets its Basic Profile action:
#: free text such as Study Description routinely carries names (one real sample holds a person's
#: name there), and automatic cleaning of free narrative is not trustworthy. Only the technical
#: descriptors qMRI needs to recognise a sequence are kept, after cleaning and verification.
CLEANED_DESCRIPTORS: frozenset[str] = frozenset(
    {
        "SeriesDescription",
        "ProtocolName",
        "DerivationDescription",
        "AcquisitionDeviceProcessingDescription",
        "AcquisitionProtocolDescription",
        "ContrastBolusAgent",
    }
)

#: Attributes carrying the subject pseudonym instead of the Basic Profile action.
PSEUDONYM_KEYWORDS: frozenset[str] = frozenset({"PatientName", "PatientID"})

_TAG_RE = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")
_MASK_RE = re.compile(r"^\(([0-9A-FX]{4}),([0-9A-FX]{4})\)$")
_HEX4 = re.compile(r"^[0-9A-F]{4}$")
_HEX2 = re.compile(r"^[0-9A-F]{2}$")


@dataclass(frozen=True)
class Row:
    """One resolved row of the recipe.

    Parameters
    ----------
    tag
        ``GGGGEEEE`` (``X`` for a wildcard nibble) or a private spec ``(GGGG,"creator",EE)``.
    name
        Attribute name as printed in the table.
    basic
        Basic Profile action of the table (``""`` for keep-list rows).
    action
        deid action (``REMOVE``, ``BLANK``, ``REPLACE``, ``JITTER``, ``KEEP``).
    value
        ``func:…`` value of ``REPLACE``/``JITTER``, else ``""``.
    why
        Reason written as a comment above the action.
    """

    tag: str
    name: str
    basic: str
    action: str
    value: str
    why: str


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_dicomfields(path: Path) -> dict[str, tuple[str, str]]:
    """Parse dicom-anonymizer's table module without executing it.

    Returns
    -------
    dict
        ``{"GGGGEEEE" or mask: (basic_action, name)}``. Masks (``(0x5000, 0x0000, 0xFF00,
        0x0000)``) become ``"50XXXXXX"``-style keys.
    """
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    out: dict[str, tuple[str, str]] = {}
    for node in ast.parse(source).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.List)):
            continue
        target = node.targets[0]
        if not isinstance(target, ast.Name) or target.id == "ALL_TAGS" or not node.value.elts:
            continue
        if target.id not in _LIST_TO_ACTION:
            raise ProfileError(f"unknown action list {target.id} in {path.name}")
        action = _LIST_TO_ACTION[target.id]
        for elt in node.value.elts:
            numbers = ast.literal_eval(elt)
            line = lines[elt.lineno - 1]
            name = line.split("#", 1)[1].strip() if "#" in line else ""
            if len(numbers) == 2:
                key = f"{numbers[0]:04X}{numbers[1]:04X}"
            elif len(numbers) == 4:
                key = _mask_key(numbers)
            else:
                raise ProfileError(f"unexpected tag form {numbers!r} in {path.name}")
            if key in out:
                raise ProfileError(f"attribute {key} listed twice in {path.name}")
            out[key] = (action, name)
    return out


def _mask_key(numbers: tuple[int, int, int, int]) -> str:
    group, element, group_mask, element_mask = numbers
    chars = []
    for value, mask in ((group, group_mask), (element, element_mask)):
        for shift in (12, 8, 4, 0):
            nibble_mask = (mask >> shift) & 0xF
            if nibble_mask == 0xF:
                chars.append(f"{(value >> shift) & 0xF:X}")
            elif nibble_mask == 0:
                chars.append("X")
            else:
                raise ProfileError(f"partial nibble mask in {numbers!r}")
    return "".join(chars)


def load_options_2024b(path: Path) -> tuple[dict[str, dict[str, str]], str]:
    """Rows of the innolitics 2024b table keyed ``GGGGEEEE`` (masks as ``50XXXXXX``).

    Returns
    -------
    tuple
        The rows and the basic action of the odd-group (private) row.
    """
    rows = json.loads(path.read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    private_basic = ""
    for row in rows:
        tag = row["tag"]
        if tag.startswith("(GGGG,EEEE)"):
            private_basic = row["basicProfile"]
            if row.get("rtnSafePrivOpt") != "C":
                raise ProfileError("2024b private row lacks the Retain Safe Private C action")
            continue
        match = _MASK_RE.match(tag)
        if not match:
            raise ProfileError(f"unparseable tag {tag!r} in {path.name}")
        out[match[1] + match[2]] = row
    if not private_basic:
        raise ProfileError("2024b table lacks the private attributes row")
    return out, private_basic


def _vr(key: str, name: str) -> str:
    if "X" in key:
        return ""
    tag = int(key, 16)
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        pass
    # 2026c attributes newer than pydicom's dictionary: infer from the name (only used to pick
    # between date shift, keep and clean, which never applies to these attributes anyway).
    for suffix, vr in (("Sequence", "SQ"), ("DateTime", "DT"), ("Date", "DA"), ("Time", "TM")):
        if name.endswith(suffix):
            return vr
    return "UI" if name.endswith("UID") else "LO"


def _keyword(key: str) -> str:
    if "X" in key:
        return ""
    return str(keyword_for_tag(int(key, 16)) or "")


def resolve(key: str, name: str, basic: str, options: dict[str, str]) -> Row:
    """Resolve one table attribute to a recipe row (rules in the module docstring)."""
    keyword = _keyword(key)
    vr = _vr(key, name)
    label = f"({key[:4]},{key[4:]}) {name}"
    if keyword in PSEUDONYM_KEYWORDS:
        return Row(key, name, basic, "REPLACE", "func:pseudonym", "project override: pseudonym")
    if options.get("rtnLongModifDatesOpt") == "C":
        if vr in ("DA", "DT"):
            return Row(key, name, basic, "JITTER", "func:date_shift", "modified dates: shifted")
        if vr == "TM":
            return Row(key, name, basic, "KEEP", "", "modified dates: whole-day shift keeps times")
    pat = options.get("rtnPatCharsOpt")
    if pat == "K":
        return Row(key, name, basic, "KEEP", "", "retain patient characteristics")
    clean = options.get("cleanDescOpt") == "C" or pat == "C"
    if clean and keyword in CLEANED_DESCRIPTORS and vr != "SQ":
        return Row(key, name, basic, "REPLACE", "func:clean_text", "clean descriptors")
    why = "free text not retained: basic action" if clean else "basic profile"
    single = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D"}.get(basic, basic)
    if basic == "X/Z/U*":
        return Row(key, name, basic, "REPLACE", "func:clean_sequence", f"{why} (U*: UIDs remapped)")
    if single == "X":
        return Row(key, name, basic, "REMOVE", "", why)
    if single == "Z":
        return Row(key, name, basic, "BLANK", "", why)
    if single == "D":
        if vr == "SQ":
            return Row(key, name, basic, "BLANK", "", f"{why} (D on a sequence: emptied)")
        return Row(key, name, basic, "REPLACE", "func:dummy", why)
    if single == "U":
        return Row(key, name, basic, "REPLACE", "func:remap_uid", why)
    raise ProfileError(f"unknown action {basic!r} for {label}")


def build_rows() -> tuple[list[Row], dict[str, str]]:
    """All recipe rows and the header metadata, from the pinned sources."""
    table = parse_dicomfields(TABLE_2026C)
    options, private_basic = load_options_2024b(TABLE_2024B)
    for key, row in options.items():
        if key not in table:
            raise ProfileError(f"2024b attribute {key} missing from the 2026c table")
        if table[key][0] != row["basicProfile"]:
            raise ProfileError(f"basic action of {key} differs between 2024b and 2026c")
    rows: list[Row] = []
    for key in sorted(table):
        basic, name = table[key]
        opts = {k: v for k, v in options.get(key, {}).items() if k.endswith("Opt")}
        rows.append(resolve(key, name, basic, opts))
    table_tags = {int(k, 16) for k in table if "X" not in k}
    keep = json.loads(KEEP_LIST.read_text(encoding="utf-8"))
    seen: set[str] = set()
    for group in keep["groups"]:
        for keyword in group["keywords"]:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ProfileError(f"keep-list keyword {keyword!r} unknown to the dictionary")
            if tag in table_tags:
                raise ProfileError(f"keep-list keyword {keyword!r} is in Table E.1-1")
            if keyword in seen:
                raise ProfileError(f"keep-list keyword {keyword!r} listed twice")
            seen.add(keyword)
            rows.append(Row(f"{tag:08X}", keyword, "", "KEEP", "", f"research: {group['reason']}"))
    private = json.loads(SAFE_PRIVATE.read_text(encoding="utf-8"))
    if private_basic != "X":
        raise ProfileError(f"unexpected private basic action {private_basic!r}")
    for attr in private["attributes"]:
        group, creator, offset = attr["group"], attr["creator"], attr["offset"]
        if not (_HEX4.match(group) and int(group, 16) % 2 == 1 and _HEX2.match(offset)):
            raise ProfileError(f"bad safe-private entry {attr!r}")
        if '"' in creator or not attr.get("reason"):
            raise ProfileError(f"bad safe-private entry {attr!r}")
        spec = f'({group},"{creator}",{offset})'
        rows.append(Row(spec, attr["name"], "X", "KEEP", "", f"safe private: {attr['reason']}"))
    meta = {
        "profile": PROFILE_VERSION,
        "edition": EDITION,
        "source_2026c": f"{TABLE_2026C.name} sha256={_sha256(TABLE_2026C)}",
        "source_2024b": f"{TABLE_2024B.name} sha256={_sha256(TABLE_2024B)}",
        "keep_list": f"{KEEP_LIST.name} sha256={_sha256(KEEP_LIST)}",
        "safe_private": f"{SAFE_PRIVATE.name} sha256={_sha256(SAFE_PRIVATE)}",
    }
    return rows, meta


def render(rows: list[Row], meta: dict[str, str]) -> str:
    """Render rows as a deid recipe (``FORMAT dicom``, ``%header`` section)."""
    out = [
        "FORMAT dicom",
        "",
        "# MyoVault de-identification recipe. GENERATED by `python -m anonymizer.profile_build`:",
        "# do not edit by hand. DICOM PS3.15 Annex E Basic Application Level Confidentiality",
        "# Profile with the options listed below, from Table E.1-1 (edition recorded below).",
        "# Lines starting with '# @' are metadata read by anonymizer.profile.",
    ]
    out += [f"# @{key}: {value}" for key, value in meta.items()]
    out += [f"# @option: {code} {meaning}" for code, meaning in CLAIMED_OPTIONS]
    out += [
        "",
        "%header",
        "",
        "ADD PatientIdentityRemoved YES",
        "ADD LongitudinalTemporalInformationModified MODIFIED",
        "",
    ]
    for row in rows:
        basic = f" | table: {row.basic}" if row.basic else ""
        out.append(f"# {row.name}{basic} | {row.why}")
        out.append(f"{row.action} {row.tag} {row.value}".rstrip())
    out += ["", "# Fail closed: every attribute not listed above is removed.", "REMOVE ALL", ""]
    return "\n".join(out)


def generate() -> str:
    """Return the recipe text a fresh generation produces."""
    rows, meta = build_rows()
    return render(rows, meta)


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the generated recipe."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the recipe is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        current = RECIPE_PATH.read_text(encoding="utf-8") if RECIPE_PATH.exists() else ""
        if current != text:
            print(f"{RECIPE_PATH} is stale: run python -m anonymizer.profile_build")
            return 1
        print(f"{RECIPE_PATH.name} is up to date")
        return 0
    RECIPE_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {RECIPE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
