"""Periodic access reminders: the Celery beat schedule (production) and the embedded scheduler
(`myovault serve`), with an injected clock instead of waiting a day."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from celery.schedules import schedule as every
from sqlalchemy import select

from repository.models import AccessRequest, Job, JobStatus, Notification
from repository.services import jobs
from repository.worker import EmbeddedScheduler, beat_schedule, enqueue_periodic
from tests.consent.consent_helpers import add_subject, give_consent, user

DAY = timedelta(days=1)


def test_beat_schedule_runs_the_reminder_task_daily(app):
    celery = app.extensions["myovault.celery"]
    entry = celery.conf.beat_schedule["access-reminders"]
    assert entry["task"] == "myovault.periodic.access_reminders"
    assert isinstance(entry["schedule"], every)
    assert entry["schedule"].run_every == DAY
    assert "myovault.periodic.access_reminders" in celery.tasks
    # the interval is configuration, not code
    assert beat_schedule({"ACCESS_REMINDERS_INTERVAL_S": 3600})["access-reminders"][
        "schedule"
    ].run_every == timedelta(hours=1)


def test_beat_task_enqueues_the_reminder_job(app):
    """What beat sends: the task queues one ``access.reminders`` job per day (idempotent)."""
    task = app.extensions["myovault.celery"].tasks["myovault.periodic.access_reminders"]
    job_id = task.apply().get()
    assert job_id is not None
    assert app.config["DISPATCHED"] == [job_id]
    assert task.apply().get() is None  # the same day again: nothing new
    with app.extensions["myovault"].db.transaction() as session:
        job = session.get(Job, job_id)
        assert job.kind == "access.reminders" and job.status == JobStatus.QUEUED


def test_periodic_jobs_are_keyed_by_interval_slot(app):
    t0 = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)
    first = enqueue_periodic(app, "access-reminders", t0)
    assert first is not None
    assert enqueue_periodic(app, "access-reminders", t0 + timedelta(hours=20)) is None
    second = enqueue_periodic(app, "access-reminders", t0 + DAY)
    assert second not in (None, first)
    assert app.config["DISPATCHED"] == [first, second]


def test_embedded_scheduler_enqueues_when_due(app):
    now = [datetime(2026, 3, 1, 8, 0, tzinfo=UTC)]
    scheduler = EmbeddedScheduler(app, clock=lambda: now[0])
    first = scheduler.tick()
    assert len(first) == 1  # due at start
    assert scheduler.tick() == []  # not due again within the interval
    now[0] += timedelta(hours=23)
    assert scheduler.tick() == []
    now[0] += timedelta(hours=1)
    second = scheduler.tick()
    assert len(second) == 1 and second != first
    assert app.config["DISPATCHED"] == first + second
    with app.extensions["myovault"].db.transaction() as session:
        kinds = session.scalars(select(Job.kind).where(Job.id.in_(first + second))).all()
    assert kinds == ["access.reminders", "access.reminders"]


def test_embedded_scheduler_thread_runs_the_reminders_end_to_end(app, world):
    """The thread (short poll interval) queues the job; running it reminds the committee."""
    ext = app.extensions["myovault"]
    add_subject(app, "alpha", "S1", image=b"img" * 50, t2map=b"map" * 50)
    give_consent(app, world.emails["investigator"], "alpha", "S1", "GRU")
    from repository.models import Project
    from repository.services import access

    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == "alpha"))
        req = access.create_request(
            session,
            user(session, world.emails["researcher"]),
            project,
            purpose="Muscle fat fraction progression in a natural history study.",
            use={"purpose": "HMB"},
            institution="Uni Example",
            data_kinds=["metrics"],
            store=ext.store,
        )
        req.deadline_at = req.created_at - DAY  # overdue
        request_id = req.id
    dispatched = threading.Event()
    queued: list[int] = []

    def dispatch(job_id: int) -> None:
        queued.append(job_id)
        dispatched.set()

    ext.set_dispatcher(dispatch)
    scheduler = EmbeddedScheduler(app, poll_s=0.05)
    scheduler.start()
    try:
        assert dispatched.wait(10), "the embedded scheduler queued nothing"
    finally:
        scheduler.stop()
    assert len(queued) == 1
    assert jobs.run(ext.db, queued[0], ext.services()) == JobStatus.DONE
    with ext.db.transaction() as session:
        assert session.get(AccessRequest, request_id).reminded_at is not None
        assert session.get(Job, queued[0]).result == {"reminded": 1, "escalated": 0}
        kinds = session.scalars(select(Notification.kind)).all()
    assert any("remind" in k for k in kinds)


def test_production_runs_one_beat_process():
    """`myovault beat` exists; compose and the Helm chart run exactly one beat."""
    from pathlib import Path

    import yaml
    from click.testing import CliRunner

    from repository.cli import main

    result = CliRunner().invoke(main, ["beat", "--help"])
    assert result.exit_code == 0 and "periodic" in result.output
    infra = Path(__file__).resolve().parents[2] / "infra"
    beat = yaml.safe_load((infra / "docker-compose.yml").read_text())["services"]["beat"]
    assert beat["command"] == ["myovault", "beat"]
    assert beat["deploy"]["replicas"] == 1
    chart = (infra / "helm" / "myovault" / "templates" / "beat-deployment.yaml").read_text()
    assert 'command: ["myovault", "beat"]' in chart
    assert "replicas: 1" in chart and "type: Recreate" in chart


def test_embedded_scheduler_wakes_often_enough_for_its_interval(app):
    assert EmbeddedScheduler(app).poll_s == 60.0
    app.config["ACCESS_REMINDERS_INTERVAL_S"] = 5
    assert EmbeddedScheduler(app).poll_s == 5.0
