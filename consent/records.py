"""One consent record: fields, closed vocabularies for the GDPR lawful basis, validation."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from consent.duo import Term, parse_consent_terms
from consent.errors import ConsentError, InvalidConsentError

# GDPR Art. 6(1) lawful bases that can apply to research on imaging data.
ART6_BASES: dict[str, str] = {
    "6(1)(a)": "consent",
    "6(1)(c)": "legal obligation",
    "6(1)(e)": "task in the public interest",
    "6(1)(f)": "legitimate interests",
}
# GDPR Art. 9(2) conditions for health data (a special category: one is always required).
ART9_CONDITIONS: dict[str, str] = {
    "9(2)(a)": "explicit consent",
    "9(2)(h)": "health or social care",
    "9(2)(i)": "public health",
    "9(2)(j)": "scientific research (Art. 89 safeguards)",
}
PSEUDONYM_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class ConsentInput:
    """A validated consent version for one subject (by pseudonym)."""

    pseudonym: str
    form: str
    form_version: str
    signed_on: date
    terms: tuple[Term, ...]
    lawful_basis: str
    special_category_basis: str
    recontact_allowed: bool = False
    expires_on: date | None = None


#: A site's own participant identifier (as in DICOM PatientID: at most 64 characters).
MAX_PARTICIPANT_ID = 64
#: Stands in for the pseudonym while a row names a participant by the site's own id; the
#: repository replaces it with the keyed pseudonym before anything is stored.
PENDING_PSEUDONYM = "pending-registration"


def participant_id_problem(value: object) -> str | None:
    """Why ``value`` cannot be a participant id, or ``None``. Never echoes the value."""
    text = str(value or "").strip()
    if not text:
        return "participant_id is required"
    if len(text) > MAX_PARTICIPANT_ID:
        return f"participant_id is longer than {MAX_PARTICIPANT_ID} characters"
    if any(ord(ch) < 32 or ord(ch) == 127 or ch == "\\" for ch in text):
        return "participant_id contains control characters or a backslash"
    return None


def _date(value: object, name: str, problems: list[str], *, required: bool) -> date | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            problems.append(f"{name} is required (YYYY-MM-DD)")
        return None
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError:
        problems.append(f"{name} must be a date YYYY-MM-DD, not {value!r}")
        return None


_TRUE = {"true", "yes", "y", "1"}
_FALSE = {"false", "no", "n", "0", ""}


def _bool(value: object, name: str, problems: list[str]) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value if value is not None else "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    problems.append(f"{name} must be yes or no, not {value!r}")
    return False


def validate_consent(data: Mapping[str, object], *, today: date | None = None) -> ConsentInput:
    """Check every field; raise :class:`InvalidConsentError` listing all problems at once."""
    today = today or date.today()
    problems: list[str] = []
    pseudonym = str(data.get("pseudonym") or "").strip()
    if not PSEUDONYM_RE.match(pseudonym):
        problems.append("pseudonym is required: 1–64 characters A–Z, a–z, 0–9, '_' or '-'")
    form = str(data.get("form") or "").strip()
    if not form or len(form) > 200:
        problems.append("form is required (at most 200 characters)")
    form_version = str(data.get("form_version") or "").strip()
    if not form_version or len(form_version) > 50:
        problems.append("form_version is required (at most 50 characters)")
    signed_on = _date(data.get("signed_on"), "signed_on", problems, required=True)
    if signed_on is not None and signed_on > today:
        problems.append("signed_on is in the future")
    expires_on = _date(data.get("expires_on"), "expires_on", problems, required=False)
    if expires_on is not None and signed_on is not None and expires_on <= signed_on:
        problems.append("expires_on must be after signed_on")
    raw_terms = data.get("duo_terms")
    terms: tuple[Term, ...] = ()
    try:
        if isinstance(raw_terms, str):
            terms = parse_consent_terms(raw_terms)
        elif isinstance(raw_terms, list | tuple):
            terms = parse_consent_terms([str(t) for t in raw_terms])
        else:
            problems.append("duo_terms is required (e.g. 'HMB; IRB')")
    except ConsentError as exc:
        problems.append(f"duo_terms: {exc}")
    lawful_basis = str(data.get("lawful_basis") or "").strip()
    if lawful_basis not in ART6_BASES:
        problems.append(f"lawful_basis must be one of {', '.join(ART6_BASES)} (GDPR Art. 6(1))")
    special = str(data.get("special_category_basis") or "").strip()
    if special not in ART9_CONDITIONS:
        problems.append(
            f"special_category_basis must be one of {', '.join(ART9_CONDITIONS)} (GDPR Art. 9(2))"
        )
    if lawful_basis == "6(1)(a)" and special not in ("9(2)(a)", "9(2)(j)", ""):
        problems.append("consent-based processing (6(1)(a)) needs 9(2)(a) or 9(2)(j)")
    recontact = _bool(data.get("recontact_allowed", False), "recontact_allowed", problems)
    if problems:
        raise InvalidConsentError(problems)
    assert signed_on is not None  # noqa: S101  (a missing date is a problem above)
    return ConsentInput(
        pseudonym=pseudonym,
        form=form,
        form_version=form_version,
        signed_on=signed_on,
        terms=terms,
        lawful_basis=lawful_basis,
        special_category_basis=special,
        recontact_allowed=recontact,
        expires_on=expires_on,
    )
