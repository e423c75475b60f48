"""GA4GH Data Use Ontology (DUO) terms and matching an intended use against a consent.

The vocabulary is versioned data over a closed set of terms: an unknown code is an error, never
ignored. A consent carries exactly one *permission* (what kind of research is allowed) and any
number of *modifiers* (conditions). Terms are written ``CODE`` or ``CODE(param,param)``, e.g.
``HMB``, ``DS(MONDO:0008029)``, ``GS(DE,FR)``, ``TS(2027-12-31)``.

A request states its intended use as an :class:`IntendedUse`; :func:`mismatches` returns the
reasons a consent does not cover it (empty when it does). Reasons are short, fixed sentences
that name a term, never a participant, so they can be counted and shown to requesters.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Literal

from consent.errors import InvalidTermError, UnknownTermError

VOCABULARY_VERSION = "DUO 2021-02-23 / myovault-duo-1"

ParamKind = Literal["disease", "countries", "date", "names"] | None


@dataclass(frozen=True)
class TermDef:
    code: str
    duo_id: str
    label: str
    kind: Literal["permission", "modifier"]
    param: ParamKind = None


_DEFS = (
    TermDef("NRES", "DUO:0000004", "no restriction", "permission"),
    TermDef("GRU", "DUO:0000042", "general research use", "permission"),
    TermDef("HMB", "DUO:0000006", "health or medical or biomedical research", "permission"),
    TermDef("DS", "DUO:0000007", "disease specific research", "permission", "disease"),
    TermDef("POA", "DUO:0000011", "population origins or ancestry research only", "permission"),
    TermDef(
        "NPOA", "DUO:0000044", "population origins or ancestry research prohibited", "modifier"
    ),
    TermDef("NMDS", "DUO:0000015", "no general methods research", "modifier"),
    TermDef("GSO", "DUO:0000016", "genetic studies only", "modifier"),
    TermDef("NPUNCU", "DUO:0000018", "not for profit, non commercial use only", "modifier"),
    TermDef("PUB", "DUO:0000019", "publication required", "modifier"),
    TermDef("COL", "DUO:0000020", "collaboration required", "modifier"),
    TermDef("IRB", "DUO:0000021", "ethics approval required", "modifier"),
    TermDef("GS", "DUO:0000022", "geographical restriction", "modifier", "countries"),
    TermDef("MOR", "DUO:0000024", "publication moratorium", "modifier"),
    TermDef("TS", "DUO:0000025", "time limit on use", "modifier", "date"),
    TermDef("US", "DUO:0000026", "user specific restriction", "modifier", "names"),
    TermDef("PS", "DUO:0000027", "project specific restriction", "modifier", "names"),
    TermDef("IS", "DUO:0000028", "institution specific restriction", "modifier", "names"),
    TermDef("RTN", "DUO:0000029", "return to database or resource", "modifier"),
    TermDef("NPU", "DUO:0000045", "not for profit organisation use only", "modifier"),
    TermDef("NCU", "DUO:0000046", "non-commercial use only", "modifier"),
)
TERMS: dict[str, TermDef] = {d.code: d for d in _DEFS}
PERMISSIONS = tuple(d.code for d in _DEFS if d.kind == "permission")
MODIFIERS = tuple(d.code for d in _DEFS if d.kind == "modifier")
# Obligations a requester accepts (they become conditions of the grant).
OBLIGATIONS = frozenset({"PUB", "COL", "RTN", "MOR"})
# The purposes a request may state (a subset of the permissions; NRES is not a purpose).
PURPOSES = ("GRU", "HMB", "DS", "POA")
# Which stated purposes each consent permission covers.
_COVERS: dict[str, frozenset[str]] = {
    "NRES": frozenset(PURPOSES),
    "GRU": frozenset(PURPOSES),
    "HMB": frozenset({"HMB", "DS"}),
    "DS": frozenset({"DS"}),
    "POA": frozenset({"POA"}),
}

_TERM_RE = re.compile(r"^([A-Za-z]+)(?:\(([^()]*)\))?$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")


@dataclass(frozen=True)
class Term:
    """One validated term; ``params`` are normalised (upper-case countries, ISO dates)."""

    code: str
    params: tuple[str, ...] = ()

    def __str__(self) -> str:
        return f"{self.code}({','.join(self.params)})" if self.params else self.code

    @property
    def definition(self) -> TermDef:
        return TERMS[self.code]

    @property
    def duo_id(self) -> str:
        return TERMS[self.code].duo_id


def _normalise_params(definition: TermDef, raw: Sequence[str], text: str) -> tuple[str, ...]:
    params = tuple(p.strip() for p in raw if p.strip())
    if definition.param is None:
        if params:
            raise InvalidTermError(f"{definition.code} takes no parameters (got {text!r})")
        return ()
    if not params:
        raise InvalidTermError(
            f"{definition.code} needs its {definition.param}, e.g. {_EXAMPLES[definition.code]}"
        )
    if definition.param == "countries":
        params = tuple(p.upper() for p in params)
        bad = [p for p in params if not _COUNTRY_RE.match(p)]
        if bad:
            raise InvalidTermError(f"GS countries must be ISO 3166 alpha-2 codes, not {bad}")
    elif definition.param == "date":
        if len(params) != 1:
            raise InvalidTermError("TS takes exactly one date (YYYY-MM-DD)")
        try:
            params = (date.fromisoformat(params[0]).isoformat(),)
        except ValueError:
            raise InvalidTermError(f"TS date must be YYYY-MM-DD, not {params[0]!r}") from None
    return tuple(sorted(set(params), key=str.casefold))


_EXAMPLES = {
    "DS": "DS(MONDO:0009103)",
    "GS": "GS(DE,FR)",
    "TS": "TS(2030-12-31)",
    "US": "US(alice@example.org)",
    "PS": "PS(project-code)",
    "IS": "IS(Example University)",
}


def parse_term(text: str) -> Term:
    """Parse one term; unknown codes raise :class:`UnknownTermError`."""
    match = _TERM_RE.match(text.strip())
    if match is None:
        raise InvalidTermError(f"not a data-use term: {text!r} (write CODE or CODE(param,...))")
    code = match.group(1).upper()
    definition = TERMS.get(code)
    if definition is None:
        raise UnknownTermError(f"unknown data-use term {code!r}; known: {', '.join(sorted(TERMS))}")
    raw = match.group(2).split(",") if match.group(2) is not None else []
    return Term(code, _normalise_params(definition, raw, text))


def split_terms(text: str) -> list[str]:
    """Split ``"HMB; IRB GS(DE,FR)"`` into term strings (``;`` or whitespace outside brackets)."""
    items: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise InvalidTermError(f"unbalanced ')' in {text!r}")
        if depth == 0 and (char == ";" or char.isspace()):
            if current:
                items.append("".join(current))
            current = []
            continue
        current.append(char)
    if depth != 0:
        raise InvalidTermError(f"unbalanced '(' in {text!r}")
    if current:
        items.append("".join(current))
    return items


def parse_consent_terms(items: Iterable[str] | str) -> tuple[Term, ...]:
    """Validate a consent's terms: exactly one permission, no code twice, modifiers sorted."""
    texts = split_terms(items) if isinstance(items, str) else [t for t in items if t.strip()]
    terms = [parse_term(t) for t in texts]
    codes = [t.code for t in terms]
    duplicated = sorted({c for c in codes if codes.count(c) > 1})
    if duplicated:
        raise InvalidTermError(f"term given twice: {', '.join(duplicated)}")
    permissions = [t for t in terms if t.definition.kind == "permission"]
    if len(permissions) != 1:
        raise InvalidTermError(
            "a consent needs exactly one data-use permission "
            f"({', '.join(PERMISSIONS)}); got {len(permissions)}"
        )
    modifiers = sorted((t for t in terms if t.definition.kind == "modifier"), key=lambda t: t.code)
    return (permissions[0], *modifiers)


def format_terms(terms: Iterable[Term]) -> list[str]:
    return [str(t) for t in terms]


@dataclass(frozen=True)
class IntendedUse:
    """What a requester says they will do with the data.

    ``purpose`` is one of :data:`PURPOSES`; ``disease`` is required when it is ``DS``.
    ``accepts`` lists the obligations (:data:`OBLIGATIONS`) the requester commits to.
    ``until`` is the last day of the requested use.
    """

    purpose: str
    disease: str = ""
    commercial: bool = False
    for_profit: bool = False
    methods_development: bool = False
    genetic_study: bool = False
    ethics_approval: bool = False
    country: str = ""
    institution: str = ""
    user: str = ""
    project: str = ""
    until: date | None = None
    accepts: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if self.purpose not in PURPOSES:
            raise InvalidTermError(
                f"intended use must be one of {', '.join(PURPOSES)}, not {self.purpose!r}"
            )
        if self.purpose == "DS" and not self.disease.strip():
            raise InvalidTermError("disease-specific use (DS) needs the disease")
        if self.country and not _COUNTRY_RE.match(self.country):
            raise InvalidTermError("country must be an ISO 3166 alpha-2 code (e.g. DE)")
        unknown = set(self.accepts) - OBLIGATIONS
        if unknown:
            raise InvalidTermError(
                f"only {', '.join(sorted(OBLIGATIONS))} can be accepted, not {sorted(unknown)}"
            )

    def to_json(self) -> dict[str, object]:
        return {
            "purpose": self.purpose,
            "disease": self.disease,
            "commercial": self.commercial,
            "for_profit": self.for_profit,
            "methods_development": self.methods_development,
            "genetic_study": self.genetic_study,
            "ethics_approval": self.ethics_approval,
            "country": self.country,
            "institution": self.institution,
            "user": self.user,
            "project": self.project,
            "until": self.until.isoformat() if self.until else None,
            "accepts": sorted(self.accepts),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> IntendedUse:
        until = data.get("until")
        accepts = data.get("accepts") or []
        if not isinstance(accepts, list | tuple):
            raise InvalidTermError("accepts must be a list of obligation codes")
        try:
            until_date = date.fromisoformat(str(until)) if until else None
        except ValueError:
            raise InvalidTermError("until must be a date YYYY-MM-DD") from None
        return cls(
            purpose=str(data.get("purpose", "")).upper(),
            disease=str(data.get("disease") or "").strip(),
            commercial=bool(data.get("commercial", False)),
            for_profit=bool(data.get("for_profit", False)),
            methods_development=bool(data.get("methods_development", False)),
            genetic_study=bool(data.get("genetic_study", False)),
            ethics_approval=bool(data.get("ethics_approval", False)),
            country=str(data.get("country") or "").strip().upper(),
            institution=str(data.get("institution") or "").strip(),
            user=str(data.get("user") or "").strip().lower(),
            project=str(data.get("project") or "").strip(),
            until=until_date,
            accepts=frozenset(str(a).upper() for a in accepts),
        )


def _casefolded(values: Iterable[str]) -> set[str]:
    return {v.casefold() for v in values}


def mismatches(consent_terms: Sequence[Term], use: IntendedUse) -> list[str]:
    """Why ``consent_terms`` do not allow ``use`` (empty list: the use is allowed).

    Every term is checked, so all reasons are reported, not just the first.
    """
    reasons: list[str] = []
    for term in consent_terms:
        code = term.code
        if code not in TERMS:  # Term objects are only built by parse_term, but fail closed
            raise UnknownTermError(f"unknown data-use term {code!r}")
        if TERMS[code].kind == "permission":
            if use.purpose not in _COVERS[code]:
                reasons.append(f"consent ({code}) does not cover {use.purpose} use")
            elif code == "DS" and use.disease.casefold() not in _casefolded(term.params):
                reasons.append("consent limited to research on another disease (DS)")
            continue
        ok = {
            "NPOA": use.purpose != "POA",
            "NMDS": not use.methods_development,
            "GSO": use.genetic_study,
            "NPUNCU": not use.commercial and not use.for_profit,
            "NCU": not use.commercial,
            "NPU": not use.for_profit,
            "IRB": use.ethics_approval,
            "GS": use.country.upper() in set(term.params),
            "TS": use.until is not None and use.until.isoformat() <= term.params[0],
            "US": use.user.casefold() in _casefolded(term.params),
            "IS": use.institution.casefold() in _casefolded(term.params),
            "PS": use.project.casefold() in _casefolded(term.params),
            "PUB": code in use.accepts,
            "COL": code in use.accepts,
            "RTN": code in use.accepts,
            "MOR": code in use.accepts,
        }[code]
        if not ok:
            reasons.append(_MODIFIER_REASONS[code])
    return reasons


_MODIFIER_REASONS = {
    "NPOA": "ancestry research prohibited (NPOA)",
    "NMDS": "methods development not allowed (NMDS)",
    "GSO": "genetic studies only (GSO)",
    "NPUNCU": "not-for-profit, non-commercial use only (NPUNCU)",
    "NCU": "non-commercial use only (NCU)",
    "NPU": "not-for-profit organisations only (NPU)",
    "IRB": "ethics approval required (IRB)",
    "GS": "use outside the allowed countries (GS)",
    "TS": "requested period ends after the consent's time limit (TS)",
    "US": "restricted to named users (US)",
    "IS": "restricted to named institutions (IS)",
    "PS": "restricted to named projects (PS)",
    "PUB": "publication obligation not accepted (PUB)",
    "COL": "collaboration obligation not accepted (COL)",
    "RTN": "return-of-results obligation not accepted (RTN)",
    "MOR": "publication moratorium not accepted (MOR)",
}
