"""Consent record validation, bulk CSV/TSV parsing, PROV documents and the Art. 30 record."""

from __future__ import annotations

import json
from datetime import date

import pytest

from consent.art30 import ProcessingFacts, Recipient, art30_record
from consent.errors import ConsentError, InvalidConsentError
from consent.provenance import ProvActivity, ProvAgent, ProvEntity, ProvGraph, to_prov_json
from consent.records import validate_consent
from consent.tabular import parse_table

GOOD = {
    "pseudonym": "SUB001",
    "form": "MyoVault main consent",
    "form_version": "2.1",
    "signed_on": "2024-03-01",
    "duo_terms": "HMB; IRB",
    "lawful_basis": "6(1)(e)",
    "special_category_basis": "9(2)(j)",
    "recontact_allowed": "yes",
    "expires_on": "",
}


def test_a_good_record_validates():
    record = validate_consent(GOOD, today=date(2025, 1, 1))
    assert [str(t) for t in record.terms] == ["HMB", "IRB"]
    assert record.recontact_allowed is True
    assert record.expires_on is None


def test_every_problem_is_listed_at_once():
    bad = {
        **GOOD,
        "pseudonym": "a b",
        "signed_on": "2030-01-01",
        "duo_terms": "FOO",
        "lawful_basis": "consent",
        "recontact_allowed": "maybe",
        "expires_on": "2020-01-01",
    }
    with pytest.raises(InvalidConsentError) as info:
        validate_consent(bad, today=date(2025, 1, 1))
    problems = info.value.problems
    assert len(problems) == 6, problems
    assert any("FOO" in p for p in problems)
    assert any("future" in p for p in problems)


def _table(rows, sep=","):
    header = sep.join(GOOD.keys())
    return "\n".join([header] + [sep.join(str(r[k]) for k in GOOD) for r in rows]) + "\n"


def test_table_reports_row_level_errors_by_line():
    rows = [GOOD, {**GOOD, "pseudonym": "SUB002", "duo_terms": "IRB"}, {**GOOD}]
    parsed = parse_table(_table(rows))
    assert len(parsed.rows) == 1
    assert [e.line for e in parsed.errors] == [3, 4]
    assert "exactly one" in parsed.errors[0].problems[0]
    assert "already given on line 2" in parsed.errors[1].problems[0]


def test_tsv_and_header_checks():
    rows = [GOOD, {**GOOD, "pseudonym": "SUB002", "duo_terms": "GS(DE,FR) GRU"}]
    parsed = parse_table(_table(rows, "\t"))
    assert parsed.ok and len(parsed.rows) == 2
    assert [str(t) for t in parsed.rows[1][1].terms] == ["GRU", "GS(DE,FR)"]
    bad = parse_table("pseudonym,form,colour\nA,B,C\n")
    assert not bad.rows and bad.errors[0].line == 1
    assert "unknown columns: colour" in bad.errors[0].problems[1]


def test_prov_json_links_inputs_by_hash():
    graph = ProvGraph(
        entities=(
            ProvEntity("in", "MESE series", "stored_object", "a" * 64),
            ProvEntity("out", "T2 map", "stored_object", "b" * 64),
        ),
        agents=(ProvAgent("fit", "myovault-qmri 0.1", "software"),),
        activities=(
            ProvActivity(
                "fit-1",
                "fit T2",
                used=("in",),
                generated=("out",),
                agents=("fit",),
                attributes={"parameters": {"echo_spacing_ms": 10}},
            ),
        ),
        derivations=(("out", "in"),),
    )
    doc = json.loads(to_prov_json(graph))
    assert doc["entity"]["mv:in"]["mv:sha256"] == "a" * 64
    assert list(doc["used"].values())[0] == {"prov:activity": "mv:fit-1", "prov:entity": "mv:in"}
    assert list(doc["wasDerivedFrom"].values())[0]["prov:usedEntity"] == "mv:in"
    assert "echo_spacing_ms" in doc["activity"]["mv:fit-1"]["mv:parameters"]
    with pytest.raises(ConsentError, match="unknown entity"):
        to_prov_json(ProvGraph(activities=(ProvActivity("x", "x", used=("nope",)),)))


def test_art30_record_lists_transfers_outside_the_eea():
    facts = ProcessingFacts(
        project="alpha",
        title="Alpha",
        controller="Owner",
        purposes=["research"],
        subjects=3,
        lawful_bases={"6(1)(e)+9(2)(j)": 3},
        data_categories=["MRI"],
        processing_steps=["qmri 1"],
        recipients=[Recipient("Uni A", "DE", 1), Recipient("Uni B", "US", 2)],
        retention="r",
        generated_at="2025-01-01",
    )
    record = art30_record(facts)
    assert record["third_country_transfers"] == ["US"]
    assert "Art. 9(2)(j)" in record["lawful_bases"][0]["basis"]
    json.dumps(record)
