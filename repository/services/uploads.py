"""Resumable uploads into the encrypted quarantine (a tus-like chunk protocol).

Protocol (the REST API and the CLI both use it):

1. ``create_upload(project, files=[{path, size, sha256}, …])`` opens an upload session. Files
   whose sha256 was already received in this project are marked ``duplicate`` at once and need
   no bytes. The declared total must fit ``MAX_UPLOAD_BYTES``.
2. ``put_chunk(file, offset, stream, length, sha256)`` appends bytes at ``offset``; the offset
   must equal the bytes already received (else :class:`OffsetMismatch`, 409, which tells the
   client where to resume). Each chunk is streamed, encrypted, into the quarantine as its own
   object and its sha256 checked; a mismatch discards the chunk (422).
3. No request costs O(file size). While chunks arrive in order in one process, a running
   sha256 of the file is kept in memory (:data:`_RUNNING`), so the last chunk can compare the
   whole-file digest at once and reject a mismatch immediately. Whether or not that was
   possible (chunks spread over several web processes, a restart), the whole-file sha256 is
   verified again, streamed from the quarantine, by the first pipeline job
   (``pipeline.checksum``) before anything else reads the file; a mismatch discards the file's
   bytes (state ``rejected``, reason ``checksum_mismatch``). The type is sniffed from the
   first bytes: files that are neither DICOM Part 10 nor zip are rejected and their bytes
   deleted.
4. ``complete_upload`` starts the pipeline (:mod:`repository.services.pipeline`) once every file
   is received, rejected or a duplicate: ``pipeline.checksum`` first, which then queues
   de-identification. Nothing is processed before.

Quarantine objects are encrypted under a per-upload data key (subject ``quarantine-u<id>``)
that is destroyed once the upload's originals are gone (crypto-shredding every copy).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repository.errors import Conflict, MyoVaultError, NotFound, ValidationError
from repository.models import (
    Derivative,
    FileState,
    Membership,
    Project,
    Series,
    Subject,
    Upload,
    UploadChunk,
    UploadFile,
    UploadState,
    Visit,
)
from repository.models._types import utcnow
from repository.models.uploads import ATTENTION_STATES
from repository.security import policy
from repository.services import audit
from repository.services.context import SYSTEM, Actor
from repository.services.jobs import JobContext, handler

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
MAX_PATH_CHARS = 1000
#: the largest chunk accepted in one request (the client's chunk size must not exceed it)
MAX_CHUNK_BYTES = 32 * 1024**2
SOURCES = frozenset({"web", "cli", "cstore", "local"})
ZIP_MAGIC = b"PK\x03\x04"
DICOM_MAGIC_OFFSET = 128
SNIFF_BYTES = 132


class UploadTooLarge(MyoVaultError):
    code = "too_large"
    status = 413


class OffsetMismatch(Conflict):
    """The client sent bytes for the wrong offset; ``expected`` is where to resume."""

    code = "offset_mismatch"

    def __init__(self, expected: int) -> None:
        super().__init__(f"this file has {expected} bytes; resume at offset {expected}")
        self.expected = expected


@dataclass(frozen=True)
class FileSpec:
    path: str
    size: int
    sha256: str


def quarantine_subject(upload_id: int) -> str:
    """Key-ring subject of an upload's quarantine objects (destroyed when it is purged)."""
    return f"quarantine-u{upload_id}"


# --- reading ----------------------------------------------------------------------------------


def upload_visits(session: Session, actor: Actor, upload: Upload) -> list[dict[str, Any]]:
    """The visits an upload produced (pseudonym, visit label, whether a thumbnail exists), for
    users who may see the project's images; empty for everyone else."""
    project = session.get(Project, upload.project_id)
    if project is None or not policy.can(session, actor, "project.view_data", project):
        return []
    rows = session.execute(
        select(Subject.pseudonym, Visit.label, Visit.id)
        .join(Visit, Visit.subject_id == Subject.id)
        .join(Series, Series.visit_id == Visit.id)
        .join(UploadFile, UploadFile.series_id == Series.id)
        .where(UploadFile.upload_id == upload.id, Subject.erased_at.is_(None))
        .distinct()
        .order_by(Subject.pseudonym, Visit.label)
    ).all()
    with_thumbnail = set(
        session.scalars(
            select(Derivative.visit_id).where(
                Derivative.visit_id.in_([r[2] for r in rows]), Derivative.kind == "THUMBNAIL"
            )
        )
    )
    return [
        {"slug": project.slug, "pseudonym": p, "label": label, "thumbnail": vid in with_thumbnail}
        for p, label, vid in rows
    ]


def get_upload(session: Session, actor: Actor, upload_id: int) -> Upload:
    """An upload the actor may see: the project's uploaders (owners, investigators) only.

    File names as sent may carry identifiers (folders named after patients), so admins follow
    the pipeline through the jobs list, not here.
    """
    upload = session.get(Upload, upload_id)
    if upload is None:
        raise NotFound("no such upload")
    project = session.get(Project, upload.project_id)
    assert project is not None  # noqa: S101
    if not policy.can(session, actor, "project.upload", project):
        raise NotFound("no such upload")
    return upload


def get_file(session: Session, actor: Actor, upload_id: int, file_id: int) -> UploadFile:
    upload = get_upload(session, actor, upload_id)
    item = session.get(UploadFile, file_id)
    if item is None or item.upload_id != upload.id:
        raise NotFound("no such file in this upload")
    return item


def list_uploads(session: Session, actor: Actor, limit: int = 50) -> list[Upload]:
    """Uploads of the projects where the actor may upload."""
    if actor.user is None:
        return []
    visible = select(Project.id).where(policy.project_filter(actor, "project.upload"))
    stmt = (
        select(Upload).where(Upload.project_id.in_(visible)).order_by(Upload.id.desc()).limit(limit)
    )
    return list(session.scalars(stmt))


def counts(session: Session, upload: Upload) -> dict[str, int]:
    """Number of files per state (archives that were unpacked count through their members)."""
    rows = session.execute(
        select(UploadFile.state, func.count())
        .where(UploadFile.upload_id == upload.id)
        .group_by(UploadFile.state)
    ).all()
    return {str(state.value): int(n) for state, n in rows}


def byte_progress(session: Session, upload: Upload) -> tuple[int, int]:
    """(received, declared) bytes of the top-level files."""
    received, total = session.execute(
        select(
            func.coalesce(func.sum(UploadFile.received_bytes), 0),
            func.coalesce(func.sum(UploadFile.size), 0),
        ).where(UploadFile.upload_id == upload.id, UploadFile.parent_id.is_(None))
    ).one()
    return int(received), int(total)


def needs_attention(session: Session, upload: Upload) -> list[UploadFile]:
    return list(
        session.scalars(
            select(UploadFile)
            .where(UploadFile.upload_id == upload.id, UploadFile.state.in_(ATTENTION_STATES))
            .order_by(UploadFile.id)
        )
    )


# --- creating ---------------------------------------------------------------------------------


def _clean_path(raw: str) -> str:
    path = raw.replace("\\", "/").strip()
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or any(p == ".." for p in parts) or "\x00" in path:
        raise ValidationError(f"invalid file path {raw[:80]!r}")
    clean = "/".join(parts)
    if len(clean) > MAX_PATH_CHARS:
        raise ValidationError("file path too long")
    return clean


def parse_specs(raw: Iterable[Any]) -> list[FileSpec]:
    """Validate the client's file list (``path``, ``size``, ``sha256`` each)."""
    specs: list[FileSpec] = []
    for item in raw:
        if not isinstance(item, dict):
            raise ValidationError("each file must be an object with path, size and sha256")
        size, sha = item.get("size"), str(item.get("sha256", "")).lower()
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValidationError("file size must be a non-negative integer")
        if not SHA256_RE.match(sha):
            raise ValidationError("file sha256 must be 64 hexadecimal characters")
        specs.append(FileSpec(_clean_path(str(item.get("path", ""))), size, sha))
    if len({s.path for s in specs}) != len(specs):
        raise ValidationError("the same path appears twice")
    return specs


def uploader_site(session: Session, user_id: int, project_id: int) -> int | None:
    """The site an uploader belongs to in the project (pseudonyms are keyed by site)."""
    return session.scalar(
        select(Membership.site_id)
        .where(
            Membership.user_id == user_id,
            Membership.project_id == project_id,
            Membership.site_id.is_not(None),
        )
        .order_by(Membership.id)
        .limit(1)
    )


def create_upload(
    session: Session,
    actor: Actor,
    project: Project,
    *,
    files: list[FileSpec],
    max_bytes: int,
    source: str = "web",
    label: str = "",
    site_id: int | None = None,
) -> Upload:
    """Open an upload session for ``project`` with the files the client will send."""
    if not actor.system:
        policy.require(session, actor, "project.upload", project)
    if source not in SOURCES:
        raise ValidationError(f"unknown upload source {source!r}")
    if site_id is None and actor.user_id is not None:
        site_id = uploader_site(session, actor.user_id, project.id)
    upload = Upload(
        project_id=project.id,
        site_id=site_id,
        created_by_id=actor.user_id,
        source=source,
        label=label.strip()[:200],
    )
    session.add(upload)
    session.flush()
    add_files(session, actor, upload, files, max_bytes=max_bytes)
    audit.record(
        session,
        actor,
        "upload.create",
        object_type="upload",
        object_id=upload.id,
        project_id=project.id,
        details={"source": source, "files": len(files)},
    )
    return upload


def add_files(
    session: Session, actor: Actor, upload: Upload, files: list[FileSpec], *, max_bytes: int
) -> list[UploadFile]:
    """Declare more files of an open upload (folders are sent in batches)."""
    _require_open(upload)
    _, declared = byte_progress(session, upload)
    total = declared + sum(f.size for f in files)
    if total > max_bytes:
        raise UploadTooLarge(
            f"this upload would hold {total} bytes; the limit is {max_bytes} bytes"
            " (MAX_UPLOAD_BYTES): split it into several uploads"
        )
    existing = set(
        session.scalars(select(UploadFile.path).where(UploadFile.upload_id == upload.id))
    )
    created: list[UploadFile] = []
    for spec in files:
        if spec.path in existing:
            raise Conflict(f"{spec.path!r} is already part of this upload")
        item = UploadFile(upload_id=upload.id, path=spec.path, size=spec.size, sha256=spec.sha256)
        original = _already_received(session, upload.project_id, spec.sha256)
        if original is not None:
            item.state, item.reason = FileState.DUPLICATE, "duplicate"
            item.detail = "identical content was already received in this project"
            item.duplicate_of_id = original
            item.received_bytes = spec.size
        session.add(item)
        created.append(item)
    session.flush()
    for item in created:
        if item.state == FileState.UPLOADING and item.size == 0:
            _reject(item, "empty", "the file is empty")
    return created


def _already_received(session: Session, project_id: int, sha256: str) -> int | None:
    """Id of a file with this content already received (and kept) in the project."""
    live = (
        FileState.RECEIVED,
        FileState.UNPACKED,
        FileState.DEIDENTIFIED,
        FileState.CONVERTED,
        FileState.NOT_CONVERTED,
        FileState.QUARANTINED,
    )
    stmt = (
        select(UploadFile.id)
        .join(Upload, Upload.id == UploadFile.upload_id)
        .where(
            Upload.project_id == project_id,
            UploadFile.sha256 == sha256,
            UploadFile.state.in_(live),
        )
        .order_by(UploadFile.id)
        .limit(1)
    )
    return session.scalar(stmt)


def _require_open(upload: Upload) -> None:
    if upload.state != UploadState.OPEN:
        raise Conflict(f"this upload is {upload.state.value}: it takes no more data")


def _reject(item: UploadFile, reason: str, detail: str) -> None:
    item.state, item.reason, item.detail = FileState.REJECTED, reason, detail


# --- receiving bytes --------------------------------------------------------------------------


class _Limited:
    """Read at most ``length`` bytes from ``stream``; records how many were actually read,
    feeds them to ``digest`` (the file's running sha256, if any) and keeps the first bytes."""

    def __init__(self, stream: IO[bytes], length: int, digest: Any = None) -> None:
        self.stream, self.remaining, self.read_bytes = stream, length, 0
        self.digest = digest
        self.head = b""

    def read(self, size: int = -1) -> bytes:
        if self.remaining <= 0:
            return b""
        n = self.remaining if size < 0 else min(size, self.remaining)
        data = self.stream.read(n)
        self.remaining -= len(data)
        self.read_bytes += len(data)
        if self.digest is not None:
            self.digest.update(data)
        if len(self.head) < SNIFF_BYTES:
            self.head += data[: SNIFF_BYTES - len(self.head)]
        return data


@dataclass
class _Running:
    """In-memory running state of one file whose chunks arrived in order in this process."""

    offset: int  # bytes hashed so far
    digest: Any  # hashlib sha256 object
    head: bytes  # the file's first bytes (for sniffing)


#: file id → running sha256; a cache only (a miss just defers the check to pipeline.checksum)
_RUNNING: OrderedDict[int, _Running] = OrderedDict()
_RUNNING_MAX = 512
_RUNNING_LOCK = threading.Lock()


def _running_for(file_id: int, offset: int) -> _Running | None:
    """A copy of the running state if it covers exactly ``offset`` bytes (else None)."""
    with _RUNNING_LOCK:
        state = _RUNNING.get(file_id)
        if offset == 0:
            return _Running(0, hashlib.sha256(), b"")
        if state is None or state.offset != offset:
            return None
        return _Running(state.offset, state.digest.copy(), state.head)


def _remember(file_id: int, state: _Running | None) -> None:
    with _RUNNING_LOCK:
        if state is None:
            _RUNNING.pop(file_id, None)
            return
        _RUNNING[file_id] = state
        _RUNNING.move_to_end(file_id)
        while len(_RUNNING) > _RUNNING_MAX:
            _RUNNING.popitem(last=False)


def put_chunk(
    session: Session,
    actor: Actor,
    store: Any,
    item: UploadFile,
    *,
    offset: int,
    stream: IO[bytes],
    length: int,
    sha256: str,
) -> UploadFile:
    """Append one chunk (streamed: memory does not grow with its size) at ``offset``."""
    upload = item.upload
    _require_open(upload)
    if item.state != FileState.UPLOADING:
        raise Conflict(f"this file is {item.state.value}: it takes no more data")
    sha256 = sha256.lower()
    if not SHA256_RE.match(sha256):
        raise ValidationError("send the chunk's sha256 (64 hexadecimal characters)")
    if offset != item.received_bytes:
        raise OffsetMismatch(item.received_bytes)
    if length <= 0 or length > MAX_CHUNK_BYTES:
        raise ValidationError(f"a chunk must hold 1 to {MAX_CHUNK_BYTES} bytes")
    if offset + length > item.size:
        raise ValidationError(f"the chunk goes beyond the declared size of {item.size} bytes")
    key = f"quarantine/u{upload.id}/f{item.id}/{offset:015d}-{secrets.token_hex(4)}"
    running = _running_for(item.id, offset)
    body = _Limited(stream, length, running.digest if running is not None else None)
    info = store.put(key, body, subject=quarantine_subject(upload.id))
    if info.size != length or not hmac.compare_digest(info.sha256, sha256):
        store.delete(key)
        if info.size != length:
            raise ValidationError(
                f"the chunk ended after {info.size} of {length} bytes; resume at offset {offset}"
            )
        raise ValidationError(
            f"chunk checksum mismatch at offset {offset}: it was discarded, send it again",
            code="checksum_mismatch",
        )
    try:
        with session.begin_nested():
            session.add(
                UploadChunk(file_id=item.id, offset=offset, size=length, sha256=sha256, key=key)
            )
            session.flush()
    except IntegrityError:
        store.delete(key)
        session.refresh(item)
        raise OffsetMismatch(item.received_bytes) from None
    item.received_bytes = offset + length
    if running is not None:
        head = running.head + body.head[: SNIFF_BYTES - len(running.head)]
        running = _Running(item.received_bytes, running.digest, head)
    if item.received_bytes == item.size:
        _remember(item.id, None)
        _finish_file(session, actor, store, item, running)
    else:
        _remember(item.id, running)
    return item


def iter_file(store: Any, session: Session, item: UploadFile) -> Iterator[bytes]:
    """The received bytes of a file, chunk after chunk, each authenticated and hash-checked."""
    chunks = session.scalars(
        select(UploadChunk).where(UploadChunk.file_id == item.id).order_by(UploadChunk.offset)
    ).all()
    for chunk in chunks:
        yield from store.open(chunk.key, expected_sha256=chunk.sha256)


def delete_bytes(session: Session, store: Any, item: UploadFile) -> int:
    """Delete a file's quarantine objects and their rows; returns the number deleted."""
    chunks = session.scalars(select(UploadChunk).where(UploadChunk.file_id == item.id)).all()
    for chunk in chunks:
        store.delete(chunk.key)
        session.delete(chunk)
    session.flush()
    return len(chunks)


def _finish_file(
    session: Session, actor: Actor, store: Any, item: UploadFile, running: _Running | None
) -> None:
    """The last byte arrived: sniff the type; compare the whole-file sha256 when its running
    digest is at hand (never re-reads the file: ``pipeline.checksum`` verifies it otherwise)."""
    head = running.head if running is not None else _first_bytes(store, session, item)
    digest = running.digest.hexdigest() if running is not None else None
    if digest is not None and not hmac.compare_digest(digest, item.sha256):
        _discard_mismatch(session, store, item, digest)
    else:
        kind = sniff(head)
        if kind is None:
            delete_bytes(session, store, item)
            _reject(item, "not_dicom", "neither a DICOM Part 10 file nor a zip archive: not stored")
        else:
            item.state = FileState.RECEIVED
    audit.record(
        session,
        actor,
        "upload.file_received",
        object_type="upload_file",
        object_id=item.id,
        project_id=item.upload.project_id,
        details={
            "state": item.state.value,
            "size": item.size,
            "reason": item.reason,
            "sha256_checked": "now" if digest is not None else "in pipeline.checksum",
        },
    )


def _first_bytes(store: Any, session: Session, item: UploadFile) -> bytes:
    """The file's first bytes, from its first chunk only (one chunk: O(chunk size))."""
    first = session.scalars(
        select(UploadChunk).where(UploadChunk.file_id == item.id).order_by(UploadChunk.offset)
    ).first()
    head = b""
    if first is None:
        return head
    for piece in store.open(first.key, expected_sha256=first.sha256):
        head += piece[: SNIFF_BYTES - len(head)]
        if len(head) >= SNIFF_BYTES:
            break
    return head


def _discard_mismatch(session: Session, store: Any, item: UploadFile, digest: str) -> None:
    delete_bytes(session, store, item)
    _reject(
        item,
        "checksum_mismatch",
        f"the file's sha256 is {digest}, not the declared {item.sha256}:"
        " its bytes were discarded; upload it again",
    )
    # files that were accepted as duplicates of this (false) content have no bytes either
    for dup in session.scalars(
        select(UploadFile).where(
            UploadFile.duplicate_of_id == item.id, UploadFile.state == FileState.DUPLICATE
        )
    ):
        _reject(
            dup,
            "duplicate_of_rejected",
            "it was taken for a duplicate of a file whose checksum then failed: upload it again",
        )


def verify_received(session: Session, store: Any, item: UploadFile) -> bool:
    """Stream a received file from the quarantine and check its whole-file sha256.

    On a mismatch the bytes are discarded and the file rejected (audited). Returns True when
    the file is intact.
    """
    digest = hashlib.sha256()
    for piece in iter_file(store, session, item):
        digest.update(piece)
    if hmac.compare_digest(digest.hexdigest(), item.sha256):
        return True
    _discard_mismatch(session, store, item, digest.hexdigest())
    audit.record(
        session,
        SYSTEM,
        "upload.file_checksum_failed",
        object_type="upload_file",
        object_id=item.id,
        project_id=item.upload.project_id,
        details={"size": item.size},
    )
    return False


@handler("pipeline.checksum")
def checksum_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """First pipeline job: verify the whole-file sha256 of every received file (streamed, one
    file per transaction), then queue de-identification (``pipeline.start``)."""
    from repository.services import pipeline

    upload_id = int(payload["upload_id"])
    store = ctx.services["store"]
    with ctx.db.transaction() as session:
        ids = list(
            session.scalars(
                select(UploadFile.id)
                .where(
                    UploadFile.upload_id == upload_id,
                    UploadFile.parent_id.is_(None),
                    UploadFile.state == FileState.RECEIVED,
                )
                .order_by(UploadFile.id)
            )
        )
    failed = 0
    for n, file_id in enumerate(ids):
        with ctx.db.transaction() as session:
            item = session.get(UploadFile, file_id)
            if item is not None and item.state == FileState.RECEIVED:
                failed += 0 if verify_received(session, store, item) else 1
        if n % 20 == 0:
            ctx.progress(n / max(len(ids), 1), f"checked {n} of {len(ids)} files")
    with ctx.db.transaction() as session:
        upload, _project = pipeline._load(session, upload_id)
        pipeline.start(session, SYSTEM, upload, pipeline._dispatcher(ctx))
    return {"files": len(ids), "checksum_failed": failed}


def sniff(head: bytes) -> str | None:
    """``"dicom"``, ``"zip"`` or None from the first 132 bytes of a file."""
    if head[:4] == ZIP_MAGIC:
        return "zip"
    if head[DICOM_MAGIC_OFFSET:SNIFF_BYTES] == b"DICM":
        return "dicom"
    return None


# --- completing -------------------------------------------------------------------------------


def complete_upload(
    session: Session, actor: Actor, upload: Upload, dispatch: Callable[[int], None]
) -> Upload:
    """Close the upload and start the pipeline; every file must be received or settled."""
    if upload.state != UploadState.OPEN:
        return upload  # completing twice is harmless (idempotent)
    project = session.get(Project, upload.project_id)
    assert project is not None  # noqa: S101
    if not actor.system:
        policy.require(session, actor, "project.upload", project)
    pending = session.scalar(
        select(func.count()).where(
            UploadFile.upload_id == upload.id, UploadFile.state == FileState.UPLOADING
        )
    )
    if pending:
        raise Conflict(f"{pending} file(s) are not complete yet: resume them first")
    upload.state, upload.completed_at = UploadState.PROCESSING, utcnow()
    audit.record(
        session,
        actor,
        "upload.complete",
        object_type="upload",
        object_id=upload.id,
        project_id=upload.project_id,
        details=counts(session, upload),
    )
    from repository.services import jobs, pipeline

    received = pipeline._content_digest(session, upload, (FileState.RECEIVED,))
    has_received = session.scalar(
        select(UploadFile.id)
        .where(UploadFile.upload_id == upload.id, UploadFile.state == FileState.RECEIVED)
        .limit(1)
    )
    if has_received is None:
        pipeline.start(session, actor, upload, dispatch)  # nothing to check: settles
    else:
        jobs.enqueue(
            session,
            actor,
            dispatch,
            kind="pipeline.checksum",
            payload={"upload_id": upload.id},
            key=f"pipeline.checksum:{received}",
            project_id=upload.project_id,
        )
    return upload


def cancel_upload(session: Session, actor: Actor, store: Any, upload: Upload) -> Upload:
    """Abandon an open upload: its quarantine bytes are deleted at once."""
    project = session.get(Project, upload.project_id)
    assert project is not None  # noqa: S101
    policy.require(session, actor, "project.upload", project)
    _require_open(upload)
    for item in upload.files:
        delete_bytes(session, store, item)
        if item.state in (FileState.UPLOADING, FileState.RECEIVED):
            _reject(item, "cancelled", "the upload was cancelled")
    upload.state, upload.finished_at = UploadState.CANCELLED, utcnow()
    audit.record(
        session,
        actor,
        "upload.cancel",
        object_type="upload",
        object_id=upload.id,
        project_id=upload.project_id,
    )
    return upload


def file_json(item: UploadFile) -> dict[str, Any]:
    return {
        "id": item.id,
        "path": item.path,
        "size": item.size,
        "sha256": item.sha256,
        "offset": item.received_bytes,
        "state": item.state.value,
        "reason": item.reason,
        "detail": item.detail,
        "parent_id": item.parent_id,
        "series_id": item.series_id,
    }


def upload_json(session: Session, upload: Upload, *, with_files: bool = True) -> dict[str, Any]:
    received, total = byte_progress(session, upload)
    job_rows = _jobs_of(session, upload)
    data: dict[str, Any] = {
        "id": upload.id,
        "project_id": upload.project_id,
        "source": upload.source,
        "label": upload.label,
        "state": upload.state.value,
        "message": upload.message,
        "created_at": upload.created_at.isoformat(),
        "completed_at": upload.completed_at.isoformat() if upload.completed_at else None,
        "finished_at": upload.finished_at.isoformat() if upload.finished_at else None,
        "bytes_received": received,
        "bytes_total": total,
        "counts": counts(session, upload),
        "jobs": job_rows,
        "needs_attention": [file_json(f) for f in needs_attention(session, upload)],
    }
    active = [j["kind"] for j in job_rows if j["status"] in ("queued", "running")]
    if active and upload.state in (UploadState.DONE, UploadState.ATTENTION):
        # the files are settled but a stage (e.g. the fit) is still running: not done yet
        data["state"] = UploadState.PROCESSING.value
        data["message"] = f"{upload.message}; still running: {', '.join(active)}"
    failed = [j for j in job_rows if j["status"] == "failed"]
    if failed and upload.state == UploadState.PROCESSING:
        # a stage failed (jobs are not retried on errors, only on lost workers): say so
        data["state"] = UploadState.ATTENTION.value
        data["message"] = "; ".join(f"{j['kind']} failed: {j['error']}" for j in failed) + (
            " — retry with POST /api/v1/uploads/{id}/retry once the cause is fixed"
        )
    if with_files:
        data["files"] = [file_json(f) for f in upload.files]
    return data


def _jobs_of(session: Session, upload: Upload) -> list[dict[str, Any]]:
    from repository.models import Job

    rows = session.scalars(
        select(Job)
        .where(Job.project_id == upload.project_id, Job.kind.startswith("pipeline."))
        .order_by(Job.id)
    ).all()
    out = []
    for job in rows:
        if job.payload.get("upload_id") != upload.id:
            continue
        out.append(
            {
                "id": job.id,
                "kind": job.kind,
                "status": job.status.value,
                "progress": job.progress,
                "message": job.message,
                "error": job.error,
            }
        )
    return out


# --- C-STORE receiver -------------------------------------------------------------------------


class CStoreIngest:
    """Wires :class:`ingest.receiver.StudyReceiver` to the quarantine and the pipeline.

    Each (calling AE title, study) batch becomes one upload (source ``cstore``) of the project
    the AE title maps to; every instance is written to the encrypted quarantine as it arrives
    (sha256 recorded); once the study has been quiet, the upload is completed and the pipeline
    starts (``on_complete`` receives the upload id, e.g. to run it in-process).

    The study → upload mapping is persisted on the upload (``report["cstore"]``: calling AE
    title and the sha256 of the StudyInstanceUID — never the UID itself — mirrored in the
    label), so a receiver restarted mid-association, or between two associations of the same
    study, continues the same open upload. :meth:`complete_stale` completes open C-STORE
    uploads that have been quiet for the quiet period (after a crash nothing else would).
    """

    def __init__(
        self,
        app_ext: Any,
        *,
        dispatch: Callable[[int], None],
        on_complete: Callable[[int], None] | None = None,
    ) -> None:
        import threading

        self.ext = app_ext
        self.dispatch = dispatch
        self.on_complete = on_complete
        self._open: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def _upload_for(self, ae_title: str, project_slug: str, site_code: str, study_uid: str) -> int:
        from repository.models import Site
        from repository.services.context import SYSTEM

        key = (ae_title, study_uid)
        if key in self._open:
            return self._open[key]
        study_hash = hashlib.sha256(study_uid.encode()).hexdigest()
        label = f"C-STORE from {ae_title}, study {study_hash[:12]}"
        with self.ext.db.transaction() as session:
            project = session.scalar(select(Project).where(Project.slug == project_slug))
            if project is None:
                raise NotFound(f"AE title {ae_title} maps to unknown project {project_slug!r}")
            existing = self._find_open(session, project.id, ae_title, study_hash, label)
            if existing is not None:  # a restarted receiver: continue the same upload
                self._open[key] = existing
                return existing
            site_id = session.scalar(
                select(Site.id).where(Site.project_id == project.id, Site.code == site_code)
            )
            upload = create_upload(
                session,
                SYSTEM,
                project,
                files=[],
                max_bytes=int(self.ext.config["MAX_UPLOAD_BYTES"]),
                source="cstore",
                label=label,
                site_id=site_id,
            )
            upload.report = {"cstore": {"calling_ae": ae_title, "study_sha256": study_hash}}
            upload_id = upload.id
        self.ext.keyring.data_key(quarantine_subject(upload_id), create=True)
        self._open[key] = upload_id
        return upload_id

    @staticmethod
    def _find_open(
        session: Session, project_id: int, ae_title: str, study_hash: str, label: str
    ) -> int | None:
        """The open C-STORE upload of this (AE title, study), persisted by an earlier run."""
        rows = session.scalars(
            select(Upload).where(
                Upload.project_id == project_id,
                Upload.source == "cstore",
                Upload.state == UploadState.OPEN,
                Upload.label == label,
            )
        )
        for upload in rows:
            mapping = (upload.report or {}).get("cstore", {})
            if mapping.get("calling_ae") == ae_title and mapping.get("study_sha256") == study_hash:
                return upload.id
        return None

    def complete_stale(self, quiet_seconds: float, now: Any = None) -> list[int]:
        """Complete the open C-STORE uploads that received nothing for ``quiet_seconds``
        (uploads left open by a receiver that stopped or crashed); returns their ids."""
        from datetime import timedelta

        from repository.services.context import SYSTEM

        cutoff = (now or utcnow()) - timedelta(seconds=quiet_seconds)
        with self.ext.db.transaction() as session:
            candidates = list(
                session.scalars(
                    select(Upload.id).where(
                        Upload.source == "cstore", Upload.state == UploadState.OPEN
                    )
                )
            )
            stale = []
            for upload_id in candidates:
                last = session.scalar(
                    select(func.max(UploadFile.updated_at)).where(UploadFile.upload_id == upload_id)
                )
                upload = session.get(Upload, upload_id)
                assert upload is not None  # noqa: S101
                if (last or upload.created_at) <= cutoff:
                    stale.append(upload_id)
        done = []
        for upload_id in stale:
            with self._lock:
                if upload_id in self._open.values():
                    continue  # still being received by this process
            with self.ext.db.transaction() as session:
                upload = session.get(Upload, upload_id)
                assert upload is not None  # noqa: S101
                complete_upload(session, SYSTEM, upload, self.dispatch)
            done.append(upload_id)
            if self.on_complete is not None:
                self.on_complete(upload_id)
        return done

    def stage(
        self, ae_title: str, destination: Any, study_uid: str, sop_uid: str, data: bytes
    ) -> Any:
        """``StudyReceiver`` stage callback: quarantine one instance; returns a pseudo-path."""
        import io
        from pathlib import PurePosixPath

        from repository.services.context import SYSTEM

        with self._lock:
            upload_id = self._upload_for(ae_title, destination.project, destination.site, study_uid)
            name = hashlib.sha256(sop_uid.encode()).hexdigest()[:24] + ".dcm"
            spec = FileSpec(name, len(data), hashlib.sha256(data).hexdigest())
            with self.ext.db.transaction() as session:
                upload = session.get(Upload, upload_id)
                assert upload is not None  # noqa: S101
                existing = session.scalar(
                    select(UploadFile).where(
                        UploadFile.upload_id == upload_id, UploadFile.path == name
                    )
                )
                if existing is not None:  # the sender retried an instance we already have
                    return PurePosixPath(f"upload-{upload_id}/{name}")
                (item,) = add_files(
                    session,
                    SYSTEM,
                    upload,
                    [spec],
                    max_bytes=int(self.ext.config["MAX_UPLOAD_BYTES"]),
                )
                offset = 0
                while item.state == FileState.UPLOADING and offset < len(data):
                    piece = data[offset : offset + MAX_CHUNK_BYTES]
                    put_chunk(
                        session,
                        SYSTEM,
                        self.ext.store,
                        item,
                        offset=offset,
                        stream=io.BytesIO(piece),
                        length=len(piece),
                        sha256=hashlib.sha256(piece).hexdigest(),
                    )
                    offset += len(piece)
            return PurePosixPath(f"upload-{upload_id}/{name}")

    def study_complete(self, ae_title: str, study_uid: str, paths: tuple[Any, ...]) -> None:
        """``StudyReceiver`` callback after the quiet period: close the upload, start the jobs."""
        from repository.services.context import SYSTEM

        with self._lock:
            upload_id = self._open.pop((ae_title, study_uid), None)
        if upload_id is None:
            return
        with self.ext.db.transaction() as session:
            upload = session.get(Upload, upload_id)
            assert upload is not None  # noqa: S101
            complete_upload(session, SYSTEM, upload, self.dispatch)
        if self.on_complete is not None:
            self.on_complete(upload_id)


def retry_failed(
    session: Session, actor: Actor, upload: Upload, dispatch: Callable[[int], None]
) -> list[int]:
    """Queue again the failed pipeline jobs of an upload (stages are idempotent)."""
    from repository.models import Job, JobStatus
    from repository.uow import after_commit

    project = session.get(Project, upload.project_id)
    assert project is not None  # noqa: S101
    policy.require(session, actor, "project.upload", project)
    failed = [
        job
        for job in session.scalars(
            select(Job).where(
                Job.project_id == upload.project_id,
                Job.kind.startswith("pipeline."),
                Job.status == JobStatus.FAILED,
            )
        )
        if job.payload.get("upload_id") == upload.id
    ]
    for job in failed:
        job.status, job.error, job.message, job.finished_at = JobStatus.QUEUED, "", "retry", None
        after_commit(session, functools.partial(dispatch, job.id))
    if failed and upload.state in (UploadState.DONE, UploadState.ATTENTION):
        upload.state = UploadState.PROCESSING
    audit.record(
        session,
        actor,
        "upload.retry",
        object_type="upload",
        object_id=upload.id,
        project_id=upload.project_id,
        details={"jobs": [j.id for j in failed]},
    )
    return [j.id for j in failed]
