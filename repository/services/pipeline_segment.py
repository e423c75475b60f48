"""Pipeline stage ``pipeline.segment``: muscle labels and per-muscle metrics for fitted series.

For every series the fit stage mapped (MESE → water T2 + FF, vendor Dixon → FF, complex MEGRE
→ FF + R2*), the shipped
thigh model (``qmri.segmentation``, default of the registry) labels the series' first volume;
``qmri.metrics`` turns labels + maps into per-muscle numbers (after a one-voxel erosion). The
label image, its sidecar (labels, model version, confidence, QC flags) and the metrics TSV are
stored beside the maps (``mr-quant``) and recorded as :class:`Derivative` rows; the scalar
metrics become indexed :class:`MuscleMetric` rows for search. A PNG thumbnail (mid axial slice
with the label overlay, :func:`repository.services.viewer.render_thumbnail`) is stored the same
way (kind ``THUMBNAIL``) for quick looks. The metrics TSV and thumbnail record the id of the
label image they were made from (``parameters["labels_derivative_id"]``). Re-running replaces
everything.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from sqlalchemy import delete, select

from repository.models import Derivative, MuscleMetric, Series, StoredObject, Subject, Visit
from repository.models.uploads import UploadFile
from repository.services import audit
from repository.services.context import SYSTEM
from repository.services.jobs import JobContext, handler

log = logging.getLogger(__name__)

SEGMENTER = "myovault-qmri-segmentation"
#: series that carry fitted maps (a complex MEGRE's maps are attached to its magnitude series)
SEGMENTED_CONTRASTS = ("MESE", "DIXON_WATER", "MEGRE")
THUMBNAIL = "THUMBNAIL"
#: qmri.metrics names → the search vocabulary (repository.services.search.METRICS)
SEARCH_METRIC_NAMES = {
    "ff_mean_pct": ("ff_mean", "%"),
    "t2_water_mean_ms": ("t2w_mean", "ms"),
    "volume_ml": ("volume_ml", "ml"),
}
SIDE_CODES = {"right": "R", "left": "L"}
# which fitted map feeds which metric, by object-key suffix (see qmri.run output names)
MAP_SUFFIXES = {"ff": ("_desc-mese_FF.nii.gz", "_FF.nii.gz"), "t2": ("_T2.nii.gz",)}


def _pick_map(keys: list[str], kind: str) -> str | None:
    for suffix in MAP_SUFFIXES[kind]:
        for key in keys:
            if key.endswith(suffix) and "desc-monoexp" not in key:
                return key
    return None


def _map_keys(session: Any, series_id: int) -> list[str]:
    return list(
        session.scalars(
            select(StoredObject.key)
            .join(Derivative, Derivative.object_id == StoredObject.id)
            .where(Derivative.series_id == series_id, Derivative.software != SEGMENTER)
        )
    )


def _load_map(store: Any, key: str | None, where: Path) -> np.ndarray | None:
    if key is None:
        return None
    path = where / Path(key).name
    store.copy_to_file(key, path)
    image = cast(nib.Nifti1Image, nib.load(str(path)))
    data = np.asanyarray(image.dataobj, dtype=np.float64)
    return data[..., 0] if data.ndim == 4 else data


def _thumbnail(image_path: Path, label_img: Any) -> bytes:
    """PNG of the first volume's mid axial slice with the labels, both reoriented to RAS+."""
    from repository.services.viewer import render_thumbnail

    image = cast(nib.Nifti1Image, nib.load(str(image_path)))
    data = np.asanyarray(image.dataobj, dtype=np.float32)
    first = nib.Nifti1Image(data[..., 0] if data.ndim == 4 else data, image.affine)
    image_ras = nib.as_closest_canonical(first)
    labels_ras = nib.as_closest_canonical(label_img)
    return render_thumbnail(
        np.asanyarray(image_ras.dataobj), np.asanyarray(labels_ras.dataobj).astype(np.int64)
    )


def metric_rows(records: list[dict[str, Any]]) -> list[tuple[str, str, str, float, str]]:
    """(muscle, side code, metric, value, unit) for the search index, from qmri records."""
    rows = []
    for record in records:
        name = str(record["metric"])
        metric, unit = SEARCH_METRIC_NAMES.get(name, (name, str(record["unit"])))
        rows.append(
            (
                str(record["muscle"]),
                SIDE_CODES[str(record["side"])],
                metric,
                float(record["value"]),
                unit,
            )
        )
    return rows


def _corrected_series(session: Any, series_ids: list[int]) -> set[int]:
    """Series whose labels were corrected by a person (a LABELS derivative above version 1)."""
    if not series_ids:
        return set()
    return set(
        session.scalars(
            select(Derivative.series_id).where(
                Derivative.series_id.in_(series_ids),
                Derivative.kind == "LABELS",
                Derivative.version > 1,
            )
        )
    )


@handler("pipeline.segment")
def segment_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    from qmri.metrics import compute_muscle_metrics, qc_flags, to_long_records, write_metrics_tsv
    from qmri.segmentation import load_model
    from qmri.segmentation.nifti import segment_nifti
    from repository.services.pipeline import _load, _put_file, _upsert_object

    upload_id = int(payload["upload_id"])
    store = ctx.services["store"]
    with ctx.db.transaction() as session:
        _, project = _load(session, upload_id)
        project_id = project.id
        series = session.execute(
            select(Series.id, Series.visit_id, Series.mids_path, Subject.id, Subject.pseudonym)
            .join(UploadFile, UploadFile.series_id == Series.id)
            .join(Visit, Visit.id == Series.visit_id)
            .join(Subject, Subject.id == Visit.subject_id)
            .where(UploadFile.upload_id == upload_id, Series.contrast.in_(SEGMENTED_CONTRASTS))
            .distinct()
        ).all()
        map_keys = {row[0]: _map_keys(session, row[0]) for row in series}
        corrected = _corrected_series(session, [row[0] for row in series])
    model = load_model(anatomy="thigh")
    results: dict[str, Any] = {"segmented": 0, "metrics": 0, "failed": [], "flags": 0}
    # a person's correction wins over the model: re-running the stage keeps corrected labels
    # (and the metrics computed from them) instead of adding model metrics beside them
    results["kept_corrected"] = len(corrected)
    series = [row for row in series if row[0] not in corrected]
    for n, (series_id, visit_id, stem, subject_id, pseudonym) in enumerate(series):
        ctx.progress(n / max(len(series), 1), f"segmenting series {n + 1} of {len(series)}")
        with tempfile.TemporaryDirectory(prefix="myovault-seg-") as tmp:
            where = Path(tmp)
            try:
                image = where / "image.nii.gz"
                store.copy_to_file(f"mids/p{project_id}/{stem}.nii.gz", image)
                label_img, result = segment_nifti(image, model, volume_index=0)
                ff = _load_map(store, _pick_map(map_keys[series_id], "ff"), where)
                t2 = _load_map(store, _pick_map(map_keys[series_id], "t2"), where)
                labels = np.asanyarray(label_img.dataobj).astype(np.uint8)
                spacing = tuple(float(z) for z in label_img.header.get_zooms()[:3])
                superior_high = nib.aff2axcodes(label_img.affine)[2] == "S"
                rows = compute_muscle_metrics(
                    labels,
                    spacing,
                    ff_percent=ff,
                    t2_water_ms=t2,
                    erosion_voxels=1,
                    proximal_is_high_index=superior_high,
                    model_version=result.model_version,
                )
                flags = [f.__dict__ for f in qc_flags(rows, confidence=result.confidence)]
                out_stem = f"{Path(stem).parent.as_posix().replace('/mr-anat', '/mr-quant')}/{Path(stem).name}"
                nib.save(label_img, where / "dseg.nii.gz")
                (where / "dseg.json").write_text(
                    json.dumps({**result.sidecar(), "QualityControl": flags}, indent=2, default=str)
                )
                write_metrics_tsv(rows, where / "metrics.tsv")
                (where / "thumbnail.png").write_bytes(_thumbnail(image, label_img))
                stored = {
                    "LABELS": _put_file(
                        store,
                        project_id,
                        f"{out_stem}_dseg.nii.gz",
                        where / "dseg.nii.gz",
                        pseudonym,
                        "derivative",
                        "application/gzip",
                    ),
                    "LABELS_JSON": _put_file(
                        store,
                        project_id,
                        f"{out_stem}_dseg.json",
                        where / "dseg.json",
                        pseudonym,
                        "sidecar",
                        "application/json",
                    ),
                    "METRICS_TSV": _put_file(
                        store,
                        project_id,
                        f"{out_stem}_dseg_metrics.tsv",
                        where / "metrics.tsv",
                        pseudonym,
                        "derivative",
                        "text/tab-separated-values",
                    ),
                    THUMBNAIL: _put_file(
                        store,
                        project_id,
                        f"{out_stem}_desc-thumbnail_dseg.png",
                        where / "thumbnail.png",
                        pseudonym,
                        "derivative",
                        "image/png",
                    ),
                }
            except Exception as exc:  # one series' failure must not stop the others
                log.warning("segmentation of series %s failed: %s", series_id, exc)
                results["failed"].append(
                    {"series": stem, "error": f"{exc.__class__.__name__}: {exc}"}
                )
                continue
        version = f"{result.model_name}@{result.model_version}"
        with ctx.db.transaction() as session:
            derivatives: dict[str, int] = {}
            for kind, info in stored.items():
                obj = _upsert_object(session, info, subject_id)
                derivative = session.scalar(
                    select(Derivative).where(Derivative.object_id == obj.id)
                ) or Derivative(
                    visit_id=visit_id,
                    series_id=series_id,
                    kind=kind,
                    object_id=obj.id,
                    software=SEGMENTER,
                )
                derivative.software_version, derivative.model_version = (
                    result.model_version,
                    version,
                )
                derivative.parameters = {"source": stem, "erosion_voxels": 1, "qc_flags": flags}
                if kind != "LABELS":  # LABELS comes first (dict order)
                    derivative.parameters["labels_derivative_id"] = derivatives["LABELS"]
                session.add(derivative)
                session.flush()
                derivatives[kind] = derivative.id
            session.execute(
                delete(MuscleMetric).where(MuscleMetric.derivative_id == derivatives["LABELS"])
            )
            metric_values = metric_rows(to_long_records(rows))
            session.add_all(
                MuscleMetric(
                    subject_id=subject_id,
                    visit_id=visit_id,
                    derivative_id=derivatives["LABELS"],
                    muscle=muscle,
                    side=side,
                    metric=metric,
                    value=value,
                    unit=unit,
                    model_version=version,
                )
                for muscle, side, metric, value, unit in metric_values
            )
            audit.record(
                session,
                SYSTEM,
                "pipeline.segment",
                object_type="series",
                object_id=series_id,
                project_id=project_id,
                details={"model": version, "metrics": len(metric_values), "qc_flags": len(flags)},
            )
        results["segmented"] += 1
        results["metrics"] += len(metric_values)
        results["flags"] += len(flags)
    return results
