"""The in-browser viewer: who may see which visit, what it holds, and its objects as streams.

Access follows the download policy (``project.view_data``): project owners and site
investigators see every subject; a grantee sees only the subjects their active grant still
covers (cohort ∩ consent for the grant's intended use, :func:`downloads.included_subjects`),
and only the data kinds the grant lists (``images`` → series and thumbnails, ``maps`` → maps
and label images, ``metrics`` → the per-muscle table). Every object request is checked again
and audited; nothing here trusts an id without walking it back to the visit in the URL.

Also: :func:`render_thumbnail` (a mid-slice PNG with the label overlay, written by the segment
stage) and :data:`LABEL_PALETTE` (the same colours in the thumbnails and in the browser).
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from repository.errors import Forbidden, MyoVaultError, NotFound, ValidationError
from repository.models import (
    Derivative,
    Grant,
    MuscleMetric,
    Project,
    Series,
    StoredObject,
    Subject,
    Visit,
)
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit
from repository.services.context import Actor

#: map kind → (display name, unit, NiiVue colour map, display range (low, high) or None = auto)
MAP_STYLES: dict[str, tuple[str, str, str, tuple[float, float] | None]] = {
    "FF": ("Fat fraction", "%", "hot", (0.0, 100.0)),
    "T2": ("Water T2", "ms", "viridis", (20.0, 80.0)),
    "B1": ("Relative B1", "ratio", "cool", (0.5, 1.5)),
    "B0": ("Off-resonance B0", "Hz", "bluegrn", None),
    "R2STAR": ("R2*", "1/s", "plasma", None),
    "T2STAR": ("T2*", "ms", "plasma", None),
    "WATER": ("Water signal", "a.u.", "gray", None),
    "FAT": ("Fat signal", "a.u.", "gray", None),
    "RESIDUAL": ("Fit residual", "ratio", "inferno", (0.0, 0.2)),
}
LABEL_KINDS = ("LABELS",)
THUMBNAIL_KIND = "THUMBNAIL"
METRICS_KIND = "METRICS_TSV"
#: metrics shown in the table: search-vocabulary name → (column title, unit)
TABLE_METRICS = {
    "volume_ml": ("Volume", "ml"),
    "ff_mean": ("FF", "%"),
    "t2w_mean": ("Water T2", "ms"),
    "max_csa_cm2": ("Max CSA", "cm²"),
}
DATA_KINDS = frozenset({"images", "maps", "metrics"})
RECORD_ATTEMPTS = 10


def _palette() -> dict[int, tuple[int, int, int]]:
    """One distinct colour per muscle (1..11); the left side (12..22) is a lighter shade."""
    base = [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
        (210, 245, 60),
        (250, 190, 212),
        (0, 128, 128),
    ]
    colours = {i + 1: c for i, c in enumerate(base)}
    colours |= {
        i + 12: tuple(int(v + (255 - v) * 0.35) for v in c)  # type: ignore[misc]
        for i, c in enumerate(base)
    }
    return colours


LABEL_PALETTE: dict[int, tuple[int, int, int]] = _palette()


def label_names() -> dict[int, str]:
    """``{label: "right biceps femoris long head", ...}`` (the shipped thigh vocabulary)."""
    from qmri.segmentation.labels import label_names as names

    return {k: v.replace("_", " ") for k, v in names().items()}


# --- access ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class VisitScope:
    """A visit the actor may look at, and which kinds of its data."""

    project: Project
    subject: Subject
    visit: Visit
    kinds: frozenset[str]

    def require(self, kind: str) -> None:
        if kind not in self.kinds:
            raise Forbidden(f"your access to this project does not include {kind}")


def _grant_coverage(
    session: Session, actor: Actor, project: Project, only: int | None = None
) -> dict[int, set[str]]:
    """Subject id → data kinds, over the actor's active grants on ``project`` (each grant's
    cohort ∩ consent for its intended use, as for downloads); ``only`` limits to one subject."""
    from repository.services.downloads import included_subjects

    assert actor.user is not None  # noqa: S101
    grants = session.scalars(
        select(Grant).where(
            Grant.user_id == actor.user.id,
            Grant.project_id == project.id,
            Grant.revoked_at.is_(None),
            Grant.expires_at > utcnow(),
            Grant.conditions_accepted_at.is_not(None),
        )
    ).all()
    coverage: dict[int, set[str]] = {}
    for grant in grants:
        try:
            covered = included_subjects(session, grant, only)
        except ValidationError:  # a grant without a recorded intended use covers nothing
            continue
        kinds = {k for k in grant.data_level.split(",") if k in DATA_KINDS}
        for subject in covered:
            coverage.setdefault(subject.id, set()).update(kinds)
    return coverage


def _member(session: Session, actor: Actor, project: Project) -> bool:
    needs = policy.satisfied_needs(session, actor, project)
    return bool(needs & {policy.Need.OWNER, policy.Need.INVESTIGATOR})


def get_project(session: Session, actor: Actor, slug: str) -> Project:
    """The project, if the actor may view data in it (404 when hidden, 403 otherwise)."""
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound("no such project")
    policy.require(session, actor, "project.view_data", project)
    return project


def subject_kinds(session: Session, actor: Actor, project: Project, subject: Subject) -> set[str]:
    if _member(session, actor, project):
        return set(DATA_KINDS)
    return _grant_coverage(session, actor, project, subject.id).get(subject.id, set())


def get_subject(
    session: Session, actor: Actor, slug: str, pseudonym: str
) -> tuple[Subject, set[str]]:
    """A subject the actor may see, with the data kinds; other subjects look absent (404)."""
    project = get_project(session, actor, slug)
    subject = session.scalar(
        select(Subject).where(Subject.project_id == project.id, Subject.pseudonym == pseudonym)
    )
    if subject is None or subject.erased_at is not None:
        raise NotFound("no such subject")
    kinds = subject_kinds(session, actor, project, subject)
    if not kinds:
        raise NotFound("no such subject")
    return subject, kinds


def get_visit(session: Session, actor: Actor, slug: str, pseudonym: str, label: str) -> VisitScope:
    subject, kinds = get_subject(session, actor, slug, pseudonym)
    visit = session.scalar(
        select(Visit).where(Visit.subject_id == subject.id, Visit.label == label)
    )
    if visit is None:
        raise NotFound("no such visit")
    project = session.get(Project, subject.project_id)
    assert project is not None  # noqa: S101
    return VisitScope(project, subject, visit, frozenset(kinds))


def list_subjects(session: Session, actor: Actor, slug: str) -> tuple[Project, list[Subject]]:
    """The subjects of a project the actor may open in the viewer."""
    project = get_project(session, actor, slug)
    subjects = session.scalars(
        select(Subject)
        .where(Subject.project_id == project.id, Subject.erased_at.is_(None))
        .order_by(Subject.pseudonym)
    ).all()
    if _member(session, actor, project):
        return project, list(subjects)
    coverage = _grant_coverage(session, actor, project)
    return project, [s for s in subjects if coverage.get(s.id)]


def quick_looks(
    session: Session, actor: Actor, rows: list[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """For (project slug, pseudonym) rows: the first visit with a thumbnail, where the actor may
    see that subject's images (search results link and show it; the others get nothing)."""
    looks: dict[tuple[str, str], str] = {}
    for slug, pseudonym in rows:
        try:
            subject, kinds = get_subject(session, actor, slug, pseudonym)
        except MyoVaultError:
            continue
        if "images" not in kinds:
            continue
        label = session.scalar(
            select(Visit.label)
            .join(Derivative, Derivative.visit_id == Visit.id)
            .where(Visit.subject_id == subject.id, Derivative.kind == THUMBNAIL_KIND)
            .order_by(Visit.label)
            .limit(1)
        )
        if label is not None:
            looks[(slug, pseudonym)] = label
    return looks


# --- what a visit holds ------------------------------------------------------------------------


@dataclass(frozen=True)
class SeriesItem:
    id: int
    contrast: str
    name: str


@dataclass(frozen=True)
class MapItem:
    id: int
    kind: str
    name: str
    unit: str
    colormap: str
    cal_range: tuple[float, float] | None
    series_id: int | None
    desc: str


@dataclass(frozen=True)
class LabelsItem:
    id: int
    series_id: int | None
    series_contrast: str
    version: int
    model_version: str
    created_at: str
    qc_flags: list[dict[str, Any]]


@dataclass
class VisitContents:
    series: list[SeriesItem] = field(default_factory=list)
    maps: list[MapItem] = field(default_factory=list)
    labels: list[LabelsItem] = field(default_factory=list)
    thumbnails: dict[int, int] = field(default_factory=dict)  # series id → thumbnail derivative


def _live(obj: StoredObject | None) -> bool:
    return obj is not None and obj.deleted_at is None


def _desc(key: str) -> str:
    for part in key.rsplit("/", 1)[-1].split("_"):
        if part.startswith("desc-"):
            return part.removeprefix("desc-")
    return ""


def visit_contents(session: Session, scope: VisitScope) -> VisitContents:
    """Series, maps, label images and thumbnails of the visit the scope allows."""
    out = VisitContents()
    contrasts: dict[int, str] = {}
    for series, obj in session.execute(
        select(Series, StoredObject)
        .join(StoredObject, StoredObject.id == Series.object_id)
        .where(Series.visit_id == scope.visit.id)
        .order_by(Series.id)
    ).all():
        contrasts[series.id] = series.contrast
        if not _live(obj) or not obj.key.endswith((".nii.gz", ".nii")):
            continue
        if "images" in scope.kinds:
            out.series.append(
                SeriesItem(series.id, series.contrast, series.contrast.replace("_", " "))
            )
    derivatives = session.execute(
        select(Derivative, StoredObject)
        .join(StoredObject, StoredObject.id == Derivative.object_id)
        .where(Derivative.visit_id == scope.visit.id, StoredObject.deleted_at.is_(None))
        .order_by(Derivative.id)
    ).all()
    for der, obj in derivatives:
        if der.kind in MAP_STYLES and obj.key.endswith(".nii.gz") and "maps" in scope.kinds:
            name, unit, cmap, cal = MAP_STYLES[der.kind]
            desc = _desc(obj.key)
            source = contrasts.get(der.series_id or 0, "")
            label = (
                f"{name} ({unit})"
                + (f" · {desc}" if desc else "")
                + (f" · {source.replace('_', ' ')}" if source else "")
            )
            out.maps.append(MapItem(der.id, der.kind, label, unit, cmap, cal, der.series_id, desc))
        elif der.kind in LABEL_KINDS and scope.kinds & {"maps", "metrics"}:
            out.labels.append(
                LabelsItem(
                    der.id,
                    der.series_id,
                    contrasts.get(der.series_id or 0, ""),
                    der.version,
                    der.model_version,
                    der.created_at.strftime("%Y-%m-%d %H:%M UTC"),
                    list((der.parameters or {}).get("qc_flags", [])),
                )
            )
        elif der.kind == THUMBNAIL_KIND and "images" in scope.kinds and der.series_id:
            out.thumbnails[der.series_id] = der.id  # the latest wins (ordered by id)
    # monoexponential T2 is for comparison only: list the bi-component water T2 first
    out.maps.sort(key=lambda m: (list(MAP_STYLES).index(m.kind), m.desc != "", m.id))
    return out


def current_labels(contents: VisitContents, series_id: int | None = None) -> LabelsItem | None:
    """The newest label version (of ``series_id`` if given, else of the preferred series)."""
    candidates = [x for x in contents.labels if series_id is None or x.series_id == series_id]
    if not candidates:
        return None
    order = {"DIXON_WATER": 0, "MESE": 1}

    def rank(item: LabelsItem) -> tuple[int, int, int]:
        return (order.get(item.series_contrast, 9), -item.version, -item.id)

    best_series = min(candidates, key=rank).series_id
    same = [x for x in candidates if x.series_id == best_series]
    return max(same, key=lambda x: (x.version, x.id))


# --- metrics -----------------------------------------------------------------------------------


@dataclass
class MuscleRow:
    label: int
    muscle: str
    side: str  # "R" or "L"
    name: str
    values: dict[str, float]
    profile: list[float | None]
    flags: list[str]


def _label_of(muscle: str, side: str) -> int:
    from qmri.segmentation.labels import MUSCLE_NAMES, output_label

    if muscle not in MUSCLE_NAMES:
        return 0
    return output_label(MUSCLE_NAMES.index(muscle) + 1, "right" if side == "R" else "left")


def _profiles(
    session: Session, store: Any, labels: Derivative
) -> dict[tuple[str, str], list[float | None]]:
    """FF profiles (proximal → distal) from the metrics TSV written with ``labels``."""
    candidates = session.execute(
        select(Derivative, StoredObject)
        .join(StoredObject, StoredObject.id == Derivative.object_id)
        .where(
            Derivative.visit_id == labels.visit_id,
            Derivative.series_id == labels.series_id,
            Derivative.kind == METRICS_KIND,
            StoredObject.deleted_at.is_(None),
        )
        .order_by(Derivative.id.desc())
    ).all()
    chosen = None
    for der, obj in candidates:
        if (der.parameters or {}).get("labels_derivative_id") == labels.id:
            chosen = obj
            break
    if chosen is None:
        for der, obj in candidates:
            if (
                "labels_derivative_id" not in (der.parameters or {})
                and der.version == labels.version
            ):
                chosen = obj
                break
    if chosen is None:
        return {}
    text = store.read_bytes(chosen.key, expected_sha256=chosen.sha256).decode()
    out: dict[tuple[str, str], list[float | None]] = {}
    for row in csv.DictReader(io.StringIO(text), delimiter="\t"):
        raw = row.get("ff_profile_pct") or ""
        values: list[float | None] = []
        for piece in raw.split(","):
            try:
                value = float(piece)
            except ValueError:
                value = math.nan
            values.append(None if math.isnan(value) else value)
        side = {"right": "R", "left": "L"}.get(row.get("side", ""), "")
        if raw and raw != "n/a":
            out[(row.get("muscle", ""), side)] = values
    return out


def metrics_table(
    session: Session, store: Any, scope: VisitScope, labels_id: int
) -> list[MuscleRow]:
    """Per muscle × side: volume, FF, water T2, max CSA, FF profile and QC flags."""
    scope.require("metrics")
    labels = session.get(Derivative, labels_id)
    if labels is None or labels.visit_id != scope.visit.id or labels.kind not in LABEL_KINDS:
        raise NotFound("no such label image in this visit")
    rows: dict[tuple[str, str], MuscleRow] = {}
    names = label_names()
    for metric in session.scalars(
        select(MuscleMetric).where(
            MuscleMetric.derivative_id == labels.id, MuscleMetric.visit_id == scope.visit.id
        )
    ):
        key = (metric.muscle, metric.side)
        if key not in rows:
            label = _label_of(metric.muscle, metric.side)
            rows[key] = MuscleRow(
                label,
                metric.muscle,
                metric.side,
                names.get(label, f"{metric.muscle} {metric.side}"),
                {},
                [],
                [],
            )
        if metric.metric in TABLE_METRICS:
            rows[key].values[metric.metric] = metric.value
    for (muscle, side), profile in _profiles(session, store, labels).items():
        if (muscle, side) in rows:
            rows[(muscle, side)].profile = profile
    for flag in (labels.parameters or {}).get("qc_flags", []):
        side = {"right": "R", "left": "L"}.get(str(flag.get("side")), "")
        row = rows.get((str(flag.get("muscle")), side))
        if row is not None:
            row.flags.append(str(flag.get("message") or flag.get("code")))
    return sorted(rows.values(), key=lambda r: (r.label or 99, r.side))


def metrics_json(rows: list[MuscleRow]) -> list[dict[str, Any]]:
    return [
        {
            "label": r.label,
            "muscle": r.muscle,
            "side": r.side,
            "name": r.name,
            "values": r.values,
            "profile": r.profile,
            "flags": r.flags,
        }
        for r in rows
    ]


def profile_points(profile: list[float | None], width: int = 120, height: int = 32) -> str:
    """SVG polyline points of an FF profile (0..100 % bottom to top, proximal on the left)."""
    finite = [(i, v) for i, v in enumerate(profile) if v is not None]
    if not finite:
        return ""
    n = max(len(profile) - 1, 1)
    return " ".join(
        f"{i * width / n:.1f},{height - max(0.0, min(v, 100.0)) * height / 100:.1f}"
        for i, v in finite
    )


# --- longitudinal ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChangeRow:
    name: str
    label: int
    ff_a: float | None
    ff_b: float | None

    @property
    def delta(self) -> float | None:
        if self.ff_a is None or self.ff_b is None:
            return None
        return self.ff_b - self.ff_a


def ff_change(
    session: Session,
    a: tuple[VisitScope, LabelsItem | None],
    b: tuple[VisitScope, LabelsItem | None],
) -> list[ChangeRow]:
    """Per muscle × side: mean FF at visit a, at visit b, and b − a (percentage points)."""
    values: list[dict[tuple[str, str], float]] = []
    for scope, labels in (a, b):
        scope.require("metrics")
        found: dict[tuple[str, str], float] = {}
        if labels is not None:
            for m in session.scalars(
                select(MuscleMetric).where(
                    MuscleMetric.derivative_id == labels.id,
                    MuscleMetric.visit_id == scope.visit.id,
                    MuscleMetric.metric == "ff_mean",
                )
            ):
                found[(m.muscle, m.side)] = m.value
        values.append(found)
    names = label_names()
    keys = sorted(set(values[0]) | set(values[1]), key=lambda k: (_label_of(*k) or 99, k))
    return [
        ChangeRow(
            names.get(_label_of(*k), f"{k[0]} {k[1]}"),
            _label_of(*k),
            values[0].get(k),
            values[1].get(k),
        )
        for k in keys
    ]


# --- objects -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObjectStream:
    key: str
    sha256: str
    size: int
    filename: str
    content_type: str
    event: dict[str, Any]  # audit fields (object_type, object_id, project_id, details)


def open_object(
    session: Session, actor: Actor, scope: VisitScope, what: str, object_id: int
) -> ObjectStream:
    """Resolve a series / derivative / thumbnail of this visit and check the grant's kinds.

    ``what`` is ``series``, ``derivative`` or ``thumbnail``. An id from another visit answers
    404, like an id that does not exist.
    """
    if what == "series":
        scope.require("images")
        series = session.get(Series, object_id)
        if series is None or series.visit_id != scope.visit.id or series.object_id is None:
            raise NotFound("no such series in this visit")
        obj = session.get(StoredObject, series.object_id)
        name = f"{series.contrast.lower()}-{series.id}.nii.gz"
        content_type = "application/octet-stream"
    elif what in ("derivative", "thumbnail"):
        der = session.get(Derivative, object_id)
        if der is None or der.visit_id != scope.visit.id:
            raise NotFound("no such derivative in this visit")
        if what == "thumbnail":
            if der.kind != THUMBNAIL_KIND:
                raise NotFound("no such thumbnail in this visit")
            scope.require("images")
            name, content_type = f"thumbnail-{der.id}.png", "image/png"
        else:
            if der.kind not in MAP_STYLES and der.kind not in LABEL_KINDS:
                raise NotFound("no such image in this visit")
            scope.require("maps")
            name, content_type = f"{der.kind.lower()}-{der.id}.nii.gz", "application/octet-stream"
        obj = session.get(StoredObject, der.object_id)
    else:
        raise ValueError(f"unknown object type {what!r}")
    if obj is None or obj.deleted_at is not None:
        raise NotFound("this object is no longer stored")
    return ObjectStream(
        obj.key,
        obj.sha256,
        obj.size,
        name,
        content_type,
        {
            "object_type": what,
            "object_id": object_id,
            "project_id": scope.project.id,
            "details": {
                "visit_id": scope.visit.id,
                "subject_id": scope.subject.id,
                "bytes": obj.size,
            },
        },
    )


def view_event(scope: VisitScope) -> dict[str, Any]:
    """The audit fields of opening a visit's page."""
    return {
        "object_type": "visit",
        "object_id": scope.visit.id,
        "project_id": scope.project.id,
        "details": {"subject_id": scope.subject.id, "kinds": sorted(scope.kinds)},
    }


def record(database: Any, actor: Actor, action: str, event: dict[str, Any]) -> None:
    """Append the audit event in its own short transaction, before anything is sent.

    A viewer page loads several images at once; on SQLite (WAL) a request that read before
    another committed cannot upgrade to a writer (``database is locked`` at once, whatever the
    busy timeout), so the event is written in a fresh transaction and retried briefly.
    """
    for attempt in range(RECORD_ATTEMPTS):
        try:
            with database.transaction() as session:
                audit.record(session, actor, action, **event)
            return
        except OperationalError as exc:
            if "locked" not in str(exc) or attempt == RECORD_ATTEMPTS - 1:
                raise
            time.sleep(0.02 * (attempt + 1))


def stream(store: Any, item: ObjectStream) -> Iterator[bytes]:
    """The verified plaintext (raises eagerly when the object or its key is gone)."""
    return iter(store.open(item.key, expected_sha256=item.sha256))


# --- thumbnails --------------------------------------------------------------------------------


def thumbnail_slice(
    image_xyz: NDArray[Any], labels_xyz: NDArray[Any]
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """The middle axial slice of RAS-oriented (x, y, z) arrays, as displayed (rows, columns).

    Radiological display: the subject's right on the viewer's left, anterior at the top.
    """
    if image_xyz.shape[:3] != labels_xyz.shape[:3]:
        raise ValueError(f"image {image_xyz.shape} and labels {labels_xyz.shape} differ in shape")
    z = image_xyz.shape[2] // 2
    image = np.asarray(image_xyz[:, :, z], dtype=np.float64)
    labels = np.asarray(labels_xyz[:, :, z], dtype=np.int64)
    # (x, y) → (rows = y from anterior down, columns = x from subject's right to left)
    return image.T[::-1, ::-1], labels.T[::-1, ::-1]


def render_thumbnail(
    image_xyz: NDArray[Any],
    labels_xyz: NDArray[Any],
    *,
    size_px: int = 192,
    alpha: float = 0.45,
) -> bytes:
    """PNG bytes: the mid axial slice (1st–99th percentile window) with the labels blended in.

    Parameters
    ----------
    image_xyz
        (x, y, z) image in RAS+ orientation, any units.
    labels_xyz
        (x, y, z) integer labels (0 background, 1..22 muscles × side), same grid.
    size_px
        Length of the longer side of the PNG (nearest-neighbour scaling, integer factor).
    alpha
        Opacity of the label colours.
    """
    from PIL import Image

    image, labels = thumbnail_slice(image_xyz, labels_xyz)
    finite = image[np.isfinite(image)]
    low, high = np.percentile(finite, [1, 99]) if finite.size else (0.0, 1.0)
    scale = float(high - low) or 1.0
    grey = np.clip((np.nan_to_num(image, nan=low) - low) / scale, 0.0, 1.0) * 255.0
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for label, colour in LABEL_PALETTE.items():
        mask = labels == label
        if mask.any():
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(colour, dtype=np.float64)
    factor = max(1, size_px // max(rgb.shape[:2]))
    rgb = np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)
    buffer = io.BytesIO()
    Image.fromarray(rgb.round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
