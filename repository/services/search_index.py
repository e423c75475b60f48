"""Keeps ``search_subjects`` (one row of facets per subject) in step with the data it mirrors.

Search reads only this table for every subject-level filter and facet, so a search over
100 000 subjects is one scan of a narrow table instead of joins over visits, series, consents
and metrics. The row of a subject is recomputed from the source tables by
:func:`refresh_subject` (or :func:`refresh_subjects`); nothing is ever patched in place, so a
refresh is always correct on its own.

Who calls it. Every ORM change to a :class:`Subject`, :class:`Consent`, :class:`Visit`,
:class:`Series` or :class:`MuscleMetric` — object flushes *and* ORM bulk ``update()`` /
``delete()`` statements run through ``session.execute`` — marks the subject as stale (session
hooks installed by :func:`install`, which this module runs on import). Stale subjects are
refreshed in the same transaction, before it commits (``before_commit``) and before any search
reads the index (:func:`sync`). So a consent withdrawal, an erasure or a pipeline stage is
visible to the very next search without its service knowing about the index. Services that
write those tables with Core statements (``connection.execute(insert(...))``, raw SQL) must
call :func:`refresh_subject` themselves; bulk loads call :func:`rebuild`.

Consent *expiry* depends on the day the search runs, so the row stores the latest consent's
``expires_on`` and the search compares it with today (:func:`shareable_now`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Iterator
from datetime import date
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    event,
    func,
    insert,
    or_,
    select,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import ORMExecuteState, Session

from repository.models import Consent, MuscleMetric, Series, Subject, Visit
from repository.models.search_index import (
    MUSCLES,
    SearchProfile,
    SearchSubject,
    ff_column,
    search_visit_ff,
)

CHUNK = 2_000
_PENDING = "myovault_search_index_pending"
_VISITS = "myovault_search_index_visits"
SET_COLUMNS = ("vendors", "field_strengths", "sequences", "anatomies")
MUSCLE_BITS = {m: 1 << i for i, m in enumerate(MUSCLES)}
PROFILE_COLUMNS = (
    "disease",
    "sex",
    "age_decade",
    "n_visits",
    "vendors",
    "field_strengths",
    "sequences",
    "anatomies",
    "muscle_mask",
)


def muscles_of(mask: int) -> list[str]:
    return [m for m, bit in MUSCLE_BITS.items() if mask & bit]


def shareable_now(today: date | None = None) -> ColumnElement[bool]:
    """The index's equivalent of ``consent_filters.shareable_subject_clause`` (tested equal)."""
    today = today or date.today()
    return and_(
        SearchSubject.shareable.is_(True),
        or_(SearchSubject.consent_expires_on.is_(None), SearchSubject.consent_expires_on >= today),
    )


def encode_set(values: Iterable[str]) -> str:
    """``{"b", "a"}`` → ``"|a|b|"`` (empty set → ``""``); ``|`` inside a value becomes ``/``."""
    clean = sorted({v.replace("|", "/") for v in values if v not in (None, "")})
    return "|" + "|".join(clean) + "|" if clean else ""


def decode_set(encoded: str | None) -> list[str]:
    return [v for v in (encoded or "").split("|") if v]


def field_strength_token(tesla: float) -> str:
    """Field strength as stored in the index: whole millitesla (3.0 T → ``"3000"``)."""
    return str(round(tesla * 1000))


def _rows(
    session: Session, subject_ids: list[int]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(subject rows with a "profile" dict, FF-per-visit rows)`` from the source tables."""
    rows: dict[int, dict[str, Any]] = {}
    for sid, project_id, pseudonym, sex, disease, erased_at in session.execute(
        select(
            Subject.id,
            Subject.project_id,
            Subject.pseudonym,
            Subject.sex,
            Subject.disease,
            Subject.erased_at,
        ).where(Subject.id.in_(subject_ids))
    ):
        rows[sid] = {
            "subject_id": sid,
            "project_id": project_id,
            "pseudonym": pseudonym,
            "shareable": False,
            "consent_expires_on": None,
            "age_lo": None,
            "age_hi": None,
            "erased": erased_at is not None,
            "profile": {
                "disease": disease or "",
                "sex": sex or "",
                "age_decade": None,
                "n_visits": 0,
                "muscle_mask": 0,
            },
        }
    if not rows:
        return [], []
    ids = list(rows)
    latest: dict[int, tuple[int, Any, Any]] = {}
    for sid, version, withdrawn_on, expires_on in session.execute(
        select(Consent.subject_id, Consent.version, Consent.withdrawn_on, Consent.expires_on).where(
            Consent.subject_id.in_(ids)
        )
    ):
        if sid not in latest or version > latest[sid][0]:
            latest[sid] = (version, withdrawn_on, expires_on)
    for sid, row in rows.items():
        current = latest.get(sid)
        erased = row.pop("erased")
        if current is not None:
            row["shareable"] = not erased and current[1] is None
            row["consent_expires_on"] = current[2]
    for sid, n, lo, hi in session.execute(
        select(
            Visit.subject_id,
            func.count(Visit.id),
            func.min(Visit.age_at_scan_years),
            func.max(Visit.age_at_scan_years),
        )
        .where(Visit.subject_id.in_(ids))
        .group_by(Visit.subject_id)
    ):
        rows[sid].update(age_lo=lo, age_hi=hi)
        rows[sid]["profile"].update(
            n_visits=int(n), age_decade=None if lo is None else int(lo // 10) * 10
        )
    sets: dict[int, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for sid, vendor, strength, contrast, anatomy in session.execute(
        select(
            Visit.subject_id,
            Series.vendor,
            Series.field_strength_t,
            Series.contrast,
            Series.anatomy,
        )
        .join(Series, Series.visit_id == Visit.id)
        .where(Visit.subject_id.in_(ids))
        .distinct()
    ):
        mine = sets[sid]
        mine["vendors"].add(vendor)
        if strength is not None:
            mine["field_strengths"].add(field_strength_token(strength))
        mine["sequences"].add(contrast)
        mine["anatomies"].add(anatomy)
    for sid, muscle in session.execute(
        select(MuscleMetric.subject_id, MuscleMetric.muscle)
        .where(MuscleMetric.subject_id.in_(ids))
        .distinct()
    ):
        rows[sid]["profile"]["muscle_mask"] |= MUSCLE_BITS.get(muscle, 0)
    for sid, row in rows.items():
        for column in SET_COLUMNS:
            row["profile"][column] = encode_set(sets[sid][column]) if sid in sets else ""
    # FF per visit; if a muscle-side was measured twice at a visit the latest row counts
    ff: dict[int, dict[str, Any]] = {}
    for visit_id, sid, muscle, side, value in session.execute(
        select(
            MuscleMetric.visit_id,
            MuscleMetric.subject_id,
            MuscleMetric.muscle,
            MuscleMetric.side,
            MuscleMetric.value,
        )
        .where(MuscleMetric.subject_id.in_(ids), MuscleMetric.metric == "ff_mean")
        .order_by(MuscleMetric.id)
    ):
        if muscle in MUSCLE_BITS and side in ("L", "R"):
            row = ff.setdefault(visit_id, {"visit_id": visit_id, "subject_id": sid, **FF_EMPTY})
            row[ff_column(muscle, side)] = value
    return list(rows.values()), list(ff.values())


FF_EMPTY = {ff_column(m, side): None for m in MUSCLES for side in ("L", "R")}


def profile_key(profile: dict[str, Any]) -> str:
    return json.dumps([profile[c] for c in PROFILE_COLUMNS], separators=(",", ":"))


def _profile_ids(session: Session, profiles: list[dict[str, Any]]) -> dict[str, int]:
    """Ids of ``profiles`` by key, inserting the missing ones (safe against concurrent inserts)."""
    wanted = {profile_key(p): p for p in profiles}
    found: dict[str, int] = {}
    keys = sorted(wanted)

    def lookup() -> None:
        for start in range(0, len(keys), 500):
            for pid, key in session.execute(
                select(SearchProfile.id, SearchProfile.key).where(
                    SearchProfile.key.in_(keys[start : start + 500])
                )
            ):
                found[key] = pid

    lookup()
    missing = [{"key": k, **wanted[k]} for k in keys if k not in found]
    if missing:
        dialect = session.get_bind().dialect.name
        stmt = (pg_insert if dialect == "postgresql" else sqlite_insert)(SearchProfile)
        session.connection().execute(stmt.on_conflict_do_nothing(index_elements=["key"]), missing)
        lookup()
    return found


def _write(session: Session, chunk: list[int]) -> int:
    connection = session.connection()
    connection.execute(delete(search_visit_ff).where(search_visit_ff.c.subject_id.in_(chunk)))
    connection.execute(delete(SearchSubject).where(SearchSubject.subject_id.in_(chunk)))
    rows, ff = _rows(session, chunk)
    if rows:
        ids = _profile_ids(session, [r["profile"] for r in rows])
        for row in rows:
            row["profile_id"] = ids[profile_key(row.pop("profile"))]
        connection.execute(insert(SearchSubject), rows)
    if ff:
        connection.execute(insert(search_visit_ff), ff)
    return len(rows)


def refresh_subjects(session: Session, subject_ids: Iterable[int]) -> None:
    """Recompute the index rows of ``subject_ids`` (deleted subjects lose theirs)."""
    ids = sorted({int(i) for i in subject_ids if i is not None})
    for start in range(0, len(ids), CHUNK):
        _write(session, ids[start : start + CHUNK])


def refresh_subject(session: Session, subject_id: int) -> None:
    """Recompute one subject's index rows; call after changing its data with Core SQL."""
    refresh_subjects(session, [subject_id])


def rebuild(session: Session) -> int:
    """Recompute the whole index (after a bulk load or a restore); returns the subject count."""
    connection = session.connection()
    connection.execute(delete(search_visit_ff))
    connection.execute(delete(SearchSubject))
    last, total = 0, 0
    while True:
        ids = list(
            session.scalars(
                select(Subject.id).where(Subject.id > last).order_by(Subject.id).limit(CHUNK)
            )
        )
        if not ids:
            return total
        total += _write(session, ids)
        last = ids[-1]


# --- keeping it in step: session hooks -------------------------------------------------------


def _pending(session: Session) -> set[int]:
    pending: set[int] = session.info.setdefault(_PENDING, set())
    return pending


def _pending_visits(session: Session) -> set[int]:
    visits: set[int] = session.info.setdefault(_VISITS, set())
    return visits


def _touched(objects: Iterable[Any]) -> Iterator[tuple[str, int | None]]:
    for obj in objects:
        if isinstance(obj, Subject):
            yield "subject", obj.id
        elif isinstance(obj, Consent | Visit | MuscleMetric):
            yield "subject", obj.subject_id
        elif isinstance(obj, Series):
            yield "visit", obj.visit_id


def _after_flush(session: Session, _context: Any) -> None:
    for kind, key in _touched([*session.new, *session.dirty, *session.deleted]):
        if key is not None:
            (_pending if kind == "subject" else _pending_visits)(session).add(key)


def _on_bulk(state: ORMExecuteState) -> None:
    """ORM bulk statements on a mirrored table: remember the subjects they touch.

    ``update()``/``delete()``: the subjects matching the statement's WHERE, read before it
    runs. ``insert()`` with a list of parameter dicts: their ``subject_id`` (``visit_id`` for
    series). A bulk insert of subjects without explicit ids cannot be followed: their rows
    appear with their first consent, visit or metric, or call :func:`refresh_subject`.
    """
    if state.bind_mapper is None:
        return
    entity = state.bind_mapper.class_
    if state.is_insert:
        params = state.parameters
        rows = params if isinstance(params, list) else [params] if params else []
        key = {Subject: "id", Series: "visit_id"}.get(entity, "subject_id")
        target = _pending_visits if entity is Series else _pending
        if entity in (Subject, Consent, Visit, MuscleMetric, Series):
            target(state.session).update(
                r[key] for r in rows if isinstance(r, dict) and r.get(key) is not None
            )
        return
    if not (state.is_update or state.is_delete):
        return
    where = state.statement.whereclause  # type: ignore[attr-defined]
    conditions = [] if where is None else [where]
    ids: Select[Any] | None = None
    if entity is Subject:
        ids = select(Subject.id).where(*conditions)
    elif entity in (Consent, Visit, MuscleMetric):
        ids = select(entity.subject_id).where(*conditions)
    elif entity is Series:
        ids = select(Visit.subject_id).join(Series, Series.visit_id == Visit.id).where(*conditions)
    if ids is not None:
        found = state.session.execute(ids.distinct()).scalars()
        _pending(state.session).update(i for i in found if i is not None)


def sync(session: Session) -> None:
    """Flush and refresh every subject marked stale in this transaction (idempotent)."""
    session.flush()
    visits = session.info.pop(_VISITS, set())
    if visits:
        found = session.scalars(
            select(Visit.subject_id).where(Visit.id.in_(sorted(visits))).distinct()
        )
        _pending(session).update(found)
    pending = session.info.pop(_PENDING, set())
    if pending:
        refresh_subjects(session, pending)


def _before_commit(session: Session) -> None:
    # flush here (not in commit's own flush, which runs after this hook) so that what the
    # flush marks stale is refreshed in this transaction
    changes = session.new or session.dirty or session.deleted
    if changes or session.info.get(_PENDING) or session.info.get(_VISITS):
        sync(session)


def _after_soft_rollback(session: Session, _previous: Any) -> None:
    if not session.in_transaction():  # the whole transaction is gone, not just a savepoint
        session.info.pop(_PENDING, None)
        session.info.pop(_VISITS, None)


def install() -> None:
    """Register the hooks on every :class:`Session` (idempotent)."""
    for name, fn in (
        ("after_flush", _after_flush),
        ("do_orm_execute", _on_bulk),
        ("before_commit", _before_commit),
        ("after_soft_rollback", _after_soft_rollback),
    ):
        if not event.contains(Session, name, fn):
            event.listen(Session, name, fn)


install()
