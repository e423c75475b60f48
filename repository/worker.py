"""The Celery application. Tasks are thin: they receive a job id and call the job service.

Broker: ``MYOVAULT_BROKER_URL`` (redis://… or amqp://…) in production; in the embedded default a
filesystem queue under the data directory, consumed by the local worker process that
``myovault serve`` starts — real Celery, no external service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery, Task
from flask import Flask

from repository.config import is_embedded_broker


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
        **broker_options(app.config),
    )

    @celery.task(name="myovault.run_job", bind=True, max_retries=5, shared=False)
    def run_job(self: Task, job_id: int) -> str:
        from repository.services import jobs

        ext = app.extensions["myovault"]
        return jobs.run(ext.db, job_id, ext.services()).value

    app.extensions["myovault.celery"] = celery
    return celery
