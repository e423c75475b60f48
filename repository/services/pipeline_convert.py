"""Pipeline stage convert: verified de-identified DICOM → ORMIR-MIDS NIfTI + JSON per series."""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from sqlalchemy import select

from repository.models import (
    FileState,
    Series,
    StoredObject,
    Subject,
    Upload,
    UploadFile,
)
from repository.services import audit
from repository.services.context import SYSTEM
from repository.services.jobs import JobContext, handler
from repository.services.pipeline import (
    CONVERTER,
    _dispatcher,
    _load,
    _put_file,
    _upsert_object,
    _visit,
    enqueue_stage,
    files_of_upload,
    settle,
)

log = logging.getLogger(__name__)


def _contrast(label: str, part: str) -> str:
    if part in ("", "magnitude", "mag"):
        return label.upper()
    return f"{label}_{part}".upper()[:32]


@handler("pipeline.convert")
def convert_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Convert the de-identified series of the upload's subjects to ORMIR-MIDS in the store.

    All de-identified files of those subjects (from every upload of the project) are converted
    together, so visits are numbered per subject across uploads.
    """
    from ingest.convert import bids_label, convert, plan_conversion
    from ingest.scan import scan_folder
    from repository.storage import SYSTEM as STORE_SYSTEM

    upload_id = int(payload["upload_id"])
    store = ctx.services["store"]
    store.keyring.data_key(STORE_SYSTEM, create=True)
    with ctx.db.transaction() as session:
        upload, project = _load(session, upload_id)
        project_id = project.id
        pseudonyms = sorted(
            set(
                session.scalars(
                    select(UploadFile.subject_pseudonym).where(
                        UploadFile.upload_id == upload_id,
                        UploadFile.state == FileState.DEIDENTIFIED,
                    )
                )
            )
        )
        files = session.execute(
            select(UploadFile.id, StoredObject.key, StoredObject.sha256, UploadFile.upload_id)
            .join(StoredObject, StoredObject.id == UploadFile.deid_object_id)
            .join(Upload, Upload.id == UploadFile.upload_id)
            .where(
                Upload.project_id == project_id,
                UploadFile.subject_pseudonym.in_(pseudonyms),
                UploadFile.state.in_(
                    (FileState.DEIDENTIFIED, FileState.CONVERTED, FileState.NOT_CONVERTED)
                ),
            )
            .order_by(UploadFile.id)
        ).all()
    stats = {"series": 0, "files_converted": 0, "not_converted": 0}
    with tempfile.TemporaryDirectory(prefix="myovault-deid-") as tmp:
        src, dst = Path(tmp) / "dicom", Path(tmp) / "mids"
        src.mkdir()
        path_to_file: dict[str, int] = {}
        seen_keys: dict[str, int] = {}
        for file_id, key, sha, _ in files:
            if key in seen_keys:
                continue  # the same de-identified instance, uploaded twice
            seen_keys[key] = file_id
            path = src / f"f{file_id}.dcm"
            store.copy_to_file(key, path, expected_sha256=sha)
            path_to_file[str(path.resolve())] = file_id
        ctx.progress(0.2, f"scanning {len(path_to_file)} de-identified files")
        scan = scan_folder(src)
        plan = plan_conversion(scan)
        ctx.progress(0.4, f"converting {len(plan.files)} ORMIR-MIDS images")
        result = convert(plan, dst)
        by_label = {bids_label(p): p for p in pseudonyms}
        file_series: dict[int, tuple[str, str]] = {}
        for planned in plan.files:
            for record in planned.geometry.records:
                fid = path_to_file.get(str(Path(record.path).resolve()))
                if fid is not None:
                    file_series[fid] = (planned.relative_stem, "")
        reasons: dict[int, str] = {}
        for issue in scan.issues:
            fid = path_to_file.get(str(Path(issue.path).resolve()))
            if fid is not None:
                reasons[fid] = f"{issue.kind.value}: {issue.reason}"
        for missing in (*plan.not_converted, *result.failed):
            for p in missing.paths:
                fid = path_to_file.get(str(Path(p).resolve()))
                if fid is not None and fid not in file_series:
                    reasons[fid] = f"{missing.what}: {missing.reason}"
        written: dict[str, tuple[Any, dict[str, Any]]] = {}
        for converted in result.files:
            rel = converted.nifti_path.relative_to(dst).as_posix()
            sidecar = json.loads(converted.sidecar_path.read_text())
            label = converted.participant_id.removeprefix("sub-")
            pseudonym = by_label.get(label)
            if pseudonym is None:
                continue
            nifti = _put_file(
                store, project_id, rel, converted.nifti_path, pseudonym, "nifti", "application/gzip"
            )
            side = _put_file(
                store,
                project_id,
                rel.removesuffix(".nii.gz") + ".json",
                converted.sidecar_path,
                pseudonym,
                "sidecar",
                "application/json",
            )
            written[rel.removesuffix(".nii.gz")] = (
                (nifti, side, converted, pseudonym),
                sidecar,
            )
        tables = []
        for table in (result.participants_tsv, *result.sessions_tsv):
            if table is not None:
                rel = table.relative_to(dst).as_posix()
                tables.append(_put_file(store, project_id, rel, table, None, "table", "text/tsv"))
        ctx.progress(0.8, "recording series")
        sessions = {(s.participant_id, s.session_id): s for s in plan.sessions}
        sex_of = {p.participant_id: p.sex for p in plan.participants}
        study_of = {p.relative_stem: p.geometry.records[0].study_instance_uid for p in plan.files}
        with ctx.db.transaction() as session:
            objects = {}
            for info in tables:
                _upsert_object(session, info, None)
            for stem, ((nifti, side, converted, pseudonym), sidecar) in written.items():
                subject = session.scalar(
                    select(Subject).where(
                        Subject.project_id == project_id, Subject.pseudonym == pseudonym
                    )
                )
                assert subject is not None  # noqa: S101
                sex = sex_of.get(converted.participant_id, "")
                if sex in ("M", "F", "O") and not subject.sex:
                    subject.sex = sex  # from the de-identified header (participants.tsv)
                visit = _visit(
                    session, subject, converted, sessions, study_of.get(stem.split("/")[-1], "")
                )
                obj = _upsert_object(session, nifti, subject.id)
                _upsert_object(session, side, subject.id)
                objects[stem] = obj
                series = session.scalar(
                    select(Series).where(Series.visit_id == visit.id, Series.mids_path == stem)
                )
                if series is None:
                    series = Series(visit_id=visit.id, mids_path=stem)
                    session.add(series)
                    stats["series"] += 1
                series.series_uid = converted.series_instance_uid[:64]
                series.contrast = _contrast(converted.label, converted.part)
                series.vendor = str(sidecar.get("Manufacturer", ""))[:64]
                series.model = str(sidecar.get("ManufacturersModelName", ""))[:64]
                strength = sidecar.get("MagneticFieldStrength")
                series.field_strength_t = float(strength) if strength else None
                series.parameters = {k: v for k, v in sidecar.items() if k != "MyoVault"}
                series.object_id = obj.id
                session.flush()
                for fid, (file_stem, _) in file_series.items():
                    if file_stem == stem:
                        item = session.get(UploadFile, fid)
                        if item is not None:
                            item.series_id, item.state = series.id, FileState.CONVERTED
                            item.reason, item.detail = "", ""
            for fid, _ in files_of_upload(session, upload_id):
                item = session.get(UploadFile, fid)
                if item is None or item.state != FileState.DEIDENTIFIED:
                    continue
                item.state, item.reason = FileState.NOT_CONVERTED, "not_converted"
                item.detail = reasons.get(fid, "no ORMIR-MIDS output for this file")[:2000]
                stats["not_converted"] += 1
            stats["files_converted"] = sum(
                1 for fid in file_series if session.get(UploadFile, fid) is not None
            )
            upload, _ = _load(session, upload_id)
            upload.report = dict(upload.report) | {
                "conversion": {
                    "converter": CONVERTER,
                    "rules_version": plan.rules_version,
                    "outputs": sorted(written),
                    "not_converted": [
                        {"what": i.what, "reason": i.reason}
                        for i in (*plan.not_converted, *result.failed)
                    ],
                }
            }
            settle(session, upload)
            audit.record(
                session,
                SYSTEM,
                "upload.convert",
                object_type="upload",
                object_id=upload_id,
                project_id=project_id,
                details=stats,
            )
    if ctx.services["config"].get("PIPELINE_FIT", True) and any(
        s.rsplit("_", 1)[-1] in ("MESE", "DIXON", "MEGRE") for s in written
    ):
        digest = hashlib.sha256(
            "\n".join(f"{k}:{v[0][0][0].sha256}" for k, v in sorted(written.items())).encode()
        ).hexdigest()[:32]
        with ctx.db.transaction() as session:
            upload, _ = _load(session, upload_id)
            enqueue_stage(session, SYSTEM, upload, "fit", _dispatcher(ctx), digest)
    return stats
