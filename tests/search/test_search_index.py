"""The search index stays equal to the data it mirrors, and search over it stays exact.

Every check compares the index (or a search over it) with a naive reference computed from the
source tables, after changes made the ways services make them: ORM objects, ORM bulk
``update()``/``delete()``, Core SQL followed by ``refresh_subject``.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import delete, func, insert, select, update

from repository.errors import ValidationError
from repository.models import (
    Consent,
    MuscleMetric,
    SearchProfile,
    SearchSubject,
    Series,
    Subject,
    User,
    Visit,
    search_visit_ff,
)
from repository.services import search, search_index
from repository.services.consent_filters import shareable_subject_clause
from repository.services.context import Actor
from tests.search.search_data import populate


def _actor(session, email):
    return Actor(user=session.scalar(select(User).where(User.email == email)))


def _index_rows(session) -> dict[int, tuple]:
    """Everything the index holds per subject, in comparable form."""
    rows = {}
    for s, p in session.execute(
        select(SearchSubject, SearchProfile).join(
            SearchProfile, SearchProfile.id == SearchSubject.profile_id
        )
    ):
        rows[s.subject_id] = (
            s.project_id,
            s.pseudonym,
            s.shareable,
            s.consent_expires_on,
            s.age_lo,
            s.age_hi,
            *(getattr(p, c) for c in search_index.PROFILE_COLUMNS),
        )
    ff = sorted(tuple(r) for r in session.execute(select(search_visit_ff)))
    return {"subjects": rows, "ff": ff}


def _consent(subject_id, version, **kw):
    return Consent(
        subject_id=subject_id,
        version=version,
        form="main",
        form_version="1",
        signed_on=date(2025, 1, 1),
        lawful_basis="consent",
        **kw,
    )


def test_index_follows_every_kind_of_change_and_equals_a_rebuild(app, world):
    ext = app.extensions["myovault"]
    alpha = world.projects["alpha"]
    with ext.db.transaction() as session:
        made = populate(session, alpha, 12, seed=11)
        ids = [m.subject_id for m in made]
    with ext.db.transaction() as session:
        # consent states: withdrawn (newer version), expired, not yet expired, none at all
        session.add(_consent(ids[0], 2, withdrawn_on=date(2025, 6, 1)))
        session.add(_consent(ids[1], 2, expires_on=date(2020, 1, 1)))
        session.add(_consent(ids[2], 2, expires_on=date(2999, 1, 1)))
        session.execute(delete(Consent).where(Consent.subject_id == ids[3]))  # ORM bulk
        session.get(Subject, ids[4]).erased_at = datetime.now(UTC)
        # pipeline-like: metrics of one subject replaced by a bulk delete + new rows
        session.execute(delete(MuscleMetric).where(MuscleMetric.subject_id == ids[5]))
        visit = session.scalar(select(Visit).where(Visit.subject_id == ids[5]).limit(1))
        session.add(
            MuscleMetric(
                subject_id=ids[5],
                visit_id=visit.id,
                muscle="gracilis",
                side="L",
                metric="ff_mean",
                value=12.5,
                unit="%",
            )
        )
        # a new series (vendor) on an existing visit; an ORM bulk update of a series
        v6 = session.scalar(select(Visit).where(Visit.subject_id == ids[6]).limit(1))
        session.add(
            Series(visit_id=v6.id, series_uid="9.9", contrast="DIXON", vendor="GE", anatomy="leg")
        )
        session.execute(
            update(Series)
            .where(Series.visit_id.in_(select(Visit.id).where(Visit.subject_id == ids[7])))
            .values(field_strength_t=1.5)
        )
        # a change made with Core SQL, followed by the documented call
        session.connection().execute(
            update(Subject.__table__).where(Subject.id == ids[8]).values(sex="O")
        )
        search_index.refresh_subject(session, ids[8])
        # a new visit for an existing subject
        session.add(Visit(subject_id=ids[9], label="09", age_at_scan_years=71.0, day_offset=900))
        # an ORM bulk insert of metric rows (a re-measured muscle at an existing visit)
        v10 = session.scalar(select(Visit).where(Visit.subject_id == ids[10]).limit(1))
        session.execute(
            insert(MuscleMetric),
            [
                {
                    "subject_id": ids[10],
                    "visit_id": v10.id,
                    "muscle": "sartorius",
                    "side": "L",
                    "metric": "ff_mean",
                    "value": 99.5,
                    "unit": "%",
                }
            ],
        )
    with ext.db.transaction() as session:
        incremental = _index_rows(session)
        # shareable in the index == the authoritative consent clause, today and in 3000
        for today in (date.today(), date(3000, 1, 1)):
            want = set(session.scalars(select(Subject.id).where(shareable_subject_clause(today))))
            got = set(
                session.scalars(
                    select(SearchSubject.subject_id).where(search_index.shareable_now(today))
                )
            )
            assert got == want
        assert ids[0] not in want and ids[3] not in want and ids[4] not in want
        row = incremental["subjects"]
        assert row[ids[8]][search_index.PROFILE_COLUMNS.index("sex") + 6] == "O"
        assert "|GE|" in row[ids[6]][search_index.PROFILE_COLUMNS.index("vendors") + 6]
        assert row[ids[7]][search_index.PROFILE_COLUMNS.index("field_strengths") + 6] == "|1500|"
        assert row[ids[9]][5] == 71.0  # age_hi
        assert (
            row[ids[5]][search_index.PROFILE_COLUMNS.index("muscle_mask") + 6]
            == (search_index.MUSCLE_BITS["gracilis"])
        )
        assert any(r[1] == ids[10] and 99.5 in r for r in incremental["ff"])
        search_index.rebuild(session)
        assert _index_rows(session) == incremental
        # a rolled-back change leaves the index as it was
    with pytest.raises(RuntimeError), ext.db.transaction() as session:
        session.get(Subject, ids[10]).disease = "IBM"
        search_index.sync(session)
        raise RuntimeError("roll back")
    with ext.db.transaction() as session:
        assert _index_rows(session) == incremental
        # deleting a subject removes its rows (cascade)
        for table in (MuscleMetric, Consent):
            session.execute(delete(table).where(table.subject_id == ids[11]))
        visits = select(Visit.id).where(Visit.subject_id == ids[11])
        session.execute(delete(Series).where(Series.visit_id.in_(visits)))
        session.execute(delete(Visit).where(Visit.subject_id == ids[11]))
        from repository.models import StoredObject

        session.execute(delete(StoredObject).where(StoredObject.subject_id == ids[11]))
        session.delete(session.get(Subject, ids[11]))
    with ext.db.transaction() as session:
        assert session.get(SearchSubject, ids[11]) is None
        assert (
            session.scalar(
                select(func.count())
                .select_from(search_visit_ff)
                .where(search_visit_ff.c.subject_id == ids[11])
            )
            == 0
        )


def test_an_orm_delete_alone_is_reflected_at_commit(app, world):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        (made,) = populate(session, world.projects["alpha"], 1, seed=61)
        session.add(_consent(made.subject_id, 2, withdrawn_on=date(2025, 6, 1)))
    with ext.db.transaction() as session:
        assert session.get(SearchSubject, made.subject_id).shareable is False
        session.delete(
            session.scalar(
                select(Consent).where(Consent.subject_id == made.subject_id, Consent.version == 2)
            )
        )
    with ext.db.transaction() as session:  # the withdrawal row is gone: shareable again
        assert session.get(SearchSubject, made.subject_id).shareable is True


def test_facet_counts_match_a_naive_count(app, world):
    ext = app.extensions["myovault"]
    alpha = world.projects["alpha"]
    with ext.db.transaction() as session:
        made = populate(session, alpha, 17, seed=21)
        # a second vendor and sequence for some subjects (multi-valued facets)
        for m in made[:5]:
            visit = session.scalar(select(Visit).where(Visit.subject_id == m.subject_id).limit(1))
            session.add(
                Series(
                    visit_id=visit.id,
                    series_uid=f"2.{m.subject_id}",
                    contrast="DIXON",
                    vendor="GE",
                    field_strength_t=1.5,
                    anatomy="thigh",
                )
            )
    with ext.db.transaction() as session:
        owner = _actor(session, world.emails["owner"])
        result = search.search(session, owner, search.CohortQuery())
        assert result.exact and result.total == 17
        got = {
            name: {f["value"]: f["count"] for f in facet} for name, facet in result.facets.items()
        }
        vendors: Counter[str] = Counter()
        strengths: Counter[float] = Counter()
        sequences: Counter[str] = Counter()
        for m in made:
            rows = session.execute(
                select(Series.vendor, Series.field_strength_t, Series.contrast)
                .join(Visit, Visit.id == Series.visit_id)
                .where(Visit.subject_id == m.subject_id)
            ).all()
            vendors.update({r[0] for r in rows})
            strengths.update({r[1] for r in rows})
            sequences.update({r[2] for r in rows})
        assert got["vendor"] == dict(vendors)
        assert got["field_strength"] == dict(strengths)
        assert got["sequence"] == dict(sequences)
        assert got["sex"] == dict(Counter(m.sex for m in made))
        decades = Counter(
            f"{int(min(m.ages) // 10 * 10)}–{int(min(m.ages) // 10 * 10) + 9}" for m in made
        )
        assert got["age"] == dict(decades)
        assert got["visits"] == dict(Counter(len(m.ages) for m in made))
        assert got["muscle"] == dict.fromkeys(search.MUSCLES, 17)
        # filters on multi-valued facets: any vendor of the list; every sequence
        ge = search.search(session, owner, search.CohortQuery(vendor=("GE",)))
        assert ge.total == 5
        both = search.search(session, owner, search.CohortQuery(sequence=("DIXON", "MESE")))
        assert both.total == 5
        strength = search.search(session, owner, search.CohortQuery(field_strength=(1.5,)))
        assert strength.total == 5
        nothing = search.search(session, owner, search.CohortQuery(vendor=("ge",)))
        assert nothing.total == 0  # case-sensitive on SQLite too


def test_keyset_pages_list_every_subject_once_in_order(app, client, world):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        populate(session, world.projects["alpha"], 23, seed=31)
        owner = _actor(session, world.emails["owner"])
        seen, after = [], None
        for _ in range(10):
            result = search.search(session, owner, search.CohortQuery(), per_page=5, after=after)
            seen += [(s["project"], s["pseudonym"]) for s in result.subjects]
            if result.next_cursor is None:
                break
            after = search.parse_cursor({"after": result.next_cursor})
        assert len(seen) == 23 == len(set(seen)) and seen == sorted(seen)
        # offsets give the same pages
        page3 = search.search(session, owner, search.CohortQuery(), per_page=5, page=3)
        assert [(s["project"], s["pseudonym"]) for s in page3.subjects] == seen[10:15]
    for bad in ("%%%", "bm90LWpzb24", "WyJhIl0"):  # not base64 / not JSON / wrong shape
        with pytest.raises(ValidationError):
            search.parse_cursor({"after": bad})
    from tests.app_fixtures import api_token

    token = api_token(app, world.emails["owner"])
    headers = {"Authorization": f"Bearer {token}"}
    first = client.get("/api/v1/search?per_page=20", headers=headers).get_json()
    assert len(first["subjects"]) == 20 and first["next"]
    rest = client.get(f"/api/v1/search?per_page=20&after={first['next']}", headers=headers)
    assert len(rest.get_json()["subjects"]) == 3 and rest.get_json()["next"] is None
    assert client.get("/api/v1/search?after=%25%25", headers=headers).status_code == 422


def test_two_sided_age_range_is_exact_for_subjects_with_several_visits(app, world):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        made = populate(session, world.projects["alpha"], 30, seed=41)
        owner = _actor(session, world.emails["owner"])
        multi = [m for m in made if len(m.ages) > 1]
        assert multi  # the fixture makes 1–2 visits
        for lo, hi in ((30, 40), (20, 25), (45, 60), (33.3, 33.4)):
            q = search.CohortQuery(age_min=lo, age_max=hi)
            got = {r[0] for r in session.execute(search.matching_subjects(session, owner, q))}
            want = {m.subject_id for m in made if any(lo <= a <= hi for a in m.ages)}
            assert got == want, (lo, hi)


def test_the_heat_map_uses_every_visit(app, world):
    """Medians over the per-visit FF table equal the medians over the metric rows."""
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        made = populate(session, world.projects["alpha"], 9, seed=51)
        owner = _actor(session, world.emails["owner"])
        result = search.search(session, owner, search.CohortQuery())
        for cell in result.heatmap:
            values = [v for m in made for v in m.ff[(cell["muscle"], cell["side"])]]
            import statistics

            assert cell["median_ff"] == round(statistics.median(values), 1)
            assert cell["n"] == 9 and cell["approximate"] is False


def test_rebuild_is_what_a_bulk_load_needs(app, world):
    """Rows written with Core (as bench/bench_search.py does) are invisible until rebuild."""
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        sid = (
            session.connection()
            .execute(
                insert(Subject.__table__).values(
                    project_id=world.projects["alpha"],
                    pseudonym="core1",
                    sex="F",
                    disease="FSHD",
                    created_at=datetime.now(UTC),
                )
            )
            .inserted_primary_key[0]
        )
        session.connection().execute(
            insert(Consent.__table__).values(
                subject_id=sid,
                version=1,
                form="main",
                form_version="1",
                signed_on=date.today() - timedelta(days=1),
                lawful_basis="consent",
                duo_terms=[],
                recontact_allowed=False,
                created_at=datetime.now(UTC),
            )
        )
        owner = _actor(session, world.emails["owner"])
        assert search.search(session, owner, search.CohortQuery()).total == 0
        assert search_index.rebuild(session) == 1
        assert search.search(session, owner, search.CohortQuery()).total == 1
