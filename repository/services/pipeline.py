"""The ingest pipeline as jobs: unpack → de-identify → verify → convert (→ fit).

Each stage is a job (``pipeline.<stage>``) keyed by the stage and a content hash, so queuing the
same work twice returns the existing job. Each stage is idempotent and commits per unit of work
(per file for de-identification and verification, per conversion for ORMIR-MIDS): objects are
written to the store under deterministic keys *before* the rows that point to them commit, so a
worker killed mid-way leaves no row pointing at a half-written object, and the re-run overwrites
what it finds. A file or series that fails is marked with its reason; the rest goes on.

Quarantine originals are deleted as soon as each file's de-identified copy has been verified
(``QUARANTINE_RETENTION_S``, default 0: at once); once an upload holds no original, its
quarantine data key is destroyed so that no copy (backups included) stays readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.models import (
    FileState,
    Project,
    Series,
    StoredObject,
    Subject,
    Upload,
    UploadChunk,
    UploadFile,
    UploadState,
    Visit,
)
from repository.models._types import utcnow
from repository.models.uploads import ATTENTION_STATES
from repository.services import audit, fixity, jobs  # noqa: F401  (fixity job)
from repository.services.context import SYSTEM, Actor
from repository.services.jobs import JobContext, handler
from repository.services.uploads import (
    _already_received,
    delete_bytes,
    iter_file,
    quarantine_subject,
    sniff,
)

log = logging.getLogger(__name__)

#: an archive member may expand to at most this many times its compressed size
ZIP_MAX_RATIO = 200
ZIP_MAX_MEMBERS = 100_000
STAGES = ("deidentify", "verify", "convert", "fit", "segment")
#: series contrasts the fit stage maps (qmri.run): MESE → water T2/FF/B1, vendor Dixon → FF
FIT_CONTRASTS = ("MESE", "DIXON_WATER")
FITTER = "myovault-qmri"
CONVERTER = "myovault-ingest"


class PipelineError(Exception):
    """A stage cannot run at all (missing upload, project without secret)."""


# --- orchestration ----------------------------------------------------------------------------


def _content_digest(session: Session, upload: Upload, states: tuple[FileState, ...]) -> str:
    shas = sorted(
        session.scalars(
            select(UploadFile.sha256).where(
                UploadFile.upload_id == upload.id, UploadFile.state.in_(states)
            )
        )
    )
    return hashlib.sha256(("\n".join([f"u{upload.id}", *shas])).encode()).hexdigest()[:32]


def enqueue_stage(
    session: Session,
    actor: Actor,
    upload: Upload,
    stage: str,
    dispatch: Callable[[int], None],
    digest: str,
) -> jobs.Enqueued:
    """Queue ``pipeline.<stage>`` for ``upload``; the key makes it idempotent."""
    if stage not in STAGES:
        raise ValueError(f"unknown pipeline stage {stage!r}")
    return jobs.enqueue(
        session,
        actor,
        dispatch,
        kind=f"pipeline.{stage}",
        payload={"upload_id": upload.id},
        key=f"pipeline.{stage}:{digest}",
        project_id=upload.project_id,
    )


def start(
    session: Session, actor: Actor, upload: Upload, dispatch: Callable[[int], None]
) -> jobs.Enqueued | None:
    """Start the pipeline on a completed upload (or settle it when nothing is to be done)."""
    digest = _content_digest(session, upload, (FileState.RECEIVED,))
    has_work = session.scalar(
        select(UploadFile.id)
        .where(UploadFile.upload_id == upload.id, UploadFile.state == FileState.RECEIVED)
        .limit(1)
    )
    if has_work is None:
        settle(session, upload)
        return None
    return enqueue_stage(session, actor, upload, "deidentify", dispatch, digest)


def settle(session: Session, upload: Upload) -> None:
    """Final state of the upload from its files' states."""
    states = set(session.scalars(select(UploadFile.state).where(UploadFile.upload_id == upload.id)))
    attention = bool(states & ATTENTION_STATES)
    upload.state = UploadState.ATTENTION if attention else UploadState.DONE
    upload.finished_at = utcnow()
    upload.message = (
        "some files need attention (see the list)" if attention else "all files processed"
    )


def _dispatcher(ctx: JobContext) -> Callable[[int], None]:
    dispatch = ctx.services.get("dispatch")
    if dispatch is not None:
        return dispatch  # type: ignore[no-any-return]
    from flask import current_app

    return current_app.extensions["myovault"].dispatch  # type: ignore[no-any-return]


def _unwrap_secret(ctx: JobContext, wrapped: bytes) -> bytes:
    unwrap = ctx.services.get("unwrap_project_secret")
    if unwrap is None:
        from flask import current_app

        unwrap = current_app.extensions["myovault"].unwrap_project_secret
    return bytes(unwrap(wrapped))


def _load(session: Session, upload_id: int) -> tuple[Upload, Project]:
    upload = session.get(Upload, upload_id)
    if upload is None:
        raise PipelineError(f"upload {upload_id} does not exist")
    project = session.get(Project, upload.project_id)
    assert project is not None  # noqa: S101
    return upload, project


def _files(session: Session, upload_id: int, *states: FileState) -> list[int]:
    return list(
        session.scalars(
            select(UploadFile.id)
            .where(UploadFile.upload_id == upload_id, UploadFile.state.in_(states))
            .order_by(UploadFile.id)
        )
    )


def _next(ctx: JobContext, upload_id: int, stage: str, states: tuple[FileState, ...]) -> None:
    with ctx.db.transaction() as session:
        upload, _ = _load(session, upload_id)
        digest = _content_digest(session, upload, states)
        enqueue_stage(session, SYSTEM, upload, stage, _dispatcher(ctx), digest)


# --- stage 1: unpack archives and de-identify ---------------------------------------------------


def _stage_file(ctx: JobContext, session: Session, item: UploadFile, directory: Path) -> Path:
    """Decrypt a quarantined file into the (identifiable) staging directory."""
    path = directory / f"f{item.id}"
    with open(path, "wb") as fh:
        for piece in iter_file(ctx.services["store"], session, item):
            fh.write(piece)
    return path


def _safe_member_name(name: str) -> str | None:
    """The member's path if it is a plain relative path; None for traversal or absolute names."""
    if "\x00" in name or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return None
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if not parts or any(p == ".." for p in parts):
        return None
    return "/".join(parts)


def unpack_archive(
    ctx: JobContext, upload_id: int, archive_id: int, staging: Path, max_bytes: int
) -> dict[str, int]:
    """Expand one zip file into member files (each an encrypted quarantine object).

    Refused members (path traversal, links, nested archives, non-DICOM, suspicious compression)
    become ``rejected`` rows with the reason; their bytes are never stored. The archive itself is
    refused as a whole when its total expanded size exceeds ``max_bytes`` or when it is corrupt.
    """
    store = ctx.services["store"]
    stats = {"members": 0, "stored": 0, "rejected": 0}
    with ctx.db.transaction() as session:
        archive = session.get(UploadFile, archive_id)
        assert archive is not None  # noqa: S101
        if archive.state != FileState.RECEIVED:
            return stats
        path = _stage_file(ctx, session, archive, staging)
        rows: list[UploadFile] = []
        try:
            with zipfile.ZipFile(path) as zf:
                infos = [i for i in zf.infolist() if not i.is_dir()]
                total = sum(i.file_size for i in infos)
                if len(infos) > ZIP_MAX_MEMBERS:
                    raise _ArchiveRefused("too_many_members", f"{len(infos)} members")
                if total > max_bytes:
                    raise _ArchiveRefused(
                        "zip_bomb",
                        f"the archive would expand to {total} bytes (limit {max_bytes})",
                    )
                for index, info in enumerate(infos):
                    stats["members"] += 1
                    rows.append(_unpack_member(session, store, zf, info, index, archive, max_bytes))
        except _ArchiveRefused as exc:
            _remove(store, rows)
            archive.state, archive.reason, archive.detail = (
                FileState.REJECTED,
                exc.reason,
                exc.detail,
            )
            delete_bytes(session, store, archive)
            path.unlink(missing_ok=True)
            return stats
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            _remove(store, rows)
            archive.state, archive.reason = FileState.REJECTED, "corrupt_archive"
            archive.detail = f"the zip archive cannot be read: {exc}"
            delete_bytes(session, store, archive)
            path.unlink(missing_ok=True)
            return stats
        finally:
            path.unlink(missing_ok=True)
        for row in rows:
            if row.state == FileState.REJECTED:
                stats["rejected"] += 1
            elif row.state == FileState.RECEIVED:
                stats["stored"] += 1
        archive.state = FileState.UNPACKED
        archive.detail = f"{stats['members']} members: {stats['stored']} DICOM files kept"
        delete_bytes(session, store, archive)
        audit.record(
            session,
            SYSTEM,
            "upload.unpack",
            object_type="upload_file",
            object_id=archive.id,
            project_id=archive.upload.project_id,
            details=stats,
        )
    return stats


class _ArchiveRefused(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _remove(store: Any, rows: list[UploadFile]) -> None:
    for row in rows:
        for chunk in row.chunks:
            store.delete(chunk.key)


def _unpack_member(
    session: Session,
    store: Any,
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    index: int,
    archive: UploadFile,
    max_bytes: int,
) -> UploadFile:
    upload = archive.upload
    name = _safe_member_name(info.filename)
    display = f"{archive.path}!{name or f'member-{index}'}"[:1000]
    row = UploadFile(
        upload_id=upload.id,
        parent_id=archive.id,
        path=display,
        size=info.file_size,
        sha256="0" * 64,
    )
    session.add(row)
    mode = (info.external_attr >> 16) & 0o170000
    if name is None:
        row.state, row.reason = FileState.REJECTED, "path_traversal"
        row.detail = "the member's name leaves the archive (absolute or '..'): not extracted"
    elif mode == 0o120000:
        row.state, row.reason, row.detail = FileState.REJECTED, "symlink", "links are not extracted"
    elif info.compress_size and info.file_size / info.compress_size > ZIP_MAX_RATIO:
        row.state, row.reason = FileState.REJECTED, "zip_bomb"
        row.detail = (
            f"compression ratio {info.file_size // max(info.compress_size, 1)}:1 exceeds "
            f"{ZIP_MAX_RATIO}:1"
        )
    else:
        with zf.open(info) as member:
            head = member.read(132)
        kind = sniff(head)
        if kind != "dicom":
            row.state, row.reason = FileState.REJECTED, "not_dicom"
            row.detail = (
                "nested archives are not unpacked"
                if kind == "zip"
                else "not a DICOM Part 10 file: not stored"
            )
        else:
            key = f"quarantine/u{upload.id}/f{archive.id}/m{index:07d}"
            with zf.open(info) as member:
                bounded = _Bounded(member, info.file_size)
                stored = store.put(key, bounded, subject=quarantine_subject(upload.id))
            row.size, row.sha256, row.received_bytes = stored.size, stored.sha256, stored.size
            original = _already_received(session, upload.project_id, stored.sha256)
            if original is not None:
                store.delete(key)
                row.state, row.reason, row.duplicate_of_id = (
                    FileState.DUPLICATE,
                    "duplicate",
                    original,
                )
                row.detail = "identical content was already received in this project"
            else:
                row.state = FileState.RECEIVED
                session.flush()
                session.add(
                    UploadChunk(
                        file_id=row.id, offset=0, size=stored.size, sha256=stored.sha256, key=key
                    )
                )
    session.flush()
    return row


class _Bounded:
    """Refuses to read more than the size the zip header declared (zip bombs lie)."""

    def __init__(self, stream: Any, limit: int) -> None:
        self.stream, self.left = stream, limit

    def read(self, size: int = -1) -> bytes:
        data: bytes = self.stream.read(size if size > 0 else 1 << 20)
        self.left -= len(data)
        if self.left < 0:
            raise _ArchiveRefused("zip_bomb", "a member expands beyond its declared size")
        return data


@handler("pipeline.deidentify")
def deidentify_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Unpack archives, then de-identify every received DICOM file with the project secret."""
    from anonymizer import Deidentifier
    from anonymizer.report import STATUS_NOT_DICOM, STATUS_WRITTEN
    from anonymizer.series import head_hint

    upload_id = int(payload["upload_id"])
    config = ctx.services["config"]
    store = ctx.services["store"]
    with ctx.db.transaction() as session:
        upload, project = _load(session, upload_id)
        if project.pseudonym_secret_wrapped is None:
            raise PipelineError(f"project {project.slug} has no pseudonym secret")
        secret = _unwrap_secret(ctx, project.pseudonym_secret_wrapped)
        slug, project_id = project.slug, project.id
        site = ""
        if upload.site_id is not None:
            from repository.models import Site

            site_row = session.get(Site, upload.site_id)
            site = site_row.code if site_row is not None else ""
        received = _files(session, upload_id, FileState.RECEIVED)
    deid = Deidentifier(secret, slug, site)
    stats = {"deidentified": 0, "quarantined": 0, "rejected": 0}
    with tempfile.TemporaryDirectory(prefix="myovault-quarantine-") as tmp:
        staging = Path(tmp)
        for file_id in received:  # archives first: their members join the list
            with ctx.db.transaction() as session:
                item = session.get(UploadFile, file_id)
                assert item is not None  # noqa: S101
                head = b"".join(_head(store, session, item))
            if sniff(head) == "zip":
                unpack_archive(ctx, upload_id, file_id, staging, int(config["MAX_UPLOAD_BYTES"]))
        with ctx.db.transaction() as session:
            todo = _files(session, upload_id, FileState.RECEIVED)
        for n, file_id in enumerate(todo):
            ctx.progress(n / max(len(todo), 1), f"de-identifying file {n + 1} of {len(todo)}")
            with ctx.db.transaction() as session:
                item = session.get(UploadFile, file_id)
                assert item is not None  # noqa: S101
                if item.state != FileState.RECEIVED:
                    continue  # done by an earlier (interrupted) run
                path = _stage_file(ctx, session, item, staging)
                source = item.path
            try:
                result = deid.deidentify_file(path, source)
            finally:
                path.unlink(missing_ok=True)
            if (
                result.status == STATUS_WRITTEN
                and result.dataset is not None
                and head_hint(result.dataset)
            ):
                result.status, result.reason = "quarantined", "deface-required"
                result.detail = (
                    "head images need series-level defacing: use `myovault anonymize`"
                    " on the series, then upload its output"
                )
            if result.status == STATUS_WRITTEN:
                # create the subject's data key before the write transaction (SQLite snapshots)
                store.keyring.data_key(result.subject, create=True)
            with ctx.db.transaction() as session:
                item = session.get(UploadFile, file_id)
                assert item is not None  # noqa: S101
                result.dataset = None
                item.deid_result = result.to_dict() | {"source": ""}
                if result.status == STATUS_WRITTEN and result.encoded is not None:
                    _store_deidentified(session, store, project_id, item, result)
                    stats["deidentified"] += 1
                elif result.status == STATUS_NOT_DICOM:
                    item.state, item.reason, item.detail = (
                        FileState.REJECTED,
                        "not_dicom",
                        result.detail,
                    )
                    delete_bytes(session, store, item)
                    stats["rejected"] += 1
                else:
                    item.state, item.reason = FileState.QUARANTINED, result.reason[:64]
                    item.detail = result.detail + (
                        f" (findings: {', '.join(result.findings[:5])})" if result.findings else ""
                    )
                    stats["quarantined"] += 1
                result.encoded = None
                audit.record(
                    session,
                    SYSTEM,
                    "upload.deidentify",
                    object_type="upload_file",
                    object_id=item.id,
                    project_id=project_id,
                    details={"state": item.state.value, "reason": item.reason},
                )
    with ctx.db.transaction() as session:
        upload, _ = _load(session, upload_id)
        upload.report = dict(upload.report) | {"deidentification": build_report(session, upload)}
    _next(ctx, upload_id, "verify", (FileState.DEIDENTIFIED,))
    return stats


def _head(store: Any, session: Session, item: UploadFile) -> list[bytes]:
    first = session.scalar(
        select(UploadChunk).where(UploadChunk.file_id == item.id).order_by(UploadChunk.offset)
    )
    if first is None:
        return []
    # chunks are at most 32 MiB; reading the first one whole keeps the code simple
    return [store.read_bytes(first.key, expected_sha256=first.sha256)[:132]]


def _store_deidentified(
    session: Session, store: Any, project_id: int, item: UploadFile, result: Any
) -> None:
    encoded: bytes = result.encoded
    sha = hashlib.sha256(encoded).hexdigest()
    pseudonym = result.subject
    subject = session.scalar(
        select(Subject).where(Subject.project_id == project_id, Subject.pseudonym == pseudonym)
    )
    if subject is None:
        subject = Subject(project_id=project_id, pseudonym=pseudonym)
        session.add(subject)
        session.flush()
    key = f"deid/p{project_id}/{sha[:2]}/{sha}.dcm"
    obj = session.scalar(select(StoredObject).where(StoredObject.key == key))
    if obj is None:
        info = store.put(key, encoded, subject=pseudonym)
        obj = StoredObject(
            key=key,
            size=info.size,
            sha256=info.sha256,
            key_id=info.key_id,
            subject_id=subject.id,
            kind="dicom_deid",
            content_type="application/dicom",
        )
        session.add(obj)
        session.flush()
    item.state, item.reason, item.detail = FileState.DEIDENTIFIED, "", ""
    item.subject_pseudonym, item.deid_object_id = pseudonym, obj.id


def build_report(session: Session, upload: Upload) -> dict[str, Any]:
    """The anonymizer's upload report, rebuilt from the per-file results (re-runs included)."""
    from anonymizer import FileResult, load_profile
    from anonymizer.report import UploadReport

    profile = load_profile()
    report = UploadReport(
        profile.version, profile.edition, [f"{c} {m}" for c, m in profile.options]
    )
    for item in upload.files:
        if item.deid_result:
            data = {k: v for k, v in item.deid_result.items() if k in FileResult.__annotations__}
            data["source"] = f"file-{item.id}"
            report.add(FileResult(**data))
    out = report.to_dict()
    if len(report.subjects) > 1:
        out.setdefault("warnings", []).append(
            f"mixed patients: this upload holds {len(report.subjects)} subjects"
            " (each gets its own pseudonym)"
        )
    return out


# --- stage 2: verify, then delete the originals -------------------------------------------------


def verify_deidentified(encoded: bytes, pseudonym: str) -> str | None:
    """Re-check a stored de-identified file; returns the problem or None."""
    import pydicom

    try:
        ds = pydicom.dcmread(io.BytesIO(encoded), stop_before_pixels=True)
    except Exception as exc:  # any parse failure means the stored copy is unusable
        return f"the de-identified copy cannot be read: {exc.__class__.__name__}"
    if str(ds.get("PatientIdentityRemoved", "")).upper() != "YES":
        return "PatientIdentityRemoved is not YES"
    if str(ds.get("PatientID", "")) != pseudonym:
        return "PatientID is not the subject's pseudonym"
    if not ds.get("DeidentificationMethod"):
        return "DeidentificationMethod is missing"
    return None


@handler("pipeline.verify")
def verify_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Read back every de-identified copy (sha256 checked), re-check it, drop the original."""
    upload_id = int(payload["upload_id"])
    store = ctx.services["store"]
    retention_s = int(ctx.services["config"].get("QUARANTINE_RETENTION_S", 0) or 0)
    stats = {"verified": 0, "failed": 0, "originals_deleted": 0}
    with ctx.db.transaction() as session:
        todo = _files(session, upload_id, FileState.DEIDENTIFIED)
    for n, file_id in enumerate(todo):
        ctx.progress(n / max(len(todo), 1), f"verifying file {n + 1} of {len(todo)}")
        with ctx.db.transaction() as session:
            item = session.get(UploadFile, file_id)
            assert item is not None  # noqa: S101
            obj = session.get(StoredObject, item.deid_object_id)
            assert obj is not None  # noqa: S101
            problem = verify_deidentified(
                store.read_bytes(obj.key, expected_sha256=obj.sha256), item.subject_pseudonym
            )
            if problem is not None:
                item.state, item.reason, item.detail = FileState.QUARANTINED, "verify", problem
                stats["failed"] += 1
                continue
            obj.verified_at = utcnow()
            stats["verified"] += 1
            if retention_s <= 0 and item.chunks:
                stats["originals_deleted"] += delete_bytes(session, store, item)
    purge_if_empty(ctx.db, store, upload_id)
    _next(ctx, upload_id, "convert", (FileState.DEIDENTIFIED,))
    return stats


def purge_if_empty(db: Any, store: Any, upload_id: int) -> bool:
    """Destroy the upload's quarantine key once it holds no original any more."""
    with db.transaction() as session:
        upload = session.get(Upload, upload_id)
        if upload is None or upload.purged_at is not None:
            return False
        left = session.scalar(
            select(UploadChunk.id)
            .join(UploadFile, UploadFile.id == UploadChunk.file_id)
            .where(UploadFile.upload_id == upload_id)
            .limit(1)
        )
        if left is not None:
            return False
        upload.purged_at = utcnow()
        audit.record(
            session,
            SYSTEM,
            "upload.quarantine_purged",
            object_type="upload",
            object_id=upload_id,
            project_id=upload.project_id,
        )
    store.destroy_subject_key(quarantine_subject(upload_id))
    return True


def purge_expired(db: Any, store: Any, retention_s: int) -> int:
    """Delete originals of verified files older than the retention (``myovault fixity``)."""
    from datetime import timedelta

    cutoff = utcnow() - timedelta(seconds=retention_s)
    deleted = 0
    with db.transaction() as session:
        rows = session.scalars(
            select(UploadFile).where(
                UploadFile.state.in_((FileState.DEIDENTIFIED, FileState.CONVERTED)),
                UploadFile.updated_at < cutoff,
            )
        ).all()
        uploads = {r.upload_id for r in rows}
        for row in rows:
            deleted += delete_bytes(session, store, row)
    for upload_id in uploads:
        purge_if_empty(db, store, upload_id)
    return deleted


# --- stage 3: ORMIR-MIDS ------------------------------------------------------------------------


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
        s.rsplit("_", 1)[-1] in ("MESE", "DIXON") for s in written
    ):
        digest = hashlib.sha256(
            "\n".join(f"{k}:{v[0][0][0].sha256}" for k, v in sorted(written.items())).encode()
        ).hexdigest()[:32]
        with ctx.db.transaction() as session:
            upload, _ = _load(session, upload_id)
            enqueue_stage(session, SYSTEM, upload, "fit", _dispatcher(ctx), digest)
    return stats


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


def files_of_upload(session: Session, upload_id: int) -> list[tuple[int, FileState]]:
    return [
        (r[0], r[1])
        for r in session.execute(
            select(UploadFile.id, UploadFile.state).where(UploadFile.upload_id == upload_id)
        ).all()
    ]


def _put_file(
    store: Any,
    project_id: int,
    rel: str,
    path: Path,
    pseudonym: str | None,
    kind: str,
    content_type: str,
) -> tuple[Any, str, str]:
    from repository.storage import SYSTEM as STORE_SYSTEM

    key = f"mids/p{project_id}/{rel}"
    with open(path, "rb") as fh:
        info = store.put(key, fh, subject=pseudonym or STORE_SYSTEM)
    return info, kind, content_type


def _upsert_object(
    session: Session, stored: tuple[Any, str, str], subject_id: int | None
) -> StoredObject:
    info, kind, content_type = stored
    obj = session.scalar(select(StoredObject).where(StoredObject.key == info.key))
    if obj is None:
        obj = StoredObject(key=info.key, kind=kind, content_type=content_type)
        session.add(obj)
    obj.size, obj.sha256, obj.key_id, obj.subject_id = (
        info.size,
        info.sha256,
        info.key_id,
        subject_id,
    )
    obj.created_at = utcnow()
    session.flush()
    return obj


def _visit(
    session: Session, subject: Subject, converted: Any, sessions: dict[Any, Any], study_uid: str
) -> Visit:
    label = converted.session_id.removeprefix("ses-")
    visit = session.scalar(
        select(Visit).where(Visit.subject_id == subject.id, Visit.label == label)
    )
    if visit is None:
        visit = Visit(subject_id=subject.id, label=label)
        session.add(visit)
    row = sessions.get((converted.participant_id, converted.session_id))
    if row is not None:
        visit.age_at_scan_years = row.age_years
        visit.day_offset = row.days_from_first_visit or 0
    visit.study_uid = study_uid[:64]
    session.flush()
    return visit


def local_services(app_ext: Any) -> dict[str, Any]:
    """Services for running the stages in this process: chained stages are not dispatched
    (``run_local`` picks them up from the Job table)."""
    return app_ext.services() | {
        "dispatch": lambda _job_id: None,
        "unwrap_project_secret": app_ext.unwrap_project_secret,
    }


def run_local(app_ext: Any, upload_id: int) -> list[tuple[str, str]]:
    """Run every stage of one upload in this process (``myovault ingest``, tests, the demo).

    Returns (job kind, final status) in the order run.
    """
    from repository.models import Job, JobStatus

    db = app_ext.db
    ran: list[tuple[str, str]] = []
    while True:
        with db.transaction() as session:
            pending = [
                (j.id, j.kind)
                for j in session.scalars(
                    select(Job)
                    .where(
                        Job.kind.startswith("pipeline."),
                        Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)),
                    )
                    .order_by(Job.id)
                )
                if j.payload.get("upload_id") == upload_id
            ]
        if not pending:
            return ran
        for job_id, kind in pending:
            ran.append((kind, jobs.run(db, job_id, local_services(app_ext)).value))


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def ingest_directory(
    app_ext: Any,
    actor: Actor,
    root: Path,
    project_slug: str,
    *,
    label: str = "",
    source: str = "local",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Ingest every file under ``root`` into ``project_slug`` through the same quarantine and
    pipeline as web uploads (``myovault ingest``, the demo cohort). Files are streamed.
    """
    from repository.services import projects, uploads

    root = Path(root)
    if not root.is_dir():
        raise PipelineError(f"{root} is not a folder")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    if not paths:
        raise PipelineError(f"{root} holds no files")
    specs = [
        uploads.FileSpec(p.relative_to(root).as_posix(), p.stat().st_size, _sha256_file(p))
        for p in paths
    ]
    store = app_ext.store
    with app_ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == project_slug))
        if project is None:
            raise PipelineError(f"no project {project_slug!r}")
        if not actor.system:
            project = projects.get_project(session, actor, project_slug, "project.upload")
        upload = uploads.create_upload(
            session,
            actor,
            project,
            files=specs,
            max_bytes=int(app_ext.config["MAX_UPLOAD_BYTES"]),
            source=source,
            label=label,
        )
        upload_id = upload.id
        ids = {f.path: f.id for f in upload.files if f.state == FileState.UPLOADING}
    store.keyring.data_key(uploads.quarantine_subject(upload_id), create=True)
    by_path = dict(zip((s.path for s in specs), paths, strict=True))
    for n, (rel, file_id) in enumerate(ids.items()):
        if progress is not None and n % 50 == 0:
            progress(f"quarantining file {n + 1} of {len(ids)}")
        with open(by_path[rel], "rb") as fh:
            offset = 0
            while True:
                block = fh.read(uploads.MAX_CHUNK_BYTES)
                if not block:
                    break
                with app_ext.db.transaction() as session:
                    item = session.get(UploadFile, file_id)
                    assert item is not None  # noqa: S101
                    uploads.put_chunk(
                        session,
                        actor,
                        store,
                        item,
                        offset=offset,
                        stream=io.BytesIO(block),
                        length=len(block),
                        sha256=hashlib.sha256(block).hexdigest(),
                    )
                offset += len(block)
    with app_ext.db.transaction() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None  # noqa: S101
        uploads.complete_upload(session, actor, upload, lambda _job_id: None)
    if progress is not None:
        progress("running the pipeline")
    ran = run_local(app_ext, upload_id)
    with app_ext.db.transaction() as session:
        upload = session.get(Upload, upload_id)
        assert upload is not None  # noqa: S101
        return {
            "upload_id": upload_id,
            "state": upload.state.value,
            "counts": uploads.counts(session, upload),
            "jobs": ran,
            "needs_attention": [
                (f.path, f.state.value, f.reason, f.detail)
                for f in uploads.needs_attention(session, upload)
            ],
        }
