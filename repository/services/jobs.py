"""Jobs: queued work with state the UI can show (queued → running → done | failed).

A job is created in the caller's transaction and dispatched to the worker after commit. Jobs
with a ``key`` (e.g. kind + content hash) are idempotent: enqueuing the same key again returns
the existing job instead of doing the work twice. Handlers are looked up by ``kind`` in
:data:`HANDLERS`; an unknown kind is an error, never silently dropped.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from repository.db import Database
from repository.errors import NotFound, ValidationError
from repository.models import Job, JobStatus, Project
from repository.models._types import utcnow
from repository.security import policy
from repository.services.context import Actor
from repository.uow import after_commit

log = logging.getLogger(__name__)

Dispatcher = Callable[[int], None]


class JobContext:
    """Given to a handler: report progress; each report commits on its own."""

    def __init__(self, db: Database, job_id: int, services: dict[str, Any]) -> None:
        self.db = db
        self.job_id = job_id
        self.services = services

    def progress(self, fraction: float, message: str = "") -> None:
        with self.db.transaction() as session:
            job = session.get(Job, self.job_id)
            if job is not None:
                job.progress = max(0.0, min(1.0, fraction))
                if message:
                    job.message = message


Handler = Callable[[JobContext, dict[str, Any]], dict[str, Any]]
HANDLERS: dict[str, Handler] = {}


def handler(kind: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        if kind in HANDLERS:
            raise ValueError(f"job kind {kind!r} registered twice")
        HANDLERS[kind] = fn
        return fn

    return register


@dataclass(frozen=True)
class Enqueued:
    job: Job
    created: bool


def enqueue(
    session: Session,
    actor: Actor,
    dispatch: Dispatcher,
    *,
    kind: str,
    payload: dict[str, Any] | None = None,
    key: str | None = None,
    project_id: int | None = None,
) -> Enqueued:
    if kind not in HANDLERS:
        raise ValidationError(f"unknown job kind {kind!r}")
    if key is not None:
        existing = session.scalar(select(Job).where(Job.key == key))
        if existing is not None:
            return Enqueued(existing, created=False)
    job = Job(
        kind=kind,
        key=key,
        payload=payload or {},
        project_id=project_id,
        created_by_id=actor.user_id,
    )
    try:
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:  # another process queued the same key concurrently
        existing = session.scalar(select(Job).where(Job.key == key))
        assert existing is not None  # noqa: S101
        return Enqueued(existing, created=False)
    job_id = job.id
    after_commit(session, lambda: dispatch(job_id))
    return Enqueued(job, created=True)


def run(db: Database, job_id: int, services: dict[str, Any]) -> JobStatus:
    """Execute one job (called by the worker). Safe to call again after a crash: it restarts."""
    with db.transaction() as session:
        job = session.get(Job, job_id)
        if job is None:
            raise NotFound(f"job {job_id} does not exist")
        if job.status in (JobStatus.DONE, JobStatus.FAILED):
            return job.status
        job.status, job.started_at, job.attempts = JobStatus.RUNNING, utcnow(), job.attempts + 1
        job.progress, job.error = 0.0, ""
        kind, payload = job.kind, dict(job.payload)
    try:
        result = HANDLERS[kind](JobContext(db, job_id, services), payload)
    except Exception as exc:
        log.exception("job %s (%s) failed", job_id, kind)
        with db.transaction() as session:
            job = session.get(Job, job_id)
            assert job is not None  # noqa: S101
            job.status, job.finished_at = JobStatus.FAILED, utcnow()
            job.error = f"{exc.__class__.__name__}: {exc}"
            job.message = "failed"
            job.result = {"traceback": traceback.format_exc(limit=5)}
        return JobStatus.FAILED
    with db.transaction() as session:
        job = session.get(Job, job_id)
        assert job is not None  # noqa: S101
        job.status, job.finished_at, job.progress = JobStatus.DONE, utcnow(), 1.0
        job.result = result
        job.message = job.message or "done"
    return JobStatus.DONE


def list_jobs(session: Session, actor: Actor, limit: int = 100) -> list[Job]:
    """Jobs the actor may see: all for admins, else their own and their projects' jobs."""
    if actor.user is None:
        return []
    stmt = select(Job).order_by(Job.id.desc()).limit(limit)
    if not policy.can(session, actor, "admin.view_jobs"):
        visible = select(Project.id).where(policy.project_filter(actor, "project.view_jobs"))
        stmt = stmt.where(Job.project_id.in_(visible) | (Job.created_by_id == actor.user_id))
    return list(session.scalars(stmt))


def get_job(session: Session, actor: Actor, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None or not _may_view(session, actor, job):
        raise NotFound("no such job")
    return job


def _may_view(session: Session, actor: Actor, job: Job) -> bool:
    if actor.user is None:
        return False
    if policy.can(session, actor, "admin.view_jobs") or job.created_by_id == actor.user_id:
        return True
    project = session.get(Project, job.project_id) if job.project_id is not None else None
    return project is not None and policy.can(session, actor, "project.view_jobs", project)
