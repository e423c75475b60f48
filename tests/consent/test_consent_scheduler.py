"""Periodic access reminders: the Celery beat schedule (production) and the embedded scheduler
(`myovault serve`), with an injected clock instead of waiting a day."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from celery.schedules import schedule as every
from sqlalchemy import select

from repository.models import AccessRequest, Job, JobStatus, Notification
from repository.services import jobs
from repository.worker import PERIODIC, EmbeddedScheduler, beat_schedule, enqueue_periodic
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
    assert beat_schedule({**app.config, "ACCESS_REMINDERS_INTERVAL_S": 3600})["access-reminders"][
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


def _kinds(app, job_ids):
    with app.extensions["myovault"].db.transaction() as session:
        return sorted(session.scalars(select(Job.kind).where(Job.id.in_(job_ids))))


def test_embedded_scheduler_enqueues_when_due(app):
    now = [datetime(2026, 3, 1, 8, 0, tzinfo=UTC)]
    scheduler = EmbeddedScheduler(app, clock=lambda: now[0])
    first = scheduler.tick()
    # every periodic job is due at start: reminders (daily), fixity (weekly), purge (hourly)
    assert _kinds(app, first) == ["access.reminders", "fixity.check", "quarantine.purge"]
    assert scheduler.tick() == []  # not due again within the interval
    now[0] += timedelta(minutes=59)
    assert scheduler.tick() == []
    now[0] += timedelta(minutes=1)
    assert _kinds(app, scheduler.tick()) == ["quarantine.purge"]  # hourly
    now[0] += timedelta(hours=23)
    second = scheduler.tick()
    assert _kinds(app, second) == ["access.reminders", "quarantine.purge"]  # daily + hourly
    assert not set(second) & set(first)
    now[0] += 6 * DAY
    assert "fixity.check" in _kinds(app, scheduler.tick())  # weekly


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
        deadline = time.monotonic() + 10  # the first tick queues every periodic entry
        while len(queued) < len(PERIODIC) and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        scheduler.stop()
    with ext.db.transaction() as session:
        reminders = [j for j in queued if session.get(Job, j).kind == "access.reminders"]
    assert len(reminders) == 1
    assert jobs.run(ext.db, reminders[0], ext.services()) == JobStatus.DONE
    with ext.db.transaction() as session:
        assert session.get(AccessRequest, request_id).reminded_at is not None
        assert session.get(Job, reminders[0]).result == {"reminded": 1, "escalated": 0}
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


def test_fixity_and_quarantine_purge_are_scheduled_and_run(app):
    """Issue 4: a scheduled fixity check re-reads every object; the purge job honours retention."""
    celery = app.extensions["myovault.celery"]
    assert celery.conf.beat_schedule["fixity-check"]["schedule"].run_every == 7 * DAY
    assert celery.conf.beat_schedule["quarantine-purge"]["task"] in celery.tasks
    ext = app.extensions["myovault"]
    job_id = celery.tasks["myovault.periodic.fixity_check"].apply().get()
    assert jobs.run(ext.db, job_id, ext.services()) == JobStatus.DONE
    purge_id = enqueue_periodic(app, "quarantine-purge")
    assert jobs.run(ext.db, purge_id, ext.services()) == JobStatus.DONE
    with ext.db.transaction() as session:
        fixity = session.get(Job, job_id).result
        assert fixity["ok"] is True and fixity["problems"] == []
        assert session.get(Job, purge_id).result == {"deleted": 0}
