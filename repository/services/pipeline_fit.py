"""Pipeline stage fit: ORMIR-MIDS MESE / Dixon / MEGRE series → qMRI maps.

* MESE → water T2, B1, FF, residual, mono-exponential T2 (``qmri.run.run_t2_fit``);
* vendor Dixon (water + fat images) → FF;
* complex multi-echo gradient echo (MEGRE: real + imaginary or magnitude + phase parts, which the
  converter stores as separate series) → FF, water, fat, B0, R2* (>= 3 echoes), residual
  (``qmri.run.run_dixon_fit``). The parts of one acquisition are fitted once, the maps are
  attached to its magnitude series (else its real-part series). Echo times that cannot separate
  water from fat (e.g. a dual-echo B0-mapping protocol) give a B0 map only, and the job result
  says why (``warnings``).
"""

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

#: contrasts of the parts of a complex multi-echo gradient echo (``pipeline_convert._contrast``
#: of the classifier's parts magnitude, real, imaginary, phase)
MEGRE_CONTRASTS = ("MEGRE", "MEGRE_REAL", "MEGRE_IMAGINARY", "MEGRE_PHASE")
#: every contrast this stage reads (the MEGRE parts are grouped into one fit per acquisition)
FITTED_CONTRASTS = (*FIT_CONTRASTS, *MEGRE_CONTRASTS)


def _acquisition_stem(mids_path: str) -> str:
    """``…/sub-1_ses-1_part-real_MEGRE`` → ``…/sub-1_ses-1_MEGRE`` (the part entity removed)."""
    folder, _, name = mids_path.rpartition("/")
    tokens = [t for t in name.split("_") if not t.startswith("part-")]
    return f"{folder}/{'_'.join(tokens)}" if folder else "_".join(tokens)


def plan_fits(rows: list[tuple[int, int, str, str, str]]) -> list[dict[str, Any]]:
    """One fit per MESE / vendor-Dixon series and per MEGRE acquisition (its parts grouped).

    ``rows`` are (series id, visit id, mids path, contrast, pseudonym). Each planned fit names
    the series its maps attach to, the file to fit, every stem to fetch and the contrast.
    """
    fits: list[dict[str, Any]] = []
    megre: dict[tuple[int, str], list[tuple[int, str, str, str]]] = {}
    for series_id, visit_id, stem, contrast, pseudonym in rows:
        if contrast in MEGRE_CONTRASTS:
            key = (visit_id, _acquisition_stem(stem))
            megre.setdefault(key, []).append((series_id, stem, contrast, pseudonym))
            continue
        stems = [stem]
        if contrast == "DIXON_WATER":
            stems.append(stem.replace("_part-water_", "_part-fat_"))
        fits.append(
            {
                "series_id": series_id,
                "visit_id": visit_id,
                "stem": stem,
                "stems": stems,
                "contrast": contrast,
                "pseudonym": pseudonym,
            }
        )
    preference = {c: i for i, c in enumerate(MEGRE_CONTRASTS)}
    for (visit_id, _), parts in sorted(megre.items()):
        parts.sort(key=lambda p: preference[p[2]])
        series_id, stem, _, pseudonym = parts[0]
        fits.append(
            {
                "series_id": series_id,
                "visit_id": visit_id,
                "stem": stem,
                "stems": [p[1] for p in parts],
                "contrast": "MEGRE",
                "pseudonym": pseudonym,
            }
        )
    return fits


@handler("pipeline.fit")
def fit_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Quantitative maps for the upload's MESE, vendor-Dixon and MEGRE series (``qmri.run``).

    Each map is stored in the ORMIR-MIDS tree (``mids/p<project>/…/mr-quant/``) and recorded as a
    :class:`Derivative` (software and version); a series whose fit fails is reported in the
    job result and does not stop the others. Re-running replaces the maps (same keys).
    """
    import qmri
    from qmri.run import DixonOptions, run_dixon_fit, run_t2_fit
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
            .where(UploadFile.upload_id == upload_id, Series.contrast.in_(FITTED_CONTRASTS))
            .distinct()
        ).all()
    fits = plan_fits([(r[0], r[1], r[2], r[3], r[4]) for r in rows])
    results: dict[str, Any] = {"maps": 0, "failed": [], "warnings": []}
    for n, fit in enumerate(fits):
        series_id, visit_id, stem = fit["series_id"], fit["visit_id"], fit["stem"]
        contrast, pseudonym = fit["contrast"], fit["pseudonym"]
        label = f"fitting {contrast} series {n + 1} of {len(fits)}"
        ctx.progress(n / max(len(fits), 1), label)

        def progress(fraction: float, n: int = n, label: str = label) -> None:
            ctx.progress((n + min(max(fraction, 0.0), 1.0)) / max(len(fits), 1), label)

        def warn(message: str, stem: str = stem) -> None:
            results["warnings"].append({"series": stem, "warning": message})

        with tempfile.TemporaryDirectory(prefix="myovault-fit-") as tmp:
            src, out = Path(tmp) / "in", Path(tmp) / "out"
            try:
                for one in fit["stems"]:
                    for ext in (".nii.gz", ".json"):
                        target = src / f"{one}{ext}"
                        target.parent.mkdir(parents=True, exist_ok=True)
                        store.copy_to_file(f"mids/p{project_id}/{one}{ext}", target)
                out.mkdir()
                nifti = src / f"{stem}.nii.gz"
                if contrast == "MESE":
                    outputs = run_t2_fit(nifti, out, progress=progress)
                else:
                    options = DixonOptions(map_desc="megre" if contrast == "MEGRE" else None)
                    outputs = run_dixon_fit(nifti, out, options, progress=progress, warn=warn)
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
        digest = hashlib.sha256(f"u{upload_id}:maps:{results['maps']}:{len(fits)}".encode())
        with ctx.db.transaction() as session:
            upload, _ = _load(session, upload_id)
            enqueue_stage(
                session, SYSTEM, upload, "segment", _dispatcher(ctx), digest.hexdigest()[:32]
            )
    return results
