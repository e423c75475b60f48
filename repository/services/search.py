"""Faceted cohort search over shareable subjects and their per-muscle metrics.

The query is a closed vocabulary (:class:`CohortQuery`); unknown parameters or values are
errors, never ignored. Semantics:

* values inside one facet are OR-ed (``sex=F&sex=M``), facets are AND-ed, except
  ``sequence`` and ``muscle`` (sequences available / muscles segmented), which require ALL;
* per-muscle conditions (``mc``) are combined with ``combine`` = ``and`` | ``or``; a condition
  holds when any visit of the subject has the metric within ``[min, max]`` on that side
  (``side=any``: either side);
* ``q`` is full text over project title, description and keywords (SQLite FTS5 /
  PostgreSQL tsvector with a GIN index, see migration 0004).

Disclosure control (DESIGN §4). Only shareable subjects (``shareable_subject_clause``) of
projects the actor may see (``project.view_metadata``) are ever counted. A count is *exact*
only when the actor has ``project.view_data`` on every project in the search's scope. Otherwise:

* counts 0–4 are shown as ``"<5"`` (zero is not distinguishable from 1–4);
* counts ≥ 5 are rounded to the nearest multiple of 5, so the difference of two queries that
  differ by one to two subjects is hidden (differencing attack);
* a muscle's median FF is shown only when at least 5 distinct subjects contribute, and rounded
  to 1 %; individual values are never returned.

Rounding does not make differencing impossible for an adversary who runs many overlapping
queries near a rounding boundary; it removes the single-query-pair attack.
"""

from __future__ import annotations

import math
import re
import secrets
import statistics
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Integer,
    MetaData,
    Select,
    Table,
    and_,
    func,
    insert,
    literal_column,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.orm import Session, aliased

from repository.errors import ValidationError
from repository.models import MuscleMetric, Project, Series, Subject, Visit
from repository.security import policy
from repository.services.consent_filters import shareable_subject_clause
from repository.services.context import Actor

SUPPRESSION_THRESHOLD = 5
ROUNDING_BASE = 5
SAMPLE_MAX = 5_000  # above this many matching subjects, see sample_of()

#: Metric name → unit, as written by the upload pipeline in ``muscle_metrics``.
METRICS: dict[str, str] = {"ff_mean": "%", "t2w_mean": "ms", "volume_ml": "ml"}
METRIC_LABELS = {"ff_mean": "fat fraction", "t2w_mean": "water T2", "volume_ml": "volume"}
#: The 11 thigh muscles (identical to ``qmri.segmentation.labels.MUSCLE_NAMES``; tested).
MUSCLES: tuple[str, ...] = (
    "biceps_femoris_long_head",
    "biceps_femoris_short_head",
    "semitendinosus",
    "semimembranosus",
    "adductor_magnus",
    "vastus_intermedius",
    "vastus_lateralis",
    "vastus_medialis",
    "rectus_femoris",
    "gracilis",
    "sartorius",
)
SIDES = ("L", "R", "any")
SEXES = ("F", "M", "O")
MAX_PER_PAGE = 100
MAX_CONDITIONS = 20
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_ .:+-]{1,100}$")

# Must stay identical to PG_TSVECTOR in migrations/versions/0004_catalog.py (GIN index).
PG_TSVECTOR = (
    "to_tsvector('english', coalesce(title, '') || ' ' || coalesce(description, '')"
    " || ' ' || coalesce(CAST(keywords AS text), ''))"
)

PARAMS = frozenset(
    {
        "q",
        "project",
        "disease",
        "sex",
        "vendor",
        "field_strength",
        "sequence",
        "anatomy",
        "muscle",
        "age_min",
        "age_max",
        "visits_min",
        "visits_max",
        "mc",
        "mc_muscle",
        "mc_side",
        "mc_metric",
        "mc_min",
        "mc_max",
        "combine",
        "page",
        "per_page",
    }
)


@dataclass(frozen=True)
class MuscleCondition:
    muscle: str
    side: str
    metric: str
    min: float | None = None
    max: float | None = None

    def encode(self) -> str:
        lo = "" if self.min is None else f"{self.min:g}"
        hi = "" if self.max is None else f"{self.max:g}"
        return f"{self.muscle}:{self.side}:{self.metric}:{lo}:{hi}"

    def describe(self) -> str:
        unit = METRICS[self.metric]
        side = {"L": "left", "R": "right", "any": "either side"}[self.side]
        rng = []
        if self.min is not None:
            rng.append(f"≥ {self.min:g} {unit}")
        if self.max is not None:
            rng.append(f"≤ {self.max:g} {unit}")
        label = METRIC_LABELS[self.metric]
        return f"{self.muscle.replace('_', ' ')} ({side}) {label} {' and '.join(rng)}"


@dataclass(frozen=True)
class CohortQuery:
    """A validated search; :meth:`to_dict` is canonical (sorted, so equal queries hash equal)."""

    q: str = ""
    project: tuple[str, ...] = ()
    disease: tuple[str, ...] = ()
    sex: tuple[str, ...] = ()
    vendor: tuple[str, ...] = ()
    field_strength: tuple[float, ...] = ()
    sequence: tuple[str, ...] = ()
    anatomy: tuple[str, ...] = ()
    muscle: tuple[str, ...] = ()
    age_min: float | None = None
    age_max: float | None = None
    visits_min: int | None = None
    visits_max: int | None = None
    mc: tuple[MuscleCondition, ...] = ()
    combine: str = "and"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if key == "mc":
                if self.mc:
                    out["mc"] = [c.encode() for c in self.mc]
            elif key == "combine":
                if self.mc:
                    out["combine"] = value
            elif isinstance(value, tuple | list):
                if value:
                    out[key] = sorted(value)
            elif value not in (None, ""):
                out[key] = value
        return out

    @property
    def has_subject_filters(self) -> bool:
        d = self.to_dict()
        return bool(set(d) - {"q", "project"})


def _float(raw: Any, name: str) -> float | None:
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ValidationError(f"{name}: not a number: {raw!r}") from None
    if not math.isfinite(value):
        raise ValidationError(f"{name}: must be finite")
    return value


def _int(raw: Any, name: str) -> int | None:
    value = _float(raw, name)
    if value is None:
        return None
    if value != int(value) or value < 0:
        raise ValidationError(f"{name}: must be a whole number ≥ 0")
    return int(value)


def _tokens(values: Sequence[Any], name: str) -> tuple[str, ...]:
    out = []
    for raw in values:
        value = str(raw).strip()
        if not value:
            continue
        if not _TOKEN_RE.match(value):
            raise ValidationError(f"{name}: invalid value {value!r}")
        out.append(value)
    return tuple(sorted(set(out)))


def _condition(
    muscle: str, side: str, metric: str, lo: Any, hi: Any, where: str
) -> MuscleCondition:
    muscle, side, metric = muscle.strip(), side.strip() or "any", metric.strip()
    if muscle not in MUSCLES:
        raise ValidationError(f"{where}: unknown muscle {muscle!r}")
    if side not in SIDES:
        raise ValidationError(f"{where}: side must be L, R or any")
    if metric not in METRICS:
        raise ValidationError(f"{where}: metric must be one of {', '.join(METRICS)}")
    low, high = _float(lo, f"{where} min"), _float(hi, f"{where} max")
    if low is None and high is None:
        raise ValidationError(f"{where}: give a minimum and/or a maximum")
    if low is not None and high is not None and low > high:
        raise ValidationError(f"{where}: minimum above maximum")
    return MuscleCondition(muscle, side, metric, low, high)


def parse_query(params: Mapping[str, Any]) -> CohortQuery:
    """Parse a mapping whose values are lists of strings (query string) or JSON values.

    Unknown keys raise :class:`ValidationError` (fail closed). ``page``/``per_page`` are
    accepted here and ignored (see :func:`parse_page`).
    """

    def values(key: str) -> list[Any]:
        raw = params.get(key)
        if raw is None:
            return []
        return list(raw) if isinstance(raw, list | tuple) else [raw]

    def single(key: str) -> Any:
        vals = values(key)
        if len(vals) > 1:
            raise ValidationError(f"{key}: give one value")
        return vals[0] if vals else None

    unknown = set(params) - PARAMS
    if unknown:
        raise ValidationError(f"unknown search parameters: {', '.join(sorted(unknown))}")
    sexes = _tokens(values("sex"), "sex")
    if set(sexes) - set(SEXES):
        raise ValidationError("sex must be F, M or O")
    muscles = _tokens(values("muscle"), "muscle")
    if set(muscles) - set(MUSCLES):
        raise ValidationError(
            f"unknown muscle(s): {', '.join(sorted(set(muscles) - set(MUSCLES)))}"
        )
    strengths = tuple(
        sorted(
            {
                v
                for v in (_float(x, "field_strength") for x in values("field_strength"))
                if v is not None
            }
        )
    )
    conditions: list[MuscleCondition] = []
    for i, code in enumerate(values("mc"), 1):
        parts = str(code).split(":")
        if len(parts) != 5:
            raise ValidationError(f"condition {i}: use muscle:side:metric:min:max")
        muscle, side, metric, lo, hi = parts
        conditions.append(_condition(muscle, side, metric, lo, hi, where=f"condition {i}"))
    rows = [values(k) for k in ("mc_muscle", "mc_side", "mc_metric", "mc_min", "mc_max")]
    if len({len(r) for r in rows}) > 1:
        raise ValidationError(
            "per-muscle conditions: every row needs muscle, side, metric, min, max"
        )
    for i, (m, s, met, lo, hi) in enumerate(zip(*rows, strict=True), len(conditions) + 1):
        if not str(m).strip() and lo in ("", None) and hi in ("", None):
            continue  # an empty row of the form
        conditions.append(_condition(str(m), str(s), str(met), lo, hi, where=f"condition {i}"))
    if len(conditions) > MAX_CONDITIONS:
        raise ValidationError(f"at most {MAX_CONDITIONS} per-muscle conditions")
    combine = str(single("combine") or "and").lower()
    if combine not in ("and", "or"):
        raise ValidationError("combine must be 'and' or 'or'")
    q = str(single("q") or "").strip()
    if len(q) > 200:
        raise ValidationError("q: at most 200 characters")
    age_min, age_max = _float(single("age_min"), "age_min"), _float(single("age_max"), "age_max")
    visits_min, visits_max = (
        _int(single("visits_min"), "visits_min"),
        _int(single("visits_max"), "visits_max"),
    )
    if age_min is not None and age_max is not None and age_min > age_max:
        raise ValidationError("age_min above age_max")
    if visits_min is not None and visits_max is not None and visits_min > visits_max:
        raise ValidationError("visits_min above visits_max")
    return CohortQuery(
        q=q,
        project=_tokens(values("project"), "project"),
        disease=_tokens(values("disease"), "disease"),
        sex=sexes,
        vendor=_tokens(values("vendor"), "vendor"),
        field_strength=strengths,
        sequence=_tokens(values("sequence"), "sequence"),
        anatomy=_tokens(values("anatomy"), "anatomy"),
        muscle=muscles,
        age_min=age_min,
        age_max=age_max,
        visits_min=visits_min,
        visits_max=visits_max,
        mc=tuple(sorted(set(conditions), key=MuscleCondition.encode)),
        combine=combine,
    )


def parse_page(params: Mapping[str, Any]) -> tuple[int, int]:
    def one(key: str, default: int) -> int:
        raw = params.get(key)
        if isinstance(raw, list | tuple):
            raw = raw[0] if raw else None
        value = _int(raw, key)
        return default if value is None else value

    page, per_page = one("page", 1), one("per_page", 25)
    if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
        raise ValidationError(f"page ≥ 1 and 1 ≤ per_page ≤ {MAX_PER_PAGE}")
    return page, per_page


# --- SQL -------------------------------------------------------------------------------------


def _fulltext_project_ids(session: Session, q: str) -> Select[Any]:
    words = re.findall(r"\w+", q, flags=re.UNICODE)
    if not words:
        return select(Project.id).where(Project.id.is_(None))
    if session.get_bind().dialect.name == "postgresql":
        inner = aliased(Project, name="p_fts")
        return select(inner.id).where(
            text(f"{PG_TSVECTOR} @@ plainto_tsquery('english', :fts_q)").bindparams(
                fts_q=" ".join(words)
            )
        )
    match = " ".join('"' + w.replace('"', '""') + '"' for w in words)
    return (
        select(literal_column("rowid"))
        .select_from(text("project_fts"))
        .where(text("project_fts MATCH :fts_q").bindparams(fts_q=match))
    )


def _series_subjects(*clauses: ColumnElement[bool]) -> Select[Any]:
    return select(Visit.subject_id).join(Series, Series.visit_id == Visit.id).where(*clauses)


def _condition_clause(c: MuscleCondition) -> ColumnElement[bool]:
    clauses = [MuscleMetric.metric == c.metric, MuscleMetric.muscle == c.muscle]
    if c.side != "any":
        clauses.append(MuscleMetric.side == c.side)
    if c.min is not None:
        clauses.append(MuscleMetric.value >= c.min)
    if c.max is not None:
        clauses.append(MuscleMetric.value <= c.max)
    return Subject.id.in_(select(MuscleMetric.subject_id).where(*clauses))


def project_scope(session: Session, actor: Actor, query: CohortQuery) -> list[ColumnElement[bool]]:
    """WHERE clauses on :class:`Project`: visible projects matching the project-level filters."""
    clauses: list[ColumnElement[bool]] = [policy.project_filter(actor, "project.view_metadata")]
    if query.project:
        clauses.append(Project.slug.in_(query.project))
    if query.q:
        clauses.append(Project.id.in_(_fulltext_project_ids(session, query.q)))
    return clauses


def subject_clauses(
    session: Session, actor: Actor, query: CohortQuery, *, shareable: bool = True
) -> list[ColumnElement[bool]]:
    """WHERE clauses on Subject (joined to Project) selecting the matching shareable subjects.

    ``shareable=False`` leaves out the consent clause; only :func:`materialised` uses that,
    and it applies the clause itself before anything is read.
    """
    clauses = [*project_scope(session, actor, query)]
    if shareable:
        clauses.append(shareable_subject_clause())
    if query.disease:
        clauses.append(Subject.disease.in_(query.disease))
    if query.sex:
        clauses.append(Subject.sex.in_(query.sex))
    if query.age_min is not None or query.age_max is not None:
        age: list[ColumnElement[bool]] = [Visit.age_at_scan_years.is_not(None)]
        if query.age_min is not None:
            age.append(Visit.age_at_scan_years >= query.age_min)
        if query.age_max is not None:
            age.append(Visit.age_at_scan_years <= query.age_max)
        clauses.append(Subject.id.in_(select(Visit.subject_id).where(*age)))
    if query.visits_min is not None or query.visits_max is not None:
        n_visits = (
            select(func.count(Visit.id)).where(Visit.subject_id == Subject.id).scalar_subquery()
        )
        if query.visits_min is not None:
            clauses.append(n_visits >= query.visits_min)
        if query.visits_max is not None:
            clauses.append(n_visits <= query.visits_max)
    if query.vendor:
        clauses.append(Subject.id.in_(_series_subjects(Series.vendor.in_(query.vendor))))
    if query.field_strength:
        clauses.append(
            Subject.id.in_(_series_subjects(Series.field_strength_t.in_(query.field_strength)))
        )
    if query.anatomy:
        clauses.append(Subject.id.in_(_series_subjects(Series.anatomy.in_(query.anatomy))))
    for contrast in query.sequence:
        clauses.append(Subject.id.in_(_series_subjects(Series.contrast == contrast)))
    for muscle in query.muscle:
        clauses.append(
            Subject.id.in_(select(MuscleMetric.subject_id).where(MuscleMetric.muscle == muscle))
        )
    if query.mc:
        conds = [_condition_clause(c) for c in query.mc]
        clauses.append(and_(*conds) if query.combine == "and" else or_(*conds))
    return clauses


def matching_subjects(
    session: Session, actor: Actor, query: CohortQuery, *, shareable: bool = True
) -> Select[int, int]:
    """``SELECT subjects.id, subjects.project_id`` of every matching shareable subject."""
    return (
        select(Subject.id, Subject.project_id)
        .join(Project, Project.id == Subject.project_id)
        .where(*subject_clauses(session, actor, query, shareable=shareable))
    )


# --- disclosure control ----------------------------------------------------------------------


def show_count(n: int, exact: bool) -> int | str:
    """``n`` as shown: exact, or ``"<5"`` / rounded to a multiple of 5 (see module doc)."""
    if exact:
        return n
    if n < SUPPRESSION_THRESHOLD:
        return f"<{SUPPRESSION_THRESHOLD}"
    return max(SUPPRESSION_THRESHOLD, ROUNDING_BASE * round(n / ROUNDING_BASE))


def data_projects(session: Session, actor: Actor) -> set[int]:
    """Ids of the projects whose individual-level data ``actor`` may see."""
    return set(
        session.scalars(select(Project.id).where(policy.project_filter(actor, "project.view_data")))
    )


@contextmanager
def materialised(
    session: Session, stmt: Select[int, int], *, apply_consent: bool = False
) -> Iterator[Table]:
    """The rows of ``stmt`` (subject id, project id) in a temporary table, dropped afterwards.

    Facets, the heat map and the counts all read the matching set; computing it once and
    joining an indexed temporary table is far cheaper than re-running the filters per facet.
    With ``apply_consent`` the rows failing ``shareable_subject_clause`` are deleted right
    after the insert (two steps give PostgreSQL true row counts to plan with; the consent
    clause's estimate inside one big query made it choose nested loops).
    """
    table = Table(
        f"tmp_search_{secrets.token_hex(6)}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("project_id", Integer, nullable=False),
        prefixes=["TEMPORARY"],
    )
    connection = session.connection()
    table.create(connection)
    try:
        connection.execute(insert(table).from_select(["id", "project_id"], stmt))
        pg = connection.dialect.name == "postgresql"
        if pg:
            connection.execute(text(f'ANALYZE "{table.name}"'))
        if apply_consent:
            keep = select(Subject.id).where(
                Subject.id.in_(select(table.c.id)), shareable_subject_clause()
            )
            connection.execute(table.delete().where(table.c.id.not_in(keep)))
            if pg:
                connection.execute(text(f'ANALYZE "{table.name}"'))
        yield table
    finally:
        table.drop(connection)


# --- results ---------------------------------------------------------------------------------


@dataclass
class SearchResult:
    query: CohortQuery
    total: int | str
    exact: bool
    projects: list[dict[str, Any]]
    facets: dict[str, list[dict[str, Any]]]
    heatmap: list[dict[str, Any]]
    subjects: list[dict[str, Any]] = field(default_factory=list)
    page: int = 1
    per_page: int = 25
    pages: int = 1

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query.to_dict(),
            "total": self.total,
            "exact": self.exact,
            "suppression": {
                "threshold": SUPPRESSION_THRESHOLD,
                "rounding": None if self.exact else ROUNDING_BASE,
            },
            "projects": self.projects,
            "facets": self.facets,
            "heatmap": self.heatmap,
            "subjects": self.subjects,
            "page": self.page,
            "per_page": self.per_page,
            "pages": self.pages,
        }


def sample_of(session: Session, ids: Any) -> tuple[Any, int]:
    """``(source, k)``: ``ids`` itself (k = 1) or its deterministic 1-in-k sample by id.

    Above :data:`SAMPLE_MAX` matching subjects the costly per-visit facets and the heat map
    are computed on the sample and scaled by k (flagged ``approximate``); totals, per-project
    counts and the disease and sex facets are always exact.
    """
    n = session.scalar(select(func.count()).select_from(ids)) or 0
    step = max(1, math.ceil(n / SAMPLE_MAX))
    if step == 1:
        return ids, 1
    return select(ids.c.id.label("id")).where(ids.c.id % step == 0).subquery("sample"), step


def _facet(
    session: Session, column: Any, joins: Sequence[Any], ids: Any, exact: bool, step: int = 1
) -> list[dict[str, Any]]:
    stmt = select(
        column.label("value"), func.count(func.distinct(ids.c.id)).label("n")
    ).select_from(ids)
    for target, on in joins:
        stmt = stmt.join(target, on)
    rows = session.execute(stmt.group_by(column).order_by(column)).all()
    return [
        {"value": value, "count": show_count(n * step, exact), "approximate": step > 1}
        for value, n in rows
        if value not in (None, "")
    ]


def facets(
    session: Session, ids: Any, exact: bool, *, with_muscle: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Counts of matching subjects per facet value (``ids``: table/subquery with ``id``).

    ``with_muscle=False`` leaves out "muscles segmented" (:func:`muscle_summary` gives it
    together with the heat map from one scan).
    """
    src, step = sample_of(session, ids)
    subj = [(Subject, Subject.id == ids.c.id)]
    series = [(Visit, Visit.subject_id == src.c.id), (Series, Series.visit_id == Visit.id)]
    in_src = Visit.subject_id.in_(select(src.c.id))
    n_visits = (
        select(Visit.subject_id.label("sid"), func.count(Visit.id).label("nv"))
        .where(in_src)
        .group_by(Visit.subject_id)
        .subquery()
    )
    first_age = (
        select(Visit.subject_id.label("sid"), func.min(Visit.age_at_scan_years).label("age"))
        .where(in_src)
        .group_by(Visit.subject_id)
        .subquery()
    )
    decade = (func.floor(first_age.c.age / 10) * 10).label("decade")
    age = _facet(session, decade, [(first_age, first_age.c.sid == src.c.id)], src, exact, step)
    # disease and sex in one pass over the (1:1) subjects join, exact
    by_disease: dict[str, int] = defaultdict(int)
    by_sex: dict[str, int] = defaultdict(int)
    pairs = select(Subject.disease, Subject.sex, func.count()).select_from(ids).join(*subj[0])
    for disease, sex, n in session.execute(pairs.group_by(Subject.disease, Subject.sex)):
        by_disease[disease] += n
        by_sex[sex] += n
    out = {
        "disease": [
            {"value": v, "count": show_count(n, exact), "approximate": False}
            for v, n in sorted(by_disease.items())
            if v
        ],
        "sex": [
            {"value": v, "count": show_count(n, exact), "approximate": False}
            for v, n in sorted(by_sex.items())
            if v
        ],
        "age": [{**r, "value": f"{int(r['value'])}–{int(r['value']) + 9}"} for r in age],
        "visits": _facet(
            session, n_visits.c.nv, [(n_visits, n_visits.c.sid == src.c.id)], src, exact, step
        ),
    }
    series_facets = {
        "vendor": Series.vendor,
        "field_strength": Series.field_strength_t,
        "sequence": Series.contrast,
        "anatomy": Series.anatomy,
    }
    if session.get_bind().dialect.name == "postgresql":
        # one scan of visits × series for the four facets
        cols = list(series_facets.values())
        series_stmt = select(
            *cols, func.count(func.distinct(src.c.id)), *(func.grouping(c) for c in cols)
        ).select_from(src)
        for target, on in series:
            series_stmt = series_stmt.join(target, on)
        series_stmt = series_stmt.group_by(func.grouping_sets(*(tuple_(c) for c in cols)))
        grouped: dict[str, list[tuple[Any, int]]] = {name: [] for name in series_facets}
        names = list(series_facets)
        for row in session.execute(series_stmt):
            values, count, flags = row[:4], int(row[4] or 0), row[5:]
            i = next(j for j, rolled in enumerate(flags) if not rolled)
            grouped[names[i]].append((values[i], count))
        for name, found in grouped.items():
            out[name] = [
                {"value": v, "count": show_count(c * step, exact), "approximate": step > 1}
                for v, c in sorted(found, key=lambda p: p[0])
                if v not in (None, "")
            ]
    else:
        for name, column in series_facets.items():
            out[name] = _facet(session, column, series, src, exact, step)
    if not with_muscle:
        return out
    seg = (
        select(MuscleMetric.muscle.label("value"), func.count(func.distinct(src.c.id)).label("n"))
        .select_from(src)
        .join(
            MuscleMetric,
            and_(MuscleMetric.subject_id == src.c.id, MuscleMetric.metric == "ff_mean"),
        )
        .group_by(MuscleMetric.muscle)
    )
    out["muscle"] = [
        {"value": m, "count": show_count(n * step, exact), "approximate": step > 1}
        for m, n in session.execute(seg).all()
    ]
    return out


def heatmap(session: Session, ids: Any, exact: bool) -> list[dict[str, Any]]:
    """Median FF (%) per muscle and side; see :func:`muscle_summary`."""
    return muscle_summary(session, ids, exact)[0]


def muscle_summary(
    session: Session, ids: Any, exact: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(heat map, muscles-segmented facet)`` of the matching subjects, from one scan.

    The heat map has one entry per (muscle, side) in :data:`MUSCLES` order with
    ``median_ff`` (median FF in % over every visit; None when hidden or absent), ``n`` (shown
    count of contributing subjects) and ``approximate``. Above :data:`SAMPLE_MAX` matching
    subjects both use the deterministic 1-in-k sample of :func:`sample_of` and counts are
    scaled by k. Medians are hidden when fewer than 5 subjects contribute (unless exact).
    """
    pg = session.get_bind().dialect.name == "postgresql"
    source, step = sample_of(session, ids)
    cells: dict[tuple[str, str], tuple[float | None, int]] = {}
    per_muscle: dict[str, int] = {}
    if pg:
        stmt = (
            select(
                MuscleMetric.muscle,
                MuscleMetric.side,
                func.percentile_cont(0.5).within_group(MuscleMetric.value),
                func.count(func.distinct(MuscleMetric.subject_id)),
                func.grouping(MuscleMetric.side),
            )
            .select_from(source)
            .join(MuscleMetric, MuscleMetric.subject_id == source.c.id)
            .where(MuscleMetric.metric == "ff_mean")
            .group_by(
                func.grouping_sets(
                    tuple_(MuscleMetric.muscle, MuscleMetric.side), tuple_(MuscleMetric.muscle)
                )
            )
        )
        for muscle, side, median, n, side_rolled_up in session.execute(stmt).all():
            if side_rolled_up:
                per_muscle[muscle] = int(n)
            else:
                cells[(muscle, side)] = (float(median), int(n))
    else:
        values: dict[tuple[str, str], list[float]] = defaultdict(list)
        subjects: dict[tuple[str, str], set[int]] = defaultdict(set)
        stmt = (
            select(
                MuscleMetric.muscle, MuscleMetric.side, MuscleMetric.value, MuscleMetric.subject_id
            )
            .select_from(source)
            .join(MuscleMetric, MuscleMetric.subject_id == source.c.id)
            .where(MuscleMetric.metric == "ff_mean")
        )
        for muscle, side, value, sid in session.execute(stmt):
            values[(muscle, side)].append(value)
            subjects[(muscle, side)].add(sid)
        for key, vals in values.items():
            cells[key] = (float(statistics.median(vals)), len(subjects[key]))
        by_muscle: dict[str, set[int]] = defaultdict(set)
        for (muscle, _side), sids in subjects.items():
            by_muscle[muscle] |= sids
        per_muscle = {m: len(sids) for m, sids in by_muscle.items()}
    out = []
    for muscle in MUSCLES:
        for side in ("R", "L"):
            median, n = cells.get((muscle, side), (None, 0))
            n *= step
            shown = median
            if median is not None and not exact:
                shown = None if n < SUPPRESSION_THRESHOLD else round(median)
            elif median is not None:
                shown = round(median, 1)
            out.append(
                {
                    "muscle": muscle,
                    "side": side,
                    "median_ff": shown,
                    "n": show_count(n, exact),
                    "approximate": step > 1,
                }
            )
    segmented = [
        {"value": m, "count": show_count(n * step, exact), "approximate": step > 1}
        for m, n in sorted(per_muscle.items())
    ]
    return out, segmented


def search(
    session: Session,
    actor: Actor,
    query: CohortQuery,
    *,
    page: int = 1,
    per_page: int = 25,
    with_facets: bool = True,
) -> SearchResult:
    """Run ``query`` for ``actor`` with disclosure control (see the module docstring)."""
    matching = matching_subjects(session, actor, query, shareable=False)
    with materialised(session, matching, apply_consent=True) as ids:
        return _search(session, actor, query, ids, page, per_page, with_facets)


def _search(
    session: Session,
    actor: Actor,
    query: CohortQuery,
    ids: Table,
    page: int,
    per_page: int,
    with_facets: bool,
) -> SearchResult:
    per_project: dict[int, int] = dict(
        session.execute(
            select(ids.c.project_id, func.count()).select_from(ids).group_by(ids.c.project_id)
        ).all()
    )
    privileged = data_projects(session, actor)
    visible = session.execute(
        select(Project.id, Project.slug, Project.title, Project.description)
        .where(*project_scope(session, actor, query))
        .order_by(Project.title)
    ).all()
    # Exact only if every project in scope is one whose data the actor may see; an empty
    # scope is not exact (0 must look like 1–4).
    scope = {row[0] for row in visible}
    exact = bool(scope) and scope <= privileged
    total = sum(per_project.values())
    projects = [
        {
            "slug": slug,
            "title": title,
            "description": (description or "")[:300],
            "count": show_count(per_project.get(pid, 0), pid in privileged),
            "exact": pid in privileged,
        }
        for pid, slug, title, description in visible
    ]
    result = SearchResult(
        query=query,
        total=show_count(total, exact),
        exact=exact,
        projects=projects,
        facets={},
        heatmap=[],
        page=page,
        per_page=per_page,
    )
    if with_facets:
        result.facets = facets(session, ids, exact, with_muscle=False)
        result.heatmap, result.facets["muscle"] = muscle_summary(session, ids, exact)
    # Individual-level rows only from projects the actor may see data of.
    if privileged:
        rows_q = (
            select(Subject.id, Subject.pseudonym, Subject.sex, Subject.disease, Project.slug)
            .join(Project, Project.id == Subject.project_id)
            .where(Subject.id.in_(select(ids.c.id)), Subject.project_id.in_(privileged))
        )
        n_rows = sum(n for pid, n in per_project.items() if pid in privileged)
        result.pages = max(1, math.ceil(n_rows / per_page))
        rows = session.execute(
            rows_q.order_by(Project.slug, Subject.pseudonym)
            .limit(per_page)
            .offset((page - 1) * per_page)
        ).all()
        n_visits = dict(
            session.execute(
                select(Visit.subject_id, func.count(Visit.id))
                .where(Visit.subject_id.in_([r[0] for r in rows]))
                .group_by(Visit.subject_id)
            ).all()
        )
        result.subjects = [
            {
                "project": slug,
                "pseudonym": pseudo,
                "sex": sex,
                "disease": disease,
                "visits": n_visits.get(sid, 0),
            }
            for sid, pseudo, sex, disease, slug in rows
        ]
    return result
