"""The Celery application. Tasks are thin: they receive a job id and call the job service.

Broker: ``MYOVAULT_BROKER_URL`` (redis://… or amqp://…) in production; in the embedded default a
filesystem queue under the data directory, consumed by the local worker process that
``myovault serve`` starts — real Celery, no external service.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from celery import Celery, Task
from celery.schedules import schedule as every
from flask import Flask

from repository.config import is_embedded_broker

log = logging.getLogger(__name__)

#: Periodic work: Celery beat entry name -> (task name, config key of its interval in seconds).
#: Production runs ``myovault beat`` (one process); the embedded mode runs
#: :class:`EmbeddedScheduler` inside ``myovault serve``. Both go through :func:`enqueue_periodic`,
#: whose job key is the interval slot, so a second scheduler (or a restart) never runs a slot
#: twice.
PERIODIC: dict[str, tuple[str, str]] = {
    "access-reminders": ("myovault.periodic.access_reminders", "ACCESS_REMINDERS_INTERVAL_S"),
    "fixity-check": ("myovault.periodic.fixity_check", "FIXITY_INTERVAL_S"),
    "quarantine-purge": ("myovault.periodic.quarantine_purge", "QUARANTINE_PURGE_INTERVAL_S"),
}
#: Job kind enqueued by each periodic task.
PERIODIC_JOBS = {
    "myovault.periodic.access_reminders": "access.reminders",
    "myovault.periodic.fixity_check": "fixity.check",
    "myovault.periodic.quarantine_purge": "quarantine.purge",
}


def broker_options(config: dict[str, Any]) -> dict[str, Any]:
    if not is_embedded_broker(config):
        return {"broker_url": config["BROKER_URL"]}
    queue = Path(config["QUEUE_DIR"])
    for sub in ("in", "processed", "control"):
        (queue / sub).mkdir(parents=True, exist_ok=True)
    return {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(queue / "in"),
            "data_folder_out": str(queue / "in"),
            "processed_folder": str(queue / "processed"),
            "control_folder": str(queue / "control"),
            "store_processed": False,
        },
    }


def interval_s(config: Any, entry: str) -> int:
    seconds = int(config[PERIODIC[entry][1]])
    if seconds < 1:
        raise ValueError(f"{PERIODIC[entry][1]} must be at least 1 second, not {seconds}")
    return seconds


def beat_schedule(config: Any) -> dict[str, dict[str, Any]]:
    """The Celery beat schedule: every :data:`PERIODIC` entry at its configured interval."""
    return {
        name: {"task": task, "schedule": every(timedelta(seconds=interval_s(config, name)))}
        for name, (task, _) in PERIODIC.items()
    }


def enqueue_periodic(app: Flask, entry: str, now: datetime | None = None) -> int | None:
    """Queue the job of a periodic entry for the interval slot containing ``now``.

    Returns the new job's id, or ``None`` when this slot's job already exists (idempotent).
    """
    from repository.services import jobs
    from repository.services.context import SYSTEM

    task = PERIODIC[entry][0]
    kind = PERIODIC_JOBS[task]
    now = now or datetime.now(UTC)
    slot = int(now.timestamp()) // interval_s(app.config, entry)
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        queued = jobs.enqueue(
            session, SYSTEM, ext.dispatch, kind=kind, key=f"periodic:{entry}:{slot}"
        )
        return queued.job.id if queued.created else None


class EmbeddedScheduler:
    """Celery beat for the embedded mode: a daemon thread in ``myovault serve``.

    Each :data:`PERIODIC` entry is due at start and then once per interval; a due entry goes
    through :func:`enqueue_periodic` (the local worker then runs the job). ``clock`` and
    ``poll_s`` are injectable so tests need not wait a day.
    """

    def __init__(
        self,
        app: Flask,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        poll_s: float | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        #: how often the thread wakes up: a minute, or the shortest interval if shorter
        self.poll_s = poll_s or min(60.0, *(interval_s(app.config, e) for e in PERIODIC))
        self.next_due: dict[str, datetime] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> list[int]:
        """Enqueue every entry that is due now; return the ids of the jobs created."""
        now, created = self.clock(), []
        for entry in PERIODIC:
            if now < self.next_due.get(entry, now):
                continue
            self.next_due[entry] = now + timedelta(seconds=interval_s(self.app.config, entry))
            try:
                job_id = enqueue_periodic(self.app, entry, now)
            except Exception:  # a database hiccup must not kill the scheduler thread
                log.exception("periodic entry %s could not be queued", entry)
                self.next_due[entry] = now + timedelta(seconds=self.poll_s)
                continue
            if job_id is not None:
                created.append(job_id)
        return created

    def _run(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="myovault-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def make_celery(app: Flask) -> Celery:
    """A Celery app whose tasks run inside ``app``'s context (Flask's Celery pattern)."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask)
    celery.conf.update(
        task_acks_late=True,  # a worker killed mid-task leaves the message for another worker
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        beat_schedule=beat_schedule(app.config),
        **broker_options(app.config),
    )

    @celery.task(name="myovault.run_job", bind=True, max_retries=5, shared=False)
    def run_job(self: Task, job_id: int) -> str:
        from repository.services import jobs

        ext = app.extensions["myovault"]
        return jobs.run(ext.db, job_id, ext.services()).value

    def periodic_task(entry: str) -> Callable[[], int | None]:
        def send() -> int | None:
            """Sent by beat: queue this slot's job (its handler does the work)."""
            return enqueue_periodic(app, entry)

        return send

    for entry, (task_name, _) in PERIODIC.items():
        celery.task(name=task_name, shared=False)(periodic_task(entry))

    app.extensions["myovault.celery"] = celery
    return celery
