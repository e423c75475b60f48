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
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.models import (
    FileState,
    Project,
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
from repository.services.jobs import JobContext
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


# The stage modules register their job handlers on import; they use the helpers above.
from repository.services import (  # noqa: E402, F401
    pipeline_convert,
    pipeline_deidentify,
    pipeline_fit,
)
