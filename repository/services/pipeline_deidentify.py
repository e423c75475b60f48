"""Pipeline stages de-identify and verify: quarantine originals → de-identified, verified DICOM.

De-identification runs on all cores (a process pool) and defaces series whose field of view
includes the head before any of their files leaves quarantine (issue 3).
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import tempfile
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.models import (
    FileState,
    StoredObject,
    Subject,
    Upload,
    UploadChunk,
    UploadFile,
)
from repository.models._types import utcnow
from repository.services import audit
from repository.services.context import SYSTEM
from repository.services.jobs import JobContext, handler
from repository.services.pipeline import (
    PipelineError,
    _files,
    _load,
    _next,
    _stage_file,
    _unwrap_secret,
    unpack_archive,
)
from repository.services.uploads import (
    delete_bytes,
    quarantine_subject,
    sniff,
)

log = logging.getLogger(__name__)


#: uploads with fewer files than this are de-identified in this process (no pool start-up)
MIN_FILES_FOR_POOL = 8


@handler("pipeline.deidentify")
def deidentify_stage(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Unpack archives, then de-identify every received DICOM file with the project secret.

    Files are de-identified in a pool of worker processes (``DEIDENTIFY_WORKERS``, default one
    per CPU); verified encodings wait in the temporary staging folder. Series whose field of
    view may include the head are then checked as a whole and defaced in the pool
    (:func:`anonymizer.batch.deface_staged_series`). Commits: per file, except for a defaced
    series, whose files are committed together (none leaves quarantine before the whole series
    is defaced); objects are stored before the rows that point to them, so a re-run after a
    kill redoes exactly the files still ``received``.
    """
    from anonymizer.batch import JobConfig

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
    job = JobConfig(secret, slug, site)
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
        outputs = staging / "deidentified"
        outputs.mkdir()
        workers = int(config.get("DEIDENTIFY_WORKERS") or 0) or os.cpu_count() or 1
        run = _Run(ctx, store, project_id, outputs, stats)
        with _executor(job, workers, len(todo)) as submit:
            _deidentify_files(ctx, todo, staging, submit, workers, run)
            defaced = _deface(run, submit)
        run.commit_all(defaced)
    with ctx.db.transaction() as session:
        upload, _ = _load(session, upload_id)
        upload.report = dict(upload.report) | {"deidentification": build_report(session, upload)}
    _next(ctx, upload_id, "verify", (FileState.DEIDENTIFIED,))
    return stats


Submit = Callable[..., "Future[Any]"]


@contextmanager
def _executor(job: Any, workers: int, count: int) -> Iterator[Submit]:
    """``submit(fn, arg)`` to a pool of ``workers`` processes, or run in this process.

    The pool uses the *forkserver* start method: the worker processes are not forks of this
    (possibly multi-threaded) process, and the forkserver has the anonymizer pre-imported.
    Small uploads, one worker, or a daemonic process (which may not have children) run here.
    """
    from anonymizer.batch import init_worker, release_worker

    daemonic = multiprocessing.current_process().daemon  # e.g. a prefork pool child: no pool
    if workers <= 1 or count < MIN_FILES_FOR_POOL or daemonic:
        init_worker(job)

        def run_here(fn: Callable[[Any], Any], arg: Any) -> Future[Any]:
            future: Future[Any] = Future()
            future.set_result(fn(arg))
            return future

        try:
            yield run_here
        finally:
            release_worker()
        return
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["anonymizer.batch"])
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=init_worker, initargs=(job,)
    ) as pool:
        yield pool.submit


class _Run:
    """Results of one de-identification run, committed per file (or per defaced series)."""

    def __init__(
        self, ctx: JobContext, store: Any, project_id: int, outputs: Path, stats: dict[str, int]
    ) -> None:
        self.ctx, self.store, self.project_id = ctx, store, project_id
        self.outputs, self.stats = outputs, stats
        #: file id → (result, geometry) of verified files waiting for the series check
        self.pending: dict[int, tuple[Any, Any]] = {}

    def take(self, file_id: int, result: Any, info: Any) -> None:
        """A worker's result: written files wait for the series check; others commit now."""
        from anonymizer.report import STATUS_WRITTEN

        if result.status == STATUS_WRITTEN:
            self.pending[file_id] = (result, info)
        else:
            self.commit([(file_id, result)])

    def commit_all(self, defaced: dict[str, list[int]]) -> None:
        """Commit the verified files: each defaced series at once, every other file alone."""
        self.ctx.progress(0.95, f"storing {len(self.pending)} de-identified files")
        done: set[int] = set()
        for members in defaced.values():
            self.commit([(i, self.pending[i][0]) for i in members if i in self.pending])
            done.update(members)
        for file_id, (result, _) in sorted(self.pending.items()):
            if file_id not in done:
                self.commit([(file_id, result)])
        self.pending.clear()

    def commit(self, entries: list[tuple[int, Any]]) -> None:
        """Store the encodings, then record every entry's outcome in one transaction."""
        from anonymizer.batch import staged_path
        from anonymizer.report import STATUS_NOT_DICOM, STATUS_WRITTEN

        for _, result in entries:
            if result.status == STATUS_WRITTEN:
                # create the subject's data key before the write transaction (SQLite snapshots)
                self.store.keyring.data_key(result.subject, create=True)
        with self.ctx.db.transaction() as session:
            for file_id, result in entries:
                item = session.get(UploadFile, file_id)
                assert item is not None  # noqa: S101
                if item.state != FileState.RECEIVED:
                    continue  # done by an earlier run
                result.dataset = None
                item.deid_result = result.to_dict() | {"source": ""}
                if result.status == STATUS_WRITTEN:
                    result.encoded = staged_path(self.outputs, file_id).read_bytes()
                    _store_deidentified(session, self.store, self.project_id, item, result)
                    result.encoded = None
                    self.stats["deidentified"] += 1
                elif result.status == STATUS_NOT_DICOM:
                    item.state, item.reason, item.detail = (
                        FileState.REJECTED,
                        "not_dicom",
                        result.detail,
                    )
                    delete_bytes(session, self.store, item)
                    self.stats["rejected"] += 1
                else:
                    item.state, item.reason = FileState.QUARANTINED, result.reason[:64]
                    item.detail = result.detail + (
                        f" (findings: {', '.join(result.findings[:5])})" if result.findings else ""
                    )
                    self.stats["quarantined"] += 1
                audit.record(
                    session,
                    SYSTEM,
                    "upload.deidentify",
                    object_type="upload_file",
                    object_id=item.id,
                    project_id=self.project_id,
                    details={"state": item.state.value, "reason": item.reason},
                )


def _deidentify_files(
    ctx: JobContext, todo: list[int], staging: Path, submit: Submit, workers: int, run: _Run
) -> None:
    """Stage each original (decrypted), de-identify it in the pool, collect in order.

    At most a few files per worker are staged ahead, so identifiable copies on disk stay few
    and the decryption here overlaps the de-identification in the workers.
    """
    from anonymizer.batch import process_file

    window: deque[tuple[int, Path, Future[Any]]] = deque()

    def collect() -> None:
        file_id, path, future = window.popleft()
        try:
            _, result, info = future.result()
        finally:
            path.unlink(missing_ok=True)
        run.take(file_id, result, info)

    for n, file_id in enumerate(todo):
        ctx.progress(n / max(len(todo), 1), f"de-identifying file {n + 1} of {len(todo)}")
        with ctx.db.transaction() as session:
            item = session.get(UploadFile, file_id)
            assert item is not None  # noqa: S101
            if item.state != FileState.RECEIVED:
                continue  # done by an earlier (interrupted) run
            path = _stage_file(ctx, session, item, staging)
            source = item.path
        task = (file_id, str(path), source, str(run.outputs))
        window.append((file_id, path, submit(process_file, task)))
        while len(window) > 2 * workers:
            collect()
    while window:
        collect()


def _deface(run: _Run, submit: Submit) -> dict[str, list[int]]:
    """Check every series that may include the head, in the pool; deface it or quarantine it.

    Returns the defaced series (new Series Instance UID → file ids).
    """
    from anonymizer.batch import deface_staged_series, needs_series_check
    from anonymizer.report import STATUS_QUARANTINED, FileResult

    by_series: dict[str, dict[int, Any]] = defaultdict(dict)
    for file_id, (_, info) in run.pending.items():
        if info is not None:
            by_series[info.series_uid][file_id] = info
    checks = {
        uid: submit(deface_staged_series, (series, str(run.outputs)))
        for uid, series in by_series.items()
        if needs_series_check(series)
    }
    defaced: dict[str, list[int]] = {}
    for uid, future in checks.items():
        changed, quarantine = future.result()
        for file_id in changed:
            run.pending[file_id][0].pixel_actions.append("deface")
        if changed:
            defaced[uid] = sorted(by_series[uid])
        for file_id, reason in quarantine.items():
            old = run.pending.pop(file_id)[0]
            result = FileResult(old.source, STATUS_QUARANTINED, "deface-impossible", reason)
            run.commit([(file_id, result)])
    return defaced


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


@handler("quarantine.purge")
def purge_job(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Periodic: delete quarantine originals kept past ``QUARANTINE_RETENTION_S``."""
    retention_s = int(ctx.services["config"].get("QUARANTINE_RETENTION_S", 0) or 0)
    return {"deleted": purge_expired(ctx.db, ctx.services["store"], retention_s)}


# --- stage 3: ORMIR-MIDS ------------------------------------------------------------------------
