"""Independent residual-identifier verification.

Before de-identification, :func:`capture_identifiers` records every identifying value of the
input: all person names (and their parts), ids, addresses, institution and device names, dates,
instance UIDs, plus every value of an attribute the profile removes or replaces. After
de-identification, :func:`verify_output` looks for them in the *encoded* output (every element,
at any depth, including surviving private attributes and the file meta group; pixel data
excluded) and checks identifier patterns element by element (person names other than the
pseudonym, UIDs outside the repository root, e-mail addresses, phone numbers). Any finding
keeps the file in quarantine.

This module never decides what to keep; it only reports what it sees.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.multival import MultiValue
from pydicom.tag import Tag
from pydicom.uid import UID_dictionary

from anonymizer.profile import Action, Profile

#: Public attributes that identify a person, place, device or episode whatever the profile says.
IDENTIFYING_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientID",
        "OtherPatientIDs",
        "IssuerOfPatientID",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "PatientTelecomInformation",
        "PatientBirthName",
        "PatientMotherBirthName",
        "MedicalRecordLocator",
        "MilitaryRank",
        "BranchOfService",
        "CountryOfResidence",
        "RegionOfResidence",
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "StationName",
        "DeviceSerialNumber",
        "DeviceID",
        "DetectorID",
        "GantryID",
        "AccessionNumber",
        "StudyID",
        "AdmissionID",
        "ServiceEpisodeID",
        "RequestedProcedureID",
        "ScheduledProcedureStepID",
        "PerformedProcedureStepID",
        "PerformedStationName",
        "PerformedLocation",
        "ScheduledStationName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "ClinicalTrialSubjectID",
        "ClinicalTrialSubjectReadingID",
        "ClinicalTrialSiteID",
        "ClinicalTrialSiteName",
        "ClinicalTrialSponsorName",
        "ClinicalTrialProtocolID",
        "ResponsibleOrganization",
        "ResponsiblePerson",
        "PersonAddress",
        "PersonTelephoneNumbers",
    }
)

#: UI attributes naming classes, not instances (never identifying).
CLASS_UID_KEYWORDS: frozenset[str] = frozenset(
    {
        "SOPClassUID",
        "ReferencedSOPClassUID",
        "MediaStorageSOPClassUID",
        "TransferSyntaxUID",
        "ImplementationClassUID",
        "CodingSchemeUID",
        "ContextUID",
        "MappingResourceUID",
        "ReferencedSOPClassUIDInFile",
        "ReferencedTransferSyntaxUIDInFile",
        "SOPClassesInStudy",
        "RelatedGeneralSOPClassUID",
        "OriginalSpecializedSOPClassUID",
    }
)

#: Values that are placeholders, not identifiers (an input already anonymised elsewhere).
PLACEHOLDERS: frozenset[str] = frozenset(
    {"anonymized", "anonymised", "anonymous", "anon", "none", "unknown", "n/a", "na", "removed"}
)

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UR", "UT"})
_FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UC", "UT"})
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_PHONE = re.compile(
    r"(?<![\w.])\+?\(?\d{2,4}\)?[ /.-]\d{2,4}[ /.-]\d{3,5}(?:[ /.-]\d{2,5})?(?![\w.])"
)
_SPLIT_NAME = re.compile(r"[\^=\s,]+")
MIN_SUBSTRING = 4
MIN_WORD = 3
#: Digit-only identifiers shorter than this are compared by equality with text values only
#: (``"1234"`` as a substring of the encoded file would match window widths and the like).
MIN_NUMERIC_SUBSTRING = 6


@dataclass
class Identifiers:
    """Identifying values captured from one input dataset (all lower case)."""

    texts: set[str] = field(default_factory=set)
    words: set[str] = field(default_factory=set)
    uids: set[str] = field(default_factory=set)
    dates: set[str] = field(default_factory=set)

    def needles(self) -> list[tuple[str, str]]:
        """``(value, boundary)`` pairs searched as substrings of the encoded output.

        ``boundary`` is ``""`` (plain substring), ``"digits"`` (not inside a longer number),
        ``"word"`` (whole word) or ``"uid"`` (not inside a longer UID).
        """
        out: list[tuple[str, str]] = []
        for value in self.texts | _date_variants(self.dates):
            if len(value) < MIN_SUBSTRING:
                continue
            if value.isdigit():
                if len(value) >= MIN_NUMERIC_SUBSTRING:
                    out.append((value, "digits"))
            else:
                out.append((value, ""))
        out += [(word, "word") for word in self.words if len(word) >= MIN_WORD]
        out += [(uid, "uid") for uid in self.uids]
        return sorted(set(out))

    def short_values(self) -> set[str]:
        """Identifiers only compared by equality with whole text values."""
        return {
            v
            for v in self.texts
            if (len(v) < MIN_SUBSTRING and not v.isdigit() and len(v) >= 2)
            or (v.isdigit() and MIN_SUBSTRING <= len(v) < MIN_NUMERIC_SUBSTRING)
        }

    def clean_pattern(self) -> re.Pattern[str] | None:
        """Case-insensitive regex of the texts, words and dates (for Clean Descriptors)."""
        texts = frozenset(v for v in self.texts | _date_variants(self.dates) if len(v) >= 3)
        words = frozenset(w for w in self.words if len(w) >= MIN_WORD)
        return _compile_clean(texts, words)


@lru_cache(maxsize=256)
def _compile_clean(texts: frozenset[str], words: frozenset[str]) -> re.Pattern[str] | None:
    parts = [re.escape(v) for v in sorted(texts, key=len, reverse=True)]
    parts += [rf"\b{re.escape(w)}\b" for w in sorted(words)]
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def _boundary_ok(text: str, start: int, end: int, boundary: str) -> bool:
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if boundary == "digits":
        return not (before.isdigit() or before == "." or after.isdigit())
    if boundary == "word":
        return not (before.isalnum() or after.isalnum())
    if boundary == "uid":
        return not (before.isdigit() or before == "." or after.isdigit() or after == ".")
    return True


def find_needles(text: str, needles: list[tuple[str, str]], limit: int = 20) -> list[int]:
    """Offsets in ``text`` (already lower case) where a captured identifier occurs."""
    hits: list[int] = []
    for value, boundary in needles:
        start = text.find(value)
        while start != -1:
            if _boundary_ok(text, start, start + len(value), boundary):
                hits.append(start)
                if len(hits) >= limit:
                    return hits
                break
            start = text.find(value, start + 1)
    return hits


def _date_variants(dates: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for d in dates:
        y, m, dd = d[:4], d[4:6], d[6:8]
        out |= {d, f"{y}-{m}-{dd}", f"{dd}.{m}.{y}", f"{dd}/{m}/{y}", f"{m}/{dd}/{y}"}
        out |= {f"{y}.{m}.{dd}", f"{y}/{m}/{dd}"}
    return out


def _values(value: object) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, MultiValue | list | tuple):
        for item in value:
            if item is not None:
                yield str(item)
        return
    yield str(value)


def _capture_text(ids: Identifiers, text: str, vr: str) -> None:
    value = text.strip().strip("\x00").strip()
    low = value.lower()
    if not value or low in PLACEHOLDERS:
        return
    if vr == "PN":
        ids.texts.add(low.replace("^", " ").strip())
        for part in _SPLIT_NAME.split(low):
            if part and part not in PLACEHOLDERS:
                ids.words.add(part)
        return
    ids.texts.add(low)


def capture_identifiers(ds: Dataset, profile: Profile) -> Identifiers:
    """Record the identifying values of an input dataset (recursively, before any change)."""
    ids = Identifiers()
    _capture(ds, profile, ids)
    return ids


_KEEPING = frozenset({Action.KEEP, Action.CLEAN_TEXT, Action.CLEAN_SEQUENCE})


_SINGLE_VALUE_VRS = frozenset({"LT", "ST", "UT", "UR"})


def _decode(raw_value: bytes, vr: str, encoding: str) -> list[str]:
    text = raw_value.decode(encoding, errors="replace").rstrip(" \x00")
    if not text:
        return []
    return [text] if vr in _SINGLE_VALUE_VRS else text.split("\\")


class _DictVR(dict[int, str]):
    """Tag → unambiguous dictionary VR ('' when unknown or ambiguous), filled on demand."""

    def __missing__(self, tag: int) -> str:
        try:
            vr = str(dictionary_VR(tag))
        except KeyError:
            vr = ""
        self[tag] = vr = vr if len(vr) == 2 else ""
        return vr


_DICT_VR = _DictVR()


def _walk(
    ds: Dataset,
    vrs: frozenset[str],
    where: str = "",
    public_only: bool = False,
    encoding: str = "",
) -> Iterator[tuple[str, int, str, list[str]]]:
    """Yield ``(where, tag, VR, values as text)`` for elements whose VR is in ``vrs``.

    ``where`` is the path of the enclosing sequence items (``""`` at the top level); the place
    of an element is ``_place(where, tag)``, formatted only when something is reported.

    Sequences are entered at any depth. Values still in their raw encoded form are decoded
    directly (no pydicom value conversion: the many numeric elements of MR headers are never
    touched); ``public_only`` skips private elements.
    """
    if not encoding:
        charset = str(ds.get("SpecificCharacterSet", "") or "")
        encoding = "utf-8" if "192" in charset else "latin-1"
    for tag, raw in list(ds.items()):  # stored elements: raw values stay unconverted
        if public_only and tag >> 16 & 1:
            continue
        vr = getattr(raw, "VR", None)
        if vr is None:  # implicit VR: the dictionary's VR, unless unknown or ambiguous
            vr = _DICT_VR[int(tag)] or ds[tag].VR
        elif vr == "UN":
            vr = ds[tag].VR
        if vr == "SQ":
            for number, item in enumerate(ds[tag].value or ()):
                yield from _walk(item, vrs, f"{where}{tag}[{number}]/", public_only, encoding)
        elif vr in vrs:
            value = getattr(raw, "value", None)
            if isinstance(value, bytes):
                yield where, int(tag), vr, _decode(value, vr, encoding)
            else:
                yield where, int(tag), vr, list(_values(ds[tag].value))


_CAPTURE_VRS = _TEXT_VRS | {"UI", "DA", "DT"}
_IDENTIFYING_TAGS = frozenset(int(tag_for_keyword(k) or 0) for k in IDENTIFYING_KEYWORDS)
_CLASS_UID_TAGS = frozenset(int(tag_for_keyword(k) or 0) for k in CLASS_UID_KEYWORDS)


def _capture(ds: Dataset, profile: Profile, ids: Identifiers) -> None:
    for _, tag, vr, values in _walk(ds, _CAPTURE_VRS, public_only=True):
        if vr == "UI":
            if tag not in _CLASS_UID_TAGS:
                ids.uids |= {u.strip(" \x00") for u in values if u.strip(" \x00")}
            continue
        if vr in ("DA", "DT"):
            for text in values:
                digits = text.strip()[:8]
                if len(digits) == 8 and digits.isdigit():
                    ids.dates.add(digits)
            continue
        removed = vr != "CS" and profile.action_for(tag) not in _KEEPING
        if vr == "PN" or tag in _IDENTIFYING_TAGS or removed:
            for text in values:
                _capture_text(ids, text, vr)


def clean_text(value: str, pattern: re.Pattern[str] | None) -> str:
    """Clean Descriptors: drop captured identifiers, dates, e-mails and phone numbers.

    Returns the remaining text with whitespace collapsed (possibly empty).
    """
    text = value
    if pattern is not None:
        text = pattern.sub(" ", text)
    text = _EMAIL.sub(" ", text)
    text = _PHONE.sub(" ", text)
    text = re.sub(r"(?<!\d)(19|20)\d{2}[-./]?\d{2}[-./]?\d{2}(?!\d)", " ", text)
    text = re.sub(r"(?<!\d)\d{1,2}[./]\d{1,2}[./](19|20)\d{2}(?!\d)", " ", text)
    return " ".join(text.split())


@dataclass(frozen=True)
class Finding:
    """One verifier finding (no identifier value is ever stored, only where and what kind)."""

    where: str
    kind: str

    def __str__(self) -> str:
        return f"{self.kind} at {self.where}"


def header_text(ds: Dataset, encoded: bytes) -> str:
    """Lower-case text of an encoded Part 10 file without its pixel data value."""
    pixel = ds.get("PixelData")
    if isinstance(pixel, bytes) and pixel and encoded.endswith(pixel):
        encoded = encoded[: len(encoded) - len(pixel)]
    elif pixel is not None:
        saved = ds.pop(0x7FE00010)
        try:
            buf = io.BytesIO()
            dcmwrite(buf, ds, enforce_file_format=True)
            encoded = buf.getvalue()
        finally:
            ds[0x7FE00010] = saved
    return encoded.decode("latin-1").lower()


_CHECK_VRS = frozenset({"PN", "UI"}) | _TEXT_VRS


def verify_output(
    ds: Dataset,
    encoded: bytes,
    ids: Identifiers,
    *,
    pseudonym: str,
    owns_uid: Callable[[str], bool],
) -> list[Finding]:
    """Scan a de-identified dataset and its encoding for residual identifiers.

    Parameters
    ----------
    ds
        The output dataset, file meta included.
    encoded
        The complete Part 10 encoding of ``ds`` that will be written.
    ids
        Identifiers captured from the input.
    pseudonym
        The only person name allowed to appear.
    owns_uid
        Tells whether a UID was made by the repository.

    Returns
    -------
    list of Finding
        Empty when the output is clean.
    """
    findings = [
        Finding(f"byte offset {offset}", "captured identifier")
        for offset in find_needles(header_text(ds, encoded), ids.needles())
    ]
    short = ids.short_values()
    for where, tag, vr, values in _walk(ds.file_meta, _CHECK_VRS, "meta "):
        _check_element(tag, vr, values, where, findings, pseudonym, owns_uid, short)
    for where, tag, vr, values in _walk(ds, _CHECK_VRS):
        _check_element(tag, vr, values, where, findings, pseudonym, owns_uid, short)
    return findings


def _place(where: str, tag: int) -> str:
    return f"{where}{Tag(tag)}"


def _check_element(
    tag: int,
    vr: str,
    values: list[str],
    where: str,
    findings: list[Finding],
    pseudonym: str,
    owns_uid: Callable[[str], bool],
    short: set[str],
) -> None:
    if vr == "PN":
        for text in values:
            if text.strip() and text.strip() not in (pseudonym, "ANONYMIZED"):
                findings.append(Finding(_place(where, tag), "person name other than the pseudonym"))
    elif vr == "UI" and tag not in _CLASS_UID_TAGS:
        for uid in values:
            uid = uid.strip(" \x00")
            if uid and uid not in UID_dictionary and not owns_uid(uid):
                findings.append(Finding(_place(where, tag), "UID outside the repository root"))
    if vr in _TEXT_VRS and short and vr not in ("PN", "CS"):
        for text in values:
            if text.strip().lower() in short:
                findings.append(Finding(_place(where, tag), "captured identifier (whole value)"))
    if vr in _FREE_TEXT_VRS:
        for text in values:
            if _EMAIL.search(text):
                findings.append(Finding(_place(where, tag), "e-mail address"))
            if _PHONE.search(text):
                findings.append(Finding(_place(where, tag), "phone number"))
