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

Performance (bench/bench_search.py, 100 000 subjects × 22 muscle-sides × 3 metrics). Subject
filters and facets read the search index (:mod:`repository.services.search_index`: one narrow
row per subject and its facet *profile*), never visits/series/consents; the shareable clause is
the index's ``shareable_now()``, kept equal to ``shareable_subject_clause`` by the index (tested).
One statement per search returns the counts per (project, profile), the heat-map sample and the
page of subject ids (:func:`facet_counts`); per-muscle conditions use the covering index
``ix_muscle_metrics_metric_muscle_side_value_subject``; the heat map reads one row per visit (``search_visit_ff``) for
at most :data:`SAMPLE_MAX` subjects. Facet counts are exact; only the heat map is sampled.
Subjects are listed by keyset (``after`` cursor) or offset.
"""

from __future__ import annotations

import base64
import json
import math
import re
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Integer,
    Select,
    and_,
    any_,
    bindparam,
    exists,
    func,
    literal,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session, aliased

from repository.errors import ValidationError
from repository.models import (
    MuscleMetric,
    Project,
    SearchProfile,
    SearchSubject,
    Visit,
    search_visit_ff,
)
from repository.models.search_index import ff_column
from repository.security import policy
from repository.services import search_index
from repository.services.context import Actor

SUPPRESSION_THRESHOLD = 5
ROUNDING_BASE = 5
SAMPLE_MAX = 2_500  # above this many matching subjects the heat map is sampled (see heatmap())

#: Metric name → unit, as written by the upload pipeline in ``muscle_metrics``.
METRICS: dict[str, str] = {"ff_mean": "%", "t2w_mean": "ms", "volume_ml": "ml"}
METRIC_LABELS = {"ff_mean": "fat fraction", "t2w_mean": "water T2", "volume_ml": "volume"}
#: The 11 thigh muscles (:data:`qmri.muscles.THIGH_MUSCLES`).
MUSCLES = search_index.MUSCLES
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
        "after",
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
#
# Every subject-level filter and facet reads ``search_subjects`` (one row per subject, kept
# current by repository.services.search_index); only per-muscle conditions and the heat map
# read ``muscle_metrics``, through covering indexes.

S = SearchSubject
P = SearchProfile


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


def _has(session: Session, column: Any, value: str) -> ColumnElement[bool]:
    """``column`` (a ``|a|b|`` set) contains ``value``: case-sensitive on both databases."""
    needle = "|" + value.replace("|", "/") + "|"
    if session.get_bind().dialect.name == "postgresql":
        return func.strpos(column, needle) > 0
    return func.instr(column, needle) > 0


def _any_of(session: Session, column: Any, values: Sequence[str]) -> ColumnElement[bool]:
    return or_(*(_has(session, column, v) for v in values))


def _condition_clause(c: MuscleCondition) -> ColumnElement[bool]:
    """Index-only scan of (metric, muscle, side, value, subject_id) (migration 0004)."""
    clauses = [
        MuscleMetric.metric == c.metric,
        MuscleMetric.muscle == c.muscle,
        MuscleMetric.side.in_(("L", "R")) if c.side == "any" else MuscleMetric.side == c.side,
    ]
    if c.min is not None:
        clauses.append(MuscleMetric.value >= c.min)
    if c.max is not None:
        clauses.append(MuscleMetric.value <= c.max)
    return S.subject_id.in_(select(MuscleMetric.subject_id).where(*clauses))


def project_scope(session: Session, actor: Actor, query: CohortQuery) -> list[ColumnElement[bool]]:
    """WHERE clauses on :class:`Project`: visible projects matching the project-level filters."""
    clauses: list[ColumnElement[bool]] = [policy.project_filter(actor, "project.view_metadata")]
    if query.project:
        clauses.append(Project.slug.in_(query.project))
    if query.q:
        clauses.append(Project.id.in_(_fulltext_project_ids(session, query.q)))
    return clauses


def subject_clauses(
    session: Session, actor: Actor, query: CohortQuery, *, scope: Sequence[int] | None = None
) -> list[ColumnElement[bool]]:
    """WHERE clauses on :class:`SearchSubject` selecting the matching shareable subjects.

    ``scope``: the visible project ids, when the caller has already computed
    :func:`project_scope` (saves a sub-query).
    """
    if scope is None:
        in_scope = S.project_id.in_(select(Project.id).where(*project_scope(session, actor, query)))
    else:
        in_scope = S.project_id.in_(list(scope))
    clauses: list[ColumnElement[bool]] = [in_scope, search_index.shareable_now()]
    profile = profile_clauses(session, query)
    if profile:
        # Resolved here (a small table) so the planner sees the real list and estimates
        # the matching rows well; a sub-query's default selectivity made it pick nested loops.
        profiles = list(session.scalars(select(P.id).where(*profile).order_by(P.id)))
        clauses.append(S.profile_id.in_(profiles))
    if query.age_min is not None or query.age_max is not None:
        # [age_lo, age_hi] spans the subject's visits: one-sided ranges are exact; a two-sided
        # range needs a visit inside it, checked only when the visits' ages differ.
        visit_in_range: list[ColumnElement[bool]] = [Visit.subject_id == S.subject_id]
        if query.age_min is not None:
            clauses.append(S.age_hi >= query.age_min)
            visit_in_range.append(Visit.age_at_scan_years >= query.age_min)
        if query.age_max is not None:
            clauses.append(S.age_lo <= query.age_max)
            visit_in_range.append(Visit.age_at_scan_years <= query.age_max)
        if query.age_min is not None and query.age_max is not None:
            clauses.append(or_(S.age_lo == S.age_hi, exists().where(*visit_in_range)))
    if query.mc:
        conds = [_condition_clause(c) for c in query.mc]
        clauses.append(and_(*conds) if query.combine == "and" else or_(*conds))
    return clauses


def profile_clauses(session: Session, query: CohortQuery) -> list[ColumnElement[bool]]:
    """WHERE clauses on :class:`SearchProfile` for the facet filters (none: every profile)."""
    clauses: list[ColumnElement[bool]] = []
    if query.disease:
        clauses.append(P.disease.in_(query.disease))
    if query.sex:
        clauses.append(P.sex.in_(query.sex))
    if query.visits_min is not None:
        clauses.append(P.n_visits >= query.visits_min)
    if query.visits_max is not None:
        clauses.append(P.n_visits <= query.visits_max)
    if query.vendor:
        clauses.append(_any_of(session, P.vendors, query.vendor))
    if query.field_strength:
        tokens = [search_index.field_strength_token(t) for t in query.field_strength]
        clauses.append(_any_of(session, P.field_strengths, tokens))
    if query.anatomy:
        clauses.append(_any_of(session, P.anatomies, query.anatomy))
    clauses.extend(_has(session, P.sequences, contrast) for contrast in query.sequence)
    if query.muscle:
        bits = sum(search_index.MUSCLE_BITS[m] for m in query.muscle)
        clauses.append(P.muscle_mask.op("&")(bits) == bits)
    return clauses


def matching_subjects(session: Session, actor: Actor, query: CohortQuery) -> Select[int, int]:
    """``SELECT subject_id, project_id`` of every matching shareable subject."""
    search_index.sync(session)
    return select(S.subject_id, S.project_id).where(*subject_clauses(session, actor, query))


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
    next_cursor: str | None = None

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
            "next": self.next_cursor,
        }


# Facets: name → column of search_profiles
FACET_COLUMNS: dict[str, Any] = {
    "disease": P.disease,
    "sex": P.sex,
    "age": P.age_decade,
    "visits": P.n_visits,
    "vendor": P.vendors,
    "field_strength": P.field_strengths,
    "sequence": P.sequences,
    "anatomy": P.anatomies,
    "muscle": P.muscle_mask,
}
_MULTI = {"vendor", "field_strength", "sequence", "anatomy"}


def _facet_value(name: str, raw: Any) -> Any:
    if name == "age":
        return f"{int(raw)}–{int(raw) + 9}"
    if name == "field_strength":
        return int(raw) / 1000
    return raw


@dataclass
class Matching:
    """What one scan of the matching subjects gives: counts, facet counts, heat-map sample."""

    per_project: dict[int, int]
    counts: dict[str, dict[Any, int]]
    sample_ids: list[int]
    step: int
    listed_ids: list[int] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.per_project.values())


def sample_step(n: int) -> int:
    """k of the deterministic 1-in-k heat-map sample (``subject_id % k == 0``) of n subjects."""
    return max(1, math.ceil(n / SAMPLE_MAX))


@dataclass(frozen=True)
class Listing:
    """Which page of individual rows to list: by (project slug, pseudonym), keyset or offset."""

    projects: Sequence[int]
    limit: int
    offset: int = 0
    after: tuple[str, str] | None = None


def _groups(source: Any) -> Select[Any]:
    return select(
        literal(0).label("kind"),
        source.c.project_id,
        source.c.profile_id,
        func.count().label("n"),
        null().label("sid"),
    ).group_by(source.c.project_id, source.c.profile_id)


def _sample(source: Any, step: Any) -> Select[Any]:
    return select(literal(1), null(), null(), null(), source.c.subject_id).where(
        source.c.subject_id % step == 0
    )


def _page(source: Any, listing: Listing) -> Select[Any]:
    order = (Project.slug, source.c.pseudonym)
    page = (
        select(source.c.subject_id, Project.slug, source.c.pseudonym)
        .join(Project, Project.id == source.c.project_id)
        .where(source.c.project_id.in_(list(listing.projects)))
        .order_by(*order)
        .limit(listing.limit)
    )
    if listing.after is not None:
        page = page.where(tuple_(*order) > tuple_(*listing.after))
    elif listing.offset:
        page = page.offset(listing.offset)
    rows = page.subquery("listed")
    # numbered after the LIMIT (a top-N sort of the matching rows, then ≤ limit rows)
    pos = func.row_number().over(order_by=(rows.c.slug, rows.c.pseudonym))
    return select(literal(2), null(), null(), pos, rows.c.subject_id)


def facet_counts(
    session: Session,
    clauses: Sequence[ColumnElement[bool]],
    *,
    with_facets: bool = True,
    listing: Listing | None = None,
    costly_filter: bool = False,
) -> Matching:
    """Subjects per project, exact per-facet counts, the heat-map sample and a page of subject
    ids.

    The matching rows of ``search_subjects`` are grouped by ``(project_id, profile_id)`` —
    two integers; the subject ids of the 1-in-k heat-map sample (:func:`sample_step`) and of
    the requested page (``listing``) are listed too. The profiles of the (few hundred) groups
    are then read and split into per-value counts here; a subject has one profile, so
    per-value sums count distinct subjects.

    With a ``costly_filter`` (per-muscle conditions, a two-sided age range) the matching rows
    are a CTE evaluated once and everything comes from one statement; otherwise re-scanning
    the narrow table per part is cheaper than materialising it (measured: 30 vs 65 ms for
    100 000 rows), so the groups come first and the sample and page from a second statement.
    """
    columns = (S.subject_id, S.project_id, S.profile_id, S.pseudonym)
    rows: list[Any] = []
    if costly_filter:
        matching = select(*columns).where(*clauses).cte("matching")
        branches: list[Any] = [_groups(matching)]
        if with_facets:
            n = select(func.count()).select_from(matching).scalar_subquery()
            # n ≥ 1 whenever a row is filtered here, so k ≥ 1 (equal to sample_step(n))
            branches.append(_sample(matching, (n + (SAMPLE_MAX - 1)) // SAMPLE_MAX))
        if listing is not None and listing.projects:
            branches.append(_page(matching, listing))
        # typed as Any: mypy 2.4 crashes inferring SQLAlchemy's execute overloads for this union
        statement: Any = union_all(*branches) if len(branches) > 1 else branches[0]
        rows = list(session.execute(statement))
    else:
        source = select(*columns).where(*clauses).subquery("matching")
        rows = list(session.execute(_groups(source)))
        total = sum(int(r[3]) for r in rows)
        more: list[Any] = []
        if with_facets and total:
            more.append(_sample(source, sample_step(total)))
        if listing is not None and listing.projects and total:
            more.append(_page(source, listing))
        if more:
            extra: Any = union_all(*more) if len(more) > 1 else more[0]  # see above (mypy)
            rows += list(session.execute(extra))
    per_project: dict[int, int] = defaultdict(int)
    per_profile: dict[int, int] = defaultdict(int)
    sample_ids: list[int] = []
    listed: list[tuple[int, int]] = []  # (position in the listing order, subject id)
    for kind, project_id, profile_id, count, sid in rows:
        if kind == 0:
            per_project[project_id] += int(count)
            per_profile[profile_id] += int(count)
        elif kind == 1:
            sample_ids.append(int(sid))
        else:
            listed.append((int(count), int(sid)))
    result = Matching(dict(per_project), {}, sorted(sample_ids), 1, [i for _, i in sorted(listed)])
    result.step = sample_step(result.total)
    if not with_facets:
        return result
    counts: dict[str, dict[Any, int]] = {name: defaultdict(int) for name in FACET_COLUMNS}
    ids = sorted(per_profile)
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for row in session.execute(select(P.id, *FACET_COLUMNS.values()).where(P.id.in_(chunk))):
            n_profile = per_profile[row[0]]
            for name, raw in zip(FACET_COLUMNS, row[1:], strict=True):
                if name in _MULTI:
                    values = search_index.decode_set(raw)
                elif name == "muscle":
                    values = search_index.muscles_of(int(raw or 0))
                elif raw in (None, "") or (name == "visits" and raw == 0):
                    values = []
                else:
                    values = [raw]
                for value in values:
                    counts[name][value] += n_profile
    result.counts = {name: dict(found) for name, found in counts.items()}
    return result


def show_facets(
    counts: Mapping[str, Mapping[Any, int]], exact: bool
) -> dict[str, list[dict[str, Any]]]:
    return {
        name: [
            {"value": _facet_value(name, raw), "count": show_count(n, exact), "approximate": False}
            for raw, n in sorted(found.items(), key=lambda item: item[0])
        ]
        for name, found in counts.items()
    }


def heatmap(session: Session, matching: Matching, exact: bool) -> list[dict[str, Any]]:
    """Median FF (%) per muscle and side over every visit of the matching subjects.

    One entry per (muscle, side) in :data:`MUSCLES` order with ``median_ff`` (None when hidden
    or absent), ``n`` (shown count of contributing subjects) and ``approximate``. Above
    :data:`SAMPLE_MAX` matching subjects the medians use the deterministic 1-in-k sample of
    subject ids (``id % k == 0``, listed by :func:`facet_counts`) and ``n`` is scaled by k.
    Medians are hidden when fewer than 5 subjects contribute (unless exact) and rounded to
    1 % when not exact.
    """
    step, ids = matching.step, matching.sample_ids
    # Two steps: with the (sampled) ids known, the planner probes search_visit_ff by
    # subject_id instead of guessing a join order; one row per visit carries all 22 values.
    cells: dict[tuple[str, str], tuple[float, int]] = {}
    keys = [(m, side) for m in MUSCLES for side in ("R", "L")]
    columns = [search_visit_ff.c[ff_column(m, side)] for m, side in keys]
    if session.get_bind().dialect.name == "postgresql":
        sid = search_visit_ff.c.subject_id
        in_sample = sid == any_(bindparam("heat_ids", ids, type_=ARRAY(Integer)))
        stmt = select(
            *(func.percentile_cont(0.5).within_group(c) for c in columns),
            *(func.count(c) for c in columns),
            func.count(),
            func.count(func.distinct(sid)),
        ).where(in_sample)
        row = session.execute(stmt).one()
        width = len(keys)
        if row[2 * width] != row[2 * width + 1]:
            # some subjects have several visits: count distinct subjects per cell
            per_cell: Sequence[Any] = session.execute(
                select(
                    *(func.count(func.distinct(sid)).filter(c.is_not(None)) for c in columns)
                ).where(in_sample)
            ).one()
        else:  # one row per subject: the non-null count is the subject count
            per_cell = row[width : 2 * width]
        for i, key in enumerate(keys):
            if row[i] is not None:
                cells[key] = (float(row[i]), int(per_cell[i]))
    else:
        values: dict[tuple[str, str], list[float]] = defaultdict(list)
        subjects: dict[tuple[str, str], set[int]] = defaultdict(set)
        for start in range(0, len(ids), 500):
            stmt = select(search_visit_ff.c.subject_id, *columns).where(
                search_visit_ff.c.subject_id.in_(ids[start : start + 500])
            )
            for sid_value, *ffs in session.execute(stmt):
                for key, value in zip(keys, ffs, strict=True):
                    if value is not None:
                        values[key].append(value)
                        subjects[key].add(sid_value)
        for key, vals in values.items():
            cells[key] = (float(statistics.median(vals)), len(subjects[key]))
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
    return out


# --- keyset pagination -----------------------------------------------------------------------


def encode_cursor(slug: str, pseudonym: str) -> str:
    raw = json.dumps([slug, pseudonym], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_cursor(params: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ``after`` parameter: the (project slug, pseudonym) of the last row already shown."""
    raw = params.get("after")
    if isinstance(raw, list | tuple):
        if len(raw) > 1:
            raise ValidationError("after: give one value")
        raw = raw[0] if raw else None
    if raw in (None, ""):
        return None
    try:
        value = json.loads(base64.urlsafe_b64decode(str(raw) + "=" * (-len(str(raw)) % 4)))
    except (ValueError, TypeError):
        raise ValidationError("after: not a cursor from a previous page") from None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value)
    ):
        raise ValidationError("after: not a cursor from a previous page")
    return value[0], value[1]


# --- the search ------------------------------------------------------------------------------


def search(
    session: Session,
    actor: Actor,
    query: CohortQuery,
    *,
    page: int = 1,
    per_page: int = 25,
    after: tuple[str, str] | None = None,
    with_facets: bool = True,
) -> SearchResult:
    """Run ``query`` for ``actor`` with disclosure control (see the module docstring).

    Subjects are listed by (project slug, pseudonym): ``after`` (a cursor, see
    :func:`parse_cursor`) continues after a row by keyset; otherwise ``page`` uses an offset.
    """
    search_index.sync(session)
    if session.get_bind().dialect.name == "postgresql":
        # JIT compilation costs 0.3–1 s per query here and saves nothing on these plans;
        # the heat map sorts up to ~100 000 values, which should not spill to disk.
        session.execute(text("SET LOCAL jit = off"))
        session.execute(text("SET LOCAL work_mem = '32MB'"))
    privileged = data_projects(session, actor)
    visible = session.execute(
        select(Project.id, Project.slug, Project.title, Project.description)
        .where(*project_scope(session, actor, query))
        .order_by(Project.title)
    ).all()
    scope = [row[0] for row in visible]
    clauses = subject_clauses(session, actor, query, scope=scope)
    mine = [pid for pid in scope if pid in privileged]
    listing = Listing(mine, per_page + 1, (page - 1) * per_page, after) if mine else None
    costly = bool(query.mc) or (query.age_min is not None and query.age_max is not None)
    matching = facet_counts(
        session, clauses, with_facets=with_facets, listing=listing, costly_filter=costly
    )
    per_project = matching.per_project
    # Exact only if every project in scope is one whose data the actor may see; an empty
    # scope is not exact (0 must look like 1–4).
    exact = bool(scope) and set(scope) <= privileged
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
        result.facets = show_facets(matching.counts, exact)
        result.heatmap = heatmap(session, matching, exact)
    # Individual-level rows only from projects the actor may see data of.
    n_rows = sum(per_project.get(pid, 0) for pid in mine)
    if mine and n_rows:
        result.pages = max(1, math.ceil(n_rows / per_page))
        found = {
            row[0]: row[1:]
            for row in session.execute(
                select(S.subject_id, Project.slug, S.pseudonym, P.sex, P.disease, P.n_visits)
                .join(Project, Project.id == S.project_id)
                .join(P, P.id == S.profile_id)
                .where(S.subject_id.in_(matching.listed_ids))
            )
        }
        rows = [found[sid] for sid in matching.listed_ids]  # in the database's order
        if len(rows) > per_page:
            rows = rows[:per_page]
            result.next_cursor = encode_cursor(rows[-1][0], rows[-1][1])
        result.subjects = [
            {"project": slug, "pseudonym": pseudo, "sex": sex, "disease": disease, "visits": nv}
            for slug, pseudo, sex, disease, nv in rows
        ]
    return result
