"""Label correction: new label versions, their history and diffs, metric recompute, fine-tuning.

A segmentation (a LABELS :class:`Derivative` made by ``pipeline.segment``, version 1) can be
corrected by users allowed ``project.edit_labels``. :func:`save_label_version` validates the
uploaded label NIfTI against the current version (same grid, labels from the model's label
set), stores it encrypted as a *new* LABELS derivative (version + 1; older versions are kept),
records what changed per muscle, the :class:`CorrectedCase` for fine-tuning and an audit event,
and queues ``labels.recompute_metrics``. That job recomputes the per-muscle metrics with
:mod:`qmri.metrics` from the new labels and the series' fitted maps, writes the metrics TSV
beside them and replaces the visit/series' :class:`MuscleMetric` rows with rows pointing at the
new version.

The *chain* of a segmentation is every LABELS derivative of one visit and series; its current
version is the highest. A save must name the current version (optimistic concurrency): saving
on top of an older one is a conflict, so nobody silently overwrites a colleague's correction.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from numpy.typing import NDArray
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repository.errors import Conflict, Forbidden, NotFound, ValidationError
from repository.models import (
    CorrectedCase,
    Derivative,
    Job,
    JobStatus,
    MuscleMetric,
    Project,
    Series,
    StoredObject,
    Subject,
    User,
    Visit,
)
from repository.security import policy
from repository.services import audit, jobs
from repository.services.context import SYSTEM, Actor
from repository.services.jobs import JobContext, handler

log = logging.getLogger(__name__)

LABEL_EDITOR = "myovault-label-editor"
RECOMPUTE_JOB = "labels.recompute_metrics"
#: an uploaded label image may hold at most this many voxels (a whole-body 3D scan is ~10^8)
MAX_VOXELS = 256 * 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"
#: grant data kinds that let a grantee see the version history / download a label image
VIEW_KINDS = frozenset({"maps", "metrics"})
IMAGE_KINDS = frozenset({"maps"})

Dispatcher = Callable[[int], None]


# --- pure helpers: parse, validate, diff ------------------------------------------------------


def label_set() -> dict[int, str]:
    """The segmentation models' output labels ``{1: "right_biceps_femoris_long_head", ...}``."""
    from qmri.segmentation.labels import label_names

    return label_names()


def _gunzip_limited(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data``, refusing output larger than ``limit`` bytes (gzip bombs)."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decoder.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValidationError(f"the file is not valid gzip: {exc}") from None
    if len(out) > limit or decoder.unconsumed_tail:
        raise ValidationError("the decompressed label image is larger than the image it corrects")
    return out


def parse_label_nifti(data: bytes, *, max_bytes: int) -> nib.Nifti1Image:
    """A NIfTI-1 image from raw or gzipped bytes (decompressed size at most ``max_bytes``)."""
    if not data:
        raise ValidationError("the label file is empty")
    if data[:2] == GZIP_MAGIC:
        data = _gunzip_limited(data, max_bytes)
    elif len(data) > max_bytes:
        raise ValidationError("the label image is larger than the image it corrects")
    try:
        image = nib.Nifti1Image.from_bytes(data)
    except Exception as exc:  # nibabel raises several types for malformed headers
        raise ValidationError(f"not a NIfTI-1 image: {exc.__class__.__name__}: {exc}") from None
    return image


def validate_labels(
    image: nib.Nifti1Image,
    *,
    shape: tuple[int, ...],
    affine: NDArray[np.float64],
    allowed: set[int],
) -> NDArray[np.uint8]:
    """The label array of ``image`` if it lies on the given grid and holds only allowed labels.

    Parameters
    ----------
    image : Nifti1Image
        The uploaded labels; a trailing singleton 4th dimension is accepted.
    shape : tuple of int
        ``(x, y, z)`` of the version being corrected.
    affine : ndarray, shape (4, 4)
        Voxel → world (mm) of the version being corrected; must match within 1e-3 mm.
    allowed : set of int
        Label values allowed besides 0 (background).

    Returns
    -------
    ndarray of uint8, shape ``shape``
    """
    img_shape = tuple(int(n) for n in image.shape)
    if len(img_shape) == 4 and img_shape[3] == 1:
        img_shape = img_shape[:3]
    if img_shape != tuple(shape):
        raise ValidationError(
            f"the labels have shape {img_shape}, the image they correct {tuple(shape)}"
        )
    if not np.allclose(image.affine, affine, atol=1e-3, rtol=0):
        raise ValidationError("the labels are not on the image's grid (different affine)")
    data = np.asanyarray(image.dataobj).reshape(shape)
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)) or not np.all(data == np.round(data)):
            raise ValidationError("labels must be whole numbers")
    elif not np.issubdtype(data.dtype, np.integer):
        raise ValidationError(f"labels must be integers, got {data.dtype}")
    values = {int(v) for v in np.unique(data)}
    unknown = sorted(values - allowed - {0})
    if unknown:
        raise ValidationError(
            f"unknown label value(s) {unknown[:10]}: the model's labels are 1..{max(allowed)}"
        )
    return data.astype(np.uint8)


def label_diff(
    old: NDArray[np.integer], new: NDArray[np.integer], names: dict[int, str]
) -> tuple[dict[str, dict[str, int]], int]:
    """Voxels changed per label: ``{name: {"added": n, "removed": m}}`` and the total changed.

    ``added`` counts voxels that became the label, ``removed`` voxels that stopped being it;
    labels without change are left out. Background changes are not listed per label.
    """
    changed = old != new
    total = int(changed.sum())
    if not total:
        return {}, 0
    n = max(int(old.max(initial=0)), int(new.max(initial=0)), max(names, default=0)) + 1
    added = np.bincount(new[changed].ravel().astype(np.int64), minlength=n)
    removed = np.bincount(old[changed].ravel().astype(np.int64), minlength=n)
    diff = {
        names.get(k, f"label_{k}"): {"added": int(added[k]), "removed": int(removed[k])}
        for k in range(1, n)
        if added[k] or removed[k]
    }
    return diff, total


def label_image(labels: NDArray[np.uint8], like: nib.Nifti1Image) -> bytes:
    """``labels`` as a gzipped NIfTI with ``like``'s grid, marked as a label image."""
    header = like.header.copy()
    header.set_data_dtype(np.uint8)
    out = nib.Nifti1Image(labels.astype(np.uint8), like.affine, header)
    out.header.set_intent("label")
    out.header["scl_slope"] = 1
    out.header["scl_inter"] = 0
    return gzip.compress(out.to_bytes(), compresslevel=6, mtime=0)


# --- locating a segmentation and its versions -------------------------------------------------


@dataclass(frozen=True)
class Located:
    derivative: Derivative
    obj: StoredObject
    visit: Visit
    subject: Subject
    project: Project


def _locate(
    session: Session,
    actor: Actor,
    derivative_id: int,
    action: str,
    kinds: frozenset[str] = frozenset(),
) -> Located:
    """The LABELS derivative ``derivative_id`` if ``actor`` may ``action`` on its project.

    For viewing (``project.view_data``), a grantee's grant must also cover the subject (grants
    may name a subset) and one of the data ``kinds`` (images, maps, metrics), as in the viewer;
    a subject outside the grant looks absent (404).
    """
    derivative = session.get(Derivative, derivative_id)
    if derivative is None or derivative.kind != "LABELS":
        raise NotFound("no such label image")
    visit = session.get(Visit, derivative.visit_id)
    subject = session.get(Subject, visit.subject_id) if visit is not None else None
    project = session.get(Project, subject.project_id) if subject is not None else None
    if visit is None or subject is None or project is None:
        raise NotFound("no such label image")
    policy.require(session, actor, action, project)
    obj = session.get(StoredObject, derivative.object_id)
    if subject.erased_at is not None or obj is None or obj.deleted_at is not None:
        raise NotFound("no such label image")
    if kinds:
        from repository.services.viewer import subject_kinds

        allowed = subject_kinds(session, actor, project, subject)
        if not allowed:
            raise NotFound("no such label image")
        if not allowed & kinds:
            raise Forbidden(f"your access to this project does not include {' or '.join(kinds)}")
    return Located(derivative, obj, visit, subject, project)


def _chain(session: Session, derivative: Derivative) -> list[Derivative]:
    """Every version of the segmentation ``derivative`` belongs to, oldest first."""
    stmt = select(Derivative).where(
        Derivative.kind == "LABELS", Derivative.visit_id == derivative.visit_id
    )
    if derivative.series_id is None:
        stmt = stmt.where(Derivative.series_id.is_(None))
    else:
        stmt = stmt.where(Derivative.series_id == derivative.series_id)
    return list(session.scalars(stmt.order_by(Derivative.version, Derivative.id)))


def _read_image(store: Any, obj: StoredObject) -> nib.Nifti1Image:
    data = store.read_bytes(obj.key, expected_sha256=obj.sha256)
    if data[:2] == GZIP_MAGIC:
        data = gzip.decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def _new_key(first_key: str, version: int, sha256: str) -> str:
    """``…_dseg.nii.gz`` → ``…_desc-v<version>x<hash>_dseg.nii.gz`` (unique per content)."""
    base = first_key.removesuffix(".nii.gz").removesuffix("_dseg")
    return f"{base}_desc-v{version}x{sha256[:10]}_dseg.nii.gz"


# --- saving a new version ---------------------------------------------------------------------


@dataclass
class SavedVersion:
    derivative: Derivative
    case: CorrectedCase
    job: Any
    diff: dict[str, dict[str, int]] = field(default_factory=dict)
    voxels_changed: int = 0


def save_label_version(
    session: Session,
    actor: Actor,
    labels_derivative_id: int,
    nifti_bytes: bytes,
    *,
    store: Any,
    dispatch: Dispatcher,
    comment: str = "",
) -> SavedVersion:
    """Store corrected labels as the next version of the segmentation ``labels_derivative_id``.

    ``labels_derivative_id`` must be the current version (else :class:`Conflict`). Raises
    :class:`ValidationError` for a file that is not a label image on the same grid, holds labels
    outside the model's label set or changes nothing.
    """
    from repository import __version__

    here = _locate(session, actor, labels_derivative_id, "project.edit_labels")
    previous = here.derivative
    chain = _chain(session, previous)
    current = chain[-1]
    if current.id != previous.id:
        raise Conflict(
            f"version {previous.version} is no longer current (version {current.version} is);"
            " reload and correct the current version"
        )
    prev_img = _read_image(store, here.obj)
    prev_labels = np.asanyarray(prev_img.dataobj).astype(np.uint8)
    shape = tuple(int(n) for n in prev_labels.shape)
    max_bytes = int(np.prod(shape)) * 8 + 352 + (1 << 16)  # float64 + header + extensions
    names = label_set()
    new_labels = validate_labels(
        parse_label_nifti(nifti_bytes, max_bytes=max_bytes),
        shape=shape,
        affine=prev_img.affine,
        allowed=set(names),
    )
    diff, total = label_diff(prev_labels, new_labels, names)
    if not total:
        raise ValidationError("the labels are unchanged: nothing to save")
    payload = label_image(new_labels, prev_img)
    sha = hashlib.sha256(payload).hexdigest()
    version = previous.version + 1
    key = _new_key(session.get(StoredObject, chain[0].object_id).key, version, sha)  # type: ignore[union-attr]
    info = store.put(key, io.BytesIO(payload), subject=here.subject.pseudonym)
    obj = StoredObject(
        key=info.key,
        size=info.size,
        sha256=info.sha256,
        key_id=info.key_id,
        subject_id=here.subject.id,
        kind="derivative",
        content_type="application/gzip",
    )
    session.add(obj)
    session.flush()
    parameters = {
        "previous_version_id": previous.id,
        "diff": diff,
        "voxels_changed": total,
        "source": previous.parameters.get("source", ""),
        "erosion_voxels": int(previous.parameters.get("erosion_voxels", 1)),
        "qc_flags": [],
        "metrics": "pending",
        "corrected": True,
    }
    if comment.strip():
        parameters["comment"] = comment.strip()[:500]
    derivative = Derivative(
        visit_id=previous.visit_id,
        series_id=previous.series_id,
        kind="LABELS",
        object_id=obj.id,
        software=LABEL_EDITOR,
        software_version=__version__,
        model_version=previous.model_version,
        parameters=parameters,
        version=version,
        created_by_id=actor.user_id,
    )
    session.add(derivative)
    session.flush()
    series = session.get(Series, previous.series_id) if previous.series_id is not None else None
    case = CorrectedCase(
        project_id=here.project.id,
        visit_id=previous.visit_id,
        series_id=previous.series_id,
        image_object_id=_image_object_id(session, here.project.id, series),
        labels_derivative_id=derivative.id,
        previous_derivative_id=previous.id,
        version=version,
        previous_version=previous.version,
        base_model_version=chain[0].model_version,
        voxels_changed=total,
        created_by_id=actor.user_id,
    )
    try:
        with session.begin_nested():
            session.add(case)
            session.flush()
    except IntegrityError:  # someone saved a correction of the same version concurrently
        raise Conflict(
            f"version {previous.version} was corrected by someone else meanwhile; reload"
        ) from None
    audit.record(
        session,
        actor,
        "labels.save_version",
        object_type="derivative",
        object_id=derivative.id,
        project_id=here.project.id,
        details={
            "previous_version_id": previous.id,
            "version": version,
            "voxels_changed": total,
            "diff": diff,
            "corrected_case_id": case.id,
        },
    )
    enqueued = jobs.enqueue(
        session,
        actor,
        dispatch,
        kind=RECOMPUTE_JOB,
        payload={"labels_derivative_id": derivative.id},
        key=f"{RECOMPUTE_JOB}:{derivative.id}",
        project_id=here.project.id,
    )
    return SavedVersion(derivative, case, enqueued.job, diff, total)


def _image_object_id(session: Session, project_id: int, series: Series | None) -> int | None:
    if series is None:
        return None
    if series.object_id is not None:
        return series.object_id
    return session.scalar(
        select(StoredObject.id).where(
            StoredObject.key == f"mids/p{project_id}/{series.mids_path}.nii.gz"
        )
    )


# --- history, diff and download ---------------------------------------------------------------


@dataclass(frozen=True)
class VersionInfo:
    id: int
    version: int
    created_at: Any
    created_by: str
    software: str
    model_version: str
    previous_version_id: int | None
    voxels_changed: int
    diff: dict[str, dict[str, int]]
    metrics: str
    is_current: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "version": self.version,
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "created_by": self.created_by,
            "software": self.software,
            "model_version": self.model_version,
            "previous_version_id": self.previous_version_id,
            "voxels_changed": self.voxels_changed,
            "diff": self.diff,
            "metrics": self.metrics,
            "is_current": self.is_current,
        }


@dataclass(frozen=True)
class LabelHistory:
    project: Project
    subject: Subject
    visit: Visit
    series: Series | None
    versions: list[VersionInfo]

    @property
    def current(self) -> VersionInfo:
        return self.versions[-1]


def history(session: Session, actor: Actor, labels_derivative_id: int) -> LabelHistory:
    """Every version of the segmentation, oldest first, with who made it and what changed."""
    here = _locate(session, actor, labels_derivative_id, "project.view_data", VIEW_KINDS)
    chain = _chain(session, here.derivative)
    users = {
        u.id: u
        for u in session.scalars(
            select(User).where(User.id.in_({d.created_by_id for d in chain if d.created_by_id}))
        )
    }
    failed = set(
        session.scalars(
            select(Job.key).where(
                Job.key.in_([f"{RECOMPUTE_JOB}:{d.id}" for d in chain]),
                Job.status == JobStatus.FAILED,
            )
        )
    )
    versions = []
    for d in chain:
        author = users.get(d.created_by_id) if d.created_by_id else None
        metrics = str(d.parameters.get("metrics", "done"))
        if metrics == "pending" and f"{RECOMPUTE_JOB}:{d.id}" in failed:
            metrics = "failed"
        versions.append(
            VersionInfo(
                id=d.id,
                version=d.version,
                created_at=d.created_at,
                created_by=(author.name or author.email) if author else "pipeline",
                software=d.software,
                model_version=d.model_version,
                previous_version_id=d.parameters.get("previous_version_id"),
                voxels_changed=int(d.parameters.get("voxels_changed", 0)),
                diff=dict(d.parameters.get("diff", {})),
                metrics=metrics,
                is_current=d.id == chain[-1].id,
            )
        )
    series = session.get(Series, here.derivative.series_id) if here.derivative.series_id else None
    return LabelHistory(here.project, here.subject, here.visit, series, versions)


def open_version(
    session: Session, actor: Actor, labels_derivative_id: int, *, store: Any
) -> tuple[Iterator[bytes], int, str]:
    """Stream one version's label NIfTI (decrypted, verified), audited as a view."""
    here = _locate(session, actor, labels_derivative_id, "project.view_data", IMAGE_KINDS)
    stream = store.open(here.obj.key, expected_sha256=here.obj.sha256)
    audit.record(
        session,
        actor,
        "labels.view",
        object_type="derivative",
        object_id=here.derivative.id,
        project_id=here.project.id,
        details={"version": here.derivative.version},
    )
    return stream, here.obj.size, f"labels-v{here.derivative.version}.nii.gz"


# --- the recompute job ------------------------------------------------------------------------


def _corrected_thumbnail(
    store: Any,
    image_key: str | None,
    label_img: nib.Nifti1Image,
    label_key: str,
    pseudonym: str,
    where: Path,
) -> Any:
    """Store the series' thumbnail redrawn with a corrected label version (None without image)."""
    from repository.services.pipeline_segment import _thumbnail

    if image_key is None or not store.exists(image_key):
        return None
    image_path = where / "image.nii.gz"
    store.copy_to_file(image_key, image_path)
    png = _thumbnail(image_path, label_img)
    key = label_key.removesuffix(".nii.gz") + "_thumbnail.png"
    return store.put(key, io.BytesIO(png), subject=pseudonym)


def _record_output(
    session: Session,
    labels: Derivative,
    info: Any,
    *,
    subject_id: int,
    kind: str,
    content_type: str,
    parameters: dict[str, Any],
) -> None:
    """Record a stored file made from a label version (object row + derivative, idempotent)."""
    obj = session.scalar(select(StoredObject).where(StoredObject.key == info.key)) or StoredObject(
        key=info.key, kind="derivative", content_type=content_type
    )
    obj.size, obj.sha256, obj.key_id, obj.subject_id = (
        info.size,
        info.sha256,
        info.key_id,
        subject_id,
    )
    session.add(obj)
    session.flush()
    if session.scalar(select(Derivative.id).where(Derivative.object_id == obj.id)) is None:
        session.add(
            Derivative(
                visit_id=labels.visit_id,
                series_id=labels.series_id,
                kind=kind,
                object_id=obj.id,
                software=LABEL_EDITOR,
                software_version=labels.software_version,
                model_version=labels.model_version,
                parameters=parameters,
                version=labels.version,
                created_by_id=labels.created_by_id,
            )
        )


@handler(RECOMPUTE_JOB)
def recompute_metrics(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Per-muscle metrics of a corrected label version; replaces the series' metric rows."""
    from qmri.metrics import compute_muscle_metrics, qc_flags, to_long_records, write_metrics_tsv
    from repository.services.pipeline_segment import _load_map, _map_keys, _pick_map, metric_rows

    derivative_id = int(payload["labels_derivative_id"])
    store = ctx.services["store"]
    with ctx.db.transaction() as session:
        derivative = session.get(Derivative, derivative_id)
        if derivative is None or derivative.kind != "LABELS":
            raise NotFound(f"label derivative {derivative_id} does not exist")
        chain = _chain(session, derivative)
        if chain[-1].id != derivative.id:
            return {"skipped": f"superseded by version {chain[-1].version}"}
        visit = session.get(Visit, derivative.visit_id)
        subject = session.get(Subject, visit.subject_id) if visit else None
        obj = session.get(StoredObject, derivative.object_id)
        if visit is None or subject is None or obj is None:
            raise NotFound("the label version's visit or object is gone")
        if subject.erased_at is not None or obj.deleted_at is not None:
            return {"skipped": "the subject was erased"}
        keys = _map_keys(session, derivative.series_id) if derivative.series_id else []
        label_key, label_sha = obj.key, obj.sha256
        subject_id, pseudonym, project_id = subject.id, subject.pseudonym, subject.project_id
        visit_id, series_id, version = visit.id, derivative.series_id, derivative.version
        erosion = int(derivative.parameters.get("erosion_voxels", 1))
        chain_ids = [d.id for d in chain]
        tag = f"{derivative.model_version}+corrected.v{version}"[:100]
        series = session.get(Series, series_id) if series_id else None
        image_key = f"mids/p{project_id}/{series.mids_path}.nii.gz" if series else None
    ctx.progress(0.1, "reading labels and maps")
    with tempfile.TemporaryDirectory(prefix="myovault-labels-") as tmp:
        where = Path(tmp)
        label_path = where / "labels.nii.gz"
        store.copy_to_file(label_key, label_path, expected_sha256=label_sha)
        label_img = cast(nib.Nifti1Image, nib.load(str(label_path)))
        # NIfTI data load in Fortran order; qmri.metrics is ~2.7x faster on C-ordered arrays
        labels = np.ascontiguousarray(np.asanyarray(label_img.dataobj), dtype=np.uint8)
        ff, t2 = (
            None if m is None else np.ascontiguousarray(m)
            for m in (
                _load_map(store, _pick_map(keys, "ff"), where),
                _load_map(store, _pick_map(keys, "t2"), where),
            )
        )
        for name, m in (("FF", ff), ("T2", t2)):
            if m is not None and m.shape != labels.shape:
                raise ValueError(f"{name} map shape {m.shape} differs from labels {labels.shape}")
        rows = compute_muscle_metrics(
            labels,
            tuple(float(z) for z in label_img.header.get_zooms()[:3]),
            ff_percent=ff,
            t2_water_ms=t2,
            erosion_voxels=erosion,
            proximal_is_high_index=nib.aff2axcodes(label_img.affine)[2] == "S",
            model_version=tag,
        )
        flags = [f.__dict__ for f in qc_flags(rows)]
        tsv = write_metrics_tsv(rows, where / "metrics.tsv")
        tsv_key = label_key.removesuffix(".nii.gz") + "_metrics.tsv"
        with open(tsv, "rb") as fh:
            tsv_info = store.put(tsv_key, fh, subject=pseudonym)
        thumb_info = _corrected_thumbnail(store, image_key, label_img, label_key, pseudonym, where)
    ctx.progress(0.8, "storing metrics")
    values = metric_rows(to_long_records(rows))
    with ctx.db.transaction() as session:
        derivative = session.get(Derivative, derivative_id)
        assert derivative is not None  # noqa: S101
        made_from = {"labels_derivative_id": derivative_id}
        outputs = [
            (tsv_info, "METRICS_TSV", "text/tab-separated-values", {"erosion_voxels": erosion}),
            (thumb_info, "THUMBNAIL", "image/png", {}),  # the quick look shows the correction
        ]
        for info, kind, content_type, extra in outputs:
            if info is None:
                continue
            _record_output(
                session,
                derivative,
                info,
                subject_id=subject_id,
                kind=kind,
                content_type=content_type,
                parameters=made_from | extra,
            )
        derivative.parameters = {**derivative.parameters, "qc_flags": flags, "metrics": "done"}
        removed = session.execute(
            delete(MuscleMetric)
            .where(MuscleMetric.visit_id == visit_id, MuscleMetric.derivative_id.in_(chain_ids))
            .execution_options(synchronize_session=False)
        )
        session.add_all(
            MuscleMetric(
                subject_id=subject_id,
                visit_id=visit_id,
                derivative_id=derivative_id,
                muscle=muscle,
                side=side,
                metric=metric,
                value=value,
                unit=unit,
                model_version=tag,
            )
            for muscle, side, metric, value, unit in values
        )
        audit.record(
            session,
            SYSTEM,
            RECOMPUTE_JOB,
            object_type="derivative",
            object_id=derivative_id,
            project_id=project_id,
            details={
                "metrics": len(values),
                "replaced": int(getattr(removed, "rowcount", 0) or 0),
                "qc_flags": len(flags),
            },
        )
    return {"metrics": len(values), "qc_flags": len(flags), "labels_derivative_id": derivative_id}


# --- fine-tuning collection -------------------------------------------------------------------


def corrected_cases(
    session: Session, *, project_slug: str | None = None, latest_only: bool = True
) -> list[CorrectedCase]:
    """Corrected cases usable for training: subject not erased and consent current.

    With ``latest_only`` only the newest correction of each segmentation is returned (older
    ones were themselves corrected again).
    """
    from repository.services.consent_filters import shareable_subject_clause

    stmt = (
        select(CorrectedCase)
        .join(Visit, Visit.id == CorrectedCase.visit_id)
        .join(Subject, Subject.id == Visit.subject_id)
        .where(shareable_subject_clause())
        .order_by(CorrectedCase.id)
    )
    if project_slug is not None:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        if project is None:
            raise NotFound(f"no project {project_slug!r}")
        stmt = stmt.where(CorrectedCase.project_id == project.id)
    cases = list(session.scalars(stmt))
    if latest_only:
        superseded = set(session.scalars(select(CorrectedCase.previous_derivative_id)))
        cases = [c for c in cases if c.labels_derivative_id not in superseded]
    return cases


def export_corrections(
    session: Session, store: Any, out_dir: Path, *, project_slug: str | None = None
) -> list[dict[str, Any]]:
    """Write each corrected case as ``case-<id>/{image,labels}.nii.gz`` + ``provenance.json``.

    The image is the series' first volume (the one the model segmented and the user corrected);
    ``manifest.json`` lists every case. This is the layout ``myovault train-segmentation
    --corrections-dir`` reads. Returns the provenance records written.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for case in corrected_cases(session, project_slug=project_slug):
        labels_d = session.get(Derivative, case.labels_derivative_id)
        labels_obj = session.get(StoredObject, labels_d.object_id) if labels_d else None
        image_obj = (
            session.get(StoredObject, case.image_object_id) if case.image_object_id else None
        )
        if labels_d is None or labels_obj is None or image_obj is None:
            log.warning("corrected case %s lacks its image or labels; skipped", case.id)
            continue
        if labels_obj.deleted_at is not None or image_obj.deleted_at is not None:
            continue
        series = session.get(Series, case.series_id) if case.series_id else None
        project = session.get(Project, case.project_id)
        folder = out_dir / f"case-{case.id:05d}"
        folder.mkdir(exist_ok=True)
        image = _read_image(store, image_obj)
        data = np.asanyarray(image.dataobj)
        if data.ndim == 4:
            data = data[..., 0]
        header = image.header.copy()
        header.set_data_shape(data.shape)
        nib.save(nib.Nifti1Image(data, image.affine, header), str(folder / "image.nii.gz"))
        (folder / "labels.nii.gz").write_bytes(
            store.read_bytes(labels_obj.key, expected_sha256=labels_obj.sha256)
        )
        record = {
            "case_id": case.id,
            "project": project.slug if project else None,
            "series_contrast": series.contrast if series else None,
            "image_object_sha256": image_obj.sha256,
            "labels_derivative_id": case.labels_derivative_id,
            "labels_version": case.version,
            "previous_derivative_id": case.previous_derivative_id,
            "previous_version": case.previous_version,
            "base_model_version": case.base_model_version,
            "voxels_changed": case.voxels_changed,
            "corrected_by_user_id": case.created_by_id,
            "corrected_at": case.created_at.isoformat(),
            "labels": {str(k): v for k, v in label_set().items()},
            "image_volume_index": 0,
        }
        (folder / "provenance.json").write_text(json.dumps(record, indent=2) + "\n", "utf-8")
        written.append(record | {"folder": folder.name})
    (out_dir / "manifest.json").write_text(
        json.dumps({"format": "myovault-corrections/1", "cases": written}, indent=2) + "\n",
        "utf-8",
    )
    return written
