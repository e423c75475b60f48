"""Pipeline stage fit: ORMIR-MIDS MESE / Dixon series → qMRI maps (water T2, FF, B1)."""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from repository.models import (
    Series,
    Subject,
    UploadFile,
    Visit,
)
from repository.services import audit
from repository.services.context import SYSTEM
from repository.services.jobs import JobContext, handler
from repository.services.pipeline import (
    FIT_CONTRASTS,
    FITTER,
    _dispatcher,
    _load,
    _put_file,
    _upsert_object,
    enqueue_stage,
)

log = logging.getLogger(__name__)


@handler("pipeline.fit")
def fit_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Quantitative maps for the upload's MESE and vendor-Dixon series (``qmri.run``).

    Each map is stored in the ORMIR-MIDS tree (``mids/p<project>/…/mr-quant/``) and recorded as a
    :class:`Derivative` (software and version); a series whose fit fails is reported in the
    job result and does not stop the others. Re-running replaces the maps (same keys).
    """
    import qmri
    from qmri.run import run_dixon_fit, run_t2_fit
    from repository.models import Derivative

    upload_id = int(payload["upload_id"])
    store = ctx.services["store"]
    with ctx.db.transaction() as session:
        upload, project = _load(session, upload_id)
        project_id = project.id
        rows = session.execute(
            select(Series.id, Series.visit_id, Series.mids_path, Series.contrast, Subject.pseudonym)
            .join(UploadFile, UploadFile.series_id == Series.id)
            .join(Visit, Visit.id == Series.visit_id)
            .join(Subject, Subject.id == Visit.subject_id)
            .where(UploadFile.upload_id == upload_id, Series.contrast.in_(FIT_CONTRASTS))
            .distinct()
        ).all()
    results: dict[str, Any] = {"maps": 0, "failed": []}
    for n, (series_id, visit_id, stem, contrast, pseudonym) in enumerate(rows):
        ctx.progress(n / max(len(rows), 1), f"fitting {contrast} series {n + 1} of {len(rows)}")
        with tempfile.TemporaryDirectory(prefix="myovault-fit-") as tmp:
            src, out = Path(tmp) / "in", Path(tmp) / "out"
            stems = [stem]
            if contrast == "DIXON_WATER":
                stems.append(stem.replace("_part-water_", "_part-fat_"))
            try:
                for one in stems:
                    for ext in (".nii.gz", ".json"):
                        target = src / f"{one}{ext}"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        store.copy_to_file(f"mids/p{project_id}/{one}{ext}", target)
                out.mkdir()
                nifti = src / f"{stem}.nii.gz"
                if contrast == "MESE":
                    outputs = run_t2_fit(nifti, out)
                else:
                    outputs = run_dixon_fit(nifti, out)
            except Exception as exc:  # one series' failure must not stop the others
                log.warning("fit of series %s failed: %s", series_id, exc)
                results["failed"].append(
                    {"series": stem, "error": f"{exc.__class__.__name__}: {exc}"}
                )
                continue
            stored = []
            for path in outputs:
                if not path.name.endswith(".nii.gz"):
                    continue
                rel = f"{Path(stem).parent.as_posix()}/{path.name}".replace(
                    "/mr-anat/", "/mr-quant/"
                )
                info = _put_file(
                    store, project_id, rel, path, pseudonym, "derivative", "application/gzip"
                )
                side = path.with_name(path.name.removesuffix(".nii.gz") + ".json")
                if side.is_file():
                    _put_file(
                        store,
                        project_id,
                        rel.removesuffix(".nii.gz") + ".json",
                        side,
                        pseudonym,
                        "sidecar",
                        "application/json",
                    )
                stored.append((path.name, info))
        with ctx.db.transaction() as session:
            subject_id = session.scalar(
                select(Subject.id).where(
                    Subject.project_id == project_id, Subject.pseudonym == pseudonym
                )
            )
            for name, info in stored:
                plain, kind_obj, content_type = info
                obj = _upsert_object(session, (plain, kind_obj, content_type), subject_id)
                kind = name.removesuffix(".nii.gz").rsplit("_", 1)[-1][:32]
                derivative = session.scalar(
                    select(Derivative).where(
                        Derivative.series_id == series_id, Derivative.object_id == obj.id
                    )
                )
                if derivative is None:
                    derivative = Derivative(
                        visit_id=visit_id,
                        series_id=series_id,
                        kind=kind,
                        object_id=obj.id,
                        software=FITTER,
                        software_version=qmri.__version__,
                    )
                    session.add(derivative)
                derivative.parameters = {"source": stem}
                results["maps"] += 1
            audit.record(
                session,
                SYSTEM,
                "pipeline.fit",
                object_type="series",
                object_id=series_id,
                project_id=project_id,
                details={"maps": len(stored)},
            )
    if results["maps"] and ctx.services["config"].get("PIPELINE_SEGMENT", True):
        digest = hashlib.sha256(f"u{upload_id}:maps:{results['maps']}:{len(rows)}".encode())
        with ctx.db.transaction() as session:
            upload, _ = _load(session, upload_id)
            enqueue_stage(
                session, SYSTEM, upload, "segment", _dispatcher(ctx), digest.hexdigest()[:32]
            )
    return results
