"""Cohort search: query parsing, disclosure control, per-muscle conditions, withdrawal, full text."""

from __future__ import annotations

import statistics
from datetime import date

import pytest
from sqlalchemy import select

from repository.errors import ValidationError
from repository.models import Consent, Project, User
from repository.services import metadata, search
from repository.services.context import ANONYMOUS, SYSTEM, Actor
from tests.search.search_data import populate


def _actor(session, email):
    return Actor(user=session.scalar(select(User).where(User.email == email)))


def test_muscle_vocabulary_matches_the_segmentation_labels():
    from qmri.segmentation.labels import MUSCLE_NAMES

    assert search.MUSCLES == MUSCLE_NAMES


def test_parse_query_is_closed_and_canonical():
    q = search.parse_query(
        {
            "sex": ["M", "F"],
            "mc": ["semimembranosus:L:ff_mean:30:", "rectus_femoris:any:ff_mean::10"],
            "combine": "and",
        }
    )
    assert q.to_dict() == {
        "sex": ["F", "M"],
        "mc": ["rectus_femoris:any:ff_mean::10", "semimembranosus:L:ff_mean:30:"],
        "combine": "and",
    }
    assert search.parse_query(q.to_dict()) == q
    for bad in (
        {"colour": ["red"]},
        {"sex": ["X"]},
        {"mc": ["biceps:L:ff_mean:1:2"]},
        {"mc": ["semimembranosus:L:ff_mean::"]},
        {"mc": ["semimembranosus:L:ff_mean:40:30"]},
        {"mc": ["semimembranosus:Q:ff_mean:1:"]},
        {"mc": ["semimembranosus:L:t1:1:"]},
        {"combine": ["xor"]},
        {"age_min": ["abc"]},
        {"visits_min": ["1.5"]},
        {"disease": ["<script>"]},
    ):
        with pytest.raises(ValidationError):
            search.parse_query(bad)
    # the form's row layout parses to the same conditions; empty rows are ignored
    rows = search.parse_query(
        {
            "mc_muscle": ["semimembranosus", ""],
            "mc_side": ["L", "any"],
            "mc_metric": ["ff_mean", "ff_mean"],
            "mc_min": ["30", ""],
            "mc_max": ["", ""],
        }
    )
    assert [c.encode() for c in rows.mc] == ["semimembranosus:L:ff_mean:30:"]


def test_show_count_suppresses_and_rounds():
    assert [search.show_count(n, False) for n in (0, 1, 4, 5, 6, 7, 8, 102, 103)] == [
        "<5",
        "<5",
        "<5",
        5,
        5,
        5,
        10,
        100,
        105,
    ]
    assert search.show_count(3, True) == 3


@pytest.fixture
def cohort(app, world):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        alpha = world.projects["alpha"]
        made = populate(session, alpha, 23, seed=1)
        made += populate(session, alpha, 3, seed=2, disease="LGMD", prefix="l")
        populate(session, world.projects["beta"], 7, seed=3, disease="FSHD", prefix="b")
        project = session.get(Project, alpha)
        metadata.update_metadata(
            session,
            SYSTEM if False else _actor(session, world.emails["owner"]),
            project,
            {
                "title": "Project alpha",
                "description": "Quantitative thigh muscles in facioscapulohumeral dystrophy",
                "keywords": ["fat fraction"],
            },
        )
    return made


def test_per_muscle_conditions_match_a_naive_reference(app, world, cohort):
    ext = app.extensions["myovault"]
    conds = ["semimembranosus:L:ff_mean:30:", "rectus_femoris:any:ff_mean::10"]

    def holds(m, code):
        muscle, side, _metric, lo, hi = code.split(":")
        sides = ("L", "R") if side == "any" else (side,)
        return any(
            (not lo or v >= float(lo)) and (not hi or v <= float(hi))
            for s in sides
            for v in m.ff[(muscle, s)]
        )

    with ext.db.transaction() as session:
        owner = _actor(session, world.emails["owner"])
        for combine, reduce in (("and", all), ("or", any)):
            q = search.parse_query({"mc": conds, "combine": combine})
            got = {r[0] for r in session.execute(search.matching_subjects(session, owner, q))}
            want = {m.subject_id for m in cohort if reduce(holds(m, c) for c in conds)}
            assert got == want
            result = search.search(session, owner, q)
            assert result.exact and result.total == len(want)
        q = search.parse_query({"age_min": "30", "age_max": "45", "sex": ["F"]})
        got = {r[0] for r in session.execute(search.matching_subjects(session, owner, q))}
        want = {m.subject_id for m in cohort if m.sex == "F" and any(30 <= a <= 45 for a in m.ages)}
        assert got == want


def test_anonymous_counts_are_suppressed_and_private_projects_invisible(app, world, cohort):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        anon = search.search(session, ANONYMOUS, search.CohortQuery())
        assert not anon.exact
        assert [p["slug"] for p in anon.projects] == ["alpha"]  # beta is private
        assert anon.total == 25  # 26 rounded to 5
        disease = {f["value"]: f["count"] for f in anon.facets["disease"]}
        assert disease == {"FSHD": 25, "LGMD": "<5"}
        assert anon.subjects == []
        owner = search.search(session, _actor(session, world.emails["owner"]), search.CohortQuery())
        assert owner.exact and owner.total == 26
        assert {f["value"]: f["count"] for f in owner.facets["disease"]} == {"FSHD": 23, "LGMD": 3}
        assert len(owner.subjects) == 25 and owner.pages == 2
        # a researcher without a grant: suppressed; heat map medians need ≥ 5 subjects
        researcher = _actor(session, world.emails["researcher"])
        lgmd = search.search(session, researcher, search.CohortQuery(disease=("LGMD",)))
        assert lgmd.total == "<5"
        assert all(c["median_ff"] is None and c["n"] == "<5" for c in lgmd.heatmap)
        full = search.search(session, researcher, search.CohortQuery())
        cell = next(c for c in full.heatmap if c["muscle"] == "gracilis" and c["side"] == "L")
        values = [v for m in cohort for v in m.ff[("gracilis", "L")]]
        assert cell["median_ff"] == round(statistics.median(values))


def test_withdrawal_takes_effect_in_the_next_search(app, world, cohort):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        owner = _actor(session, world.emails["owner"])
        assert search.search(session, owner, search.CohortQuery(disease=("LGMD",))).total == 3
        for m in cohort[-3:]:
            session.add(
                Consent(
                    subject_id=m.subject_id,
                    version=2,
                    form="main",
                    form_version="1",
                    signed_on=date(2025, 1, 1),
                    lawful_basis="consent",
                    withdrawn_on=date(2025, 6, 1),
                )
            )
    with ext.db.transaction() as session:
        owner = _actor(session, world.emails["owner"])
        assert search.search(session, owner, search.CohortQuery(disease=("LGMD",))).total == 0


def test_full_text_finds_projects_by_stemmed_description_words(app, world, cohort):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        hit = search.search(session, ANONYMOUS, search.CohortQuery(q="dystrophy muscle"))
        assert [p["slug"] for p in hit.projects] == ["alpha"]
        miss = search.search(session, ANONYMOUS, search.CohortQuery(q="pompe"))
        assert miss.projects == [] and miss.total == "<5"
        # private projects never match for outsiders, even by full text
        other = search.search(session, ANONYMOUS, search.CohortQuery(q="beta"))
        assert other.projects == []


def test_large_cohorts_use_a_deterministic_sample_for_the_heat_map(app, world, cohort, monkeypatch):
    ext = app.extensions["myovault"]
    monkeypatch.setattr(search, "SAMPLE_MAX", 10)  # 26 subjects → every 3rd subject
    with ext.db.transaction() as session:
        owner = _actor(session, world.emails["owner"])
        cells = search.search(session, owner, search.CohortQuery()).heatmap
        cell = next(c for c in cells if c["muscle"] == "sartorius" and c["side"] == "R")
        sample = [v for m in cohort if m.subject_id % 3 == 0 for v in m.ff[("sartorius", "R")]]
        assert cell["approximate"] is True
        assert cell["median_ff"] == round(statistics.median(sample), 1)
        assert cell["n"] == 3 * sum(1 for m in cohort if m.subject_id % 3 == 0)
