"""DUO vocabulary and matching of an intended use against consent terms."""

from __future__ import annotations

from datetime import date

import pytest

from consent.duo import (
    PURPOSES,
    TERMS,
    IntendedUse,
    mismatches,
    parse_consent_terms,
    parse_term,
    split_terms,
)
from consent.errors import InvalidTermError, UnknownTermError


def test_terms_parse_and_normalise():
    assert str(parse_term("gs(de, fr)")) == "GS(DE,FR)"
    assert str(parse_term("TS(2030-01-31)")) == "TS(2030-01-31)"
    assert parse_term("HMB").duo_id == "DUO:0000006"
    assert split_terms("HMB; IRB GS(DE,FR)") == ["HMB", "IRB", "GS(DE,FR)"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("XYZ", UnknownTermError),
        ("HMB(x)", InvalidTermError),
        ("DS", InvalidTermError),
        ("GS(Germany)", InvalidTermError),
        ("TS(next year)", InvalidTermError),
        ("H M B", InvalidTermError),
    ],
)
def test_bad_terms_fail_closed(text, error):
    with pytest.raises(error):
        parse_consent_terms(text) if " " in text else parse_term(text)


def test_a_consent_has_exactly_one_permission():
    with pytest.raises(InvalidTermError, match="exactly one"):
        parse_consent_terms("IRB")
    with pytest.raises(InvalidTermError, match="exactly one"):
        parse_consent_terms("GRU HMB")
    with pytest.raises(InvalidTermError, match="twice"):
        parse_consent_terms("HMB IRB IRB")
    terms = parse_consent_terms("NCU HMB IRB")
    assert [str(t) for t in terms] == ["HMB", "IRB", "NCU"]


def use(**kw):
    return IntendedUse(**{"purpose": "HMB", **kw})


@pytest.mark.parametrize(
    ("consent", "intended", "allowed"),
    [
        ("GRU", use(purpose="GRU"), True),
        ("GRU", use(purpose="POA"), True),
        ("HMB", use(purpose="GRU"), False),
        ("HMB", use(purpose="DS", disease="MONDO:0009103"), True),
        ("HMB", use(purpose="POA"), False),
        ("DS(MONDO:0009103)", use(purpose="DS", disease="mondo:0009103"), True),
        ("DS(MONDO:0009103)", use(purpose="DS", disease="MONDO:0008029"), False),
        ("DS(MONDO:0009103)", use(purpose="HMB"), False),
        ("POA", use(purpose="POA"), True),
        ("NRES", use(purpose="POA", commercial=True), True),
        ("GRU NPOA", use(purpose="POA"), False),
        ("HMB NCU", use(commercial=True), False),
        ("HMB NCU", use(for_profit=True), True),
        ("HMB NPU", use(for_profit=True), False),
        ("HMB NPUNCU", use(for_profit=True), False),
        ("HMB IRB", use(), False),
        ("HMB IRB", use(ethics_approval=True), True),
        ("HMB NMDS", use(methods_development=True), False),
        ("HMB GSO", use(), False),
        ("HMB GS(DE,FR)", use(country="DE"), True),
        ("HMB GS(DE,FR)", use(country="US"), False),
        ("HMB GS(DE,FR)", use(), False),
        ("HMB TS(2030-12-31)", use(until=date(2030, 12, 31)), True),
        ("HMB TS(2030-12-31)", use(until=date(2031, 1, 1)), False),
        ("HMB TS(2030-12-31)", use(), False),
        ("HMB US(a@example.org)", use(user="A@example.org"), True),
        ("HMB IS(Uni X)", use(institution="uni x"), True),
        ("HMB IS(Uni X)", use(institution="Uni Y"), False),
        ("HMB PS(p1)", use(project="p1"), True),
        ("HMB PUB RTN", use(accepts=frozenset({"PUB"})), False),
        ("HMB PUB RTN", use(accepts=frozenset({"PUB", "RTN"})), True),
    ],
)
def test_matching_table(consent, intended, allowed):
    reasons = mismatches(parse_consent_terms(consent), intended)
    assert (reasons == []) is allowed, reasons


def test_every_reason_is_reported_without_identities():
    reasons = mismatches(parse_consent_terms("DS(X) IRB NCU"), use(purpose="GRU", commercial=True))
    assert len(reasons) == 3
    assert all("(" in r for r in reasons)


def _naive_allowed(permission: str, purpose: str) -> bool:
    # Straight from the DUO definitions, written independently of the _COVERS table.
    if permission in ("NRES", "GRU"):
        return True
    if permission == "HMB":
        return purpose in ("HMB", "DS")
    return permission == purpose


@pytest.mark.parametrize("permission", ["NRES", "GRU", "HMB", "POA"])
@pytest.mark.parametrize("purpose", PURPOSES)
def test_permission_hierarchy_against_reference(permission, purpose):
    kw = {"disease": "X"} if purpose == "DS" else {}
    got = not mismatches(parse_consent_terms(permission), IntendedUse(purpose=purpose, **kw))
    assert got is _naive_allowed(permission, purpose)


def test_intended_use_validation():
    with pytest.raises(InvalidTermError):
        IntendedUse(purpose="NRES")
    with pytest.raises(InvalidTermError):
        IntendedUse(purpose="DS")
    with pytest.raises(InvalidTermError):
        IntendedUse(purpose="HMB", accepts=frozenset({"IRB"}))
    with pytest.raises(InvalidTermError):
        IntendedUse(purpose="HMB", country="Germany")
    u = IntendedUse.from_json({"purpose": "hmb", "until": "2030-01-01", "accepts": ["pub"]})
    assert IntendedUse.from_json(u.to_json()) == u


def test_vocabulary_ids_are_unique():
    ids = [d.duo_id for d in TERMS.values()]
    assert len(ids) == len(set(ids))
