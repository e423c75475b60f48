"""Jobs: idempotent enqueue, dispatch after commit, state, and real Celery workers."""

from __future__ import annotations

import time

import pytest
from celery.contrib.testing.worker import start_worker

from repository.models import Job, JobStatus
from repository.services import jobs
from repository.services.context import SYSTEM
from tests.app_fixtures import make_test_app

CALLS: list[dict] = []


@jobs.handler("test.ok")
def _ok(ctx, payload):
    ctx.progress(0.5, "half way")
    CALLS.append(payload)
    return {"echo": payload.get("value")}


@jobs.handler("test.fail")
def _fail(ctx, payload):
    raise ValueError("bad input file")


def _enqueue(app, kind="test.ok", key=None, **payload):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        return jobs.enqueue(
            session, SYSTEM, ext.dispatch, kind=kind, payload=payload, key=key
        ).job.id


def test_dispatch_happens_after_commit_only(app):
    ext = app.extensions["myovault"]
    job_id = _enqueue(app, value=1)
    assert app.config["DISPATCHED"] == [job_id]
    with pytest.raises(RuntimeError), ext.db.transaction() as session:
        jobs.enqueue(session, SYSTEM, ext.dispatch, kind="test.ok")
        raise RuntimeError("rolled back")
    assert app.config["DISPATCHED"] == [job_id]
    with ext.db.transaction() as session:
        assert session.query(Job).count() == 1


def test_same_key_is_not_queued_twice(app):
    first = _enqueue(app, key="test.ok:sha256:abc", value=1)
    second = _enqueue(app, key="test.ok:sha256:abc", value=1)
    assert first == second
    assert app.config["DISPATCHED"] == [first]


def test_unknown_kind_is_refused(app):
    from repository.errors import ValidationError

    with pytest.raises(ValidationError):
        _enqueue(app, kind="no.such.kind")


def test_run_records_progress_result_and_failure(app):
    CALLS.clear()
    ext = app.extensions["myovault"]
    ok_id, fail_id = _enqueue(app, value=42), _enqueue(app, kind="test.fail")
    assert jobs.run(ext.db, ok_id, {}) is JobStatus.DONE
    assert jobs.run(ext.db, fail_id, {}) is JobStatus.FAILED
    with ext.db.transaction() as session:
        ok, failed = session.get(Job, ok_id), session.get(Job, fail_id)
        assert (ok.status, ok.progress, ok.result, ok.message) == (
            JobStatus.DONE,
            1.0,
            {"echo": 42},
            "half way",
        )
        assert failed.status is JobStatus.FAILED
        assert failed.error == "ValueError: bad input file"
    assert jobs.run(ext.db, ok_id, {}) is JobStatus.DONE  # finished jobs are not re-run
    assert CALLS.count({"value": 42}) == 1


def _run_through_worker(app) -> Job:
    ext = app.extensions["myovault"]
    ext.set_dispatcher(None)  # real Celery dispatch
    celery = app.extensions["myovault.celery"]
    with start_worker(celery, pool="solo", perform_ping_check=False, shutdown_timeout=20):
        job_id = _enqueue(app, kind="audit.verify")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with ext.db.transaction() as session:
                job = session.get(Job, job_id)
                if job.status in (JobStatus.DONE, JobStatus.FAILED):
                    return job
            time.sleep(0.2)
    pytest.fail("the worker did not finish the job within 60 s")


def test_embedded_worker_runs_a_real_task(tmp_path, sqlite_template):
    import shutil

    db = tmp_path / "db.sqlite"
    shutil.copy(sqlite_template, db)
    app = make_test_app(tmp_path, f"sqlite:///{db}")
    assert app.config["BROKER_URL"] == "filesystem://"
    job = _run_through_worker(app)
    assert job.status is JobStatus.DONE and job.result["ok"] is True


@pytest.mark.integration
def test_redis_worker_runs_a_real_task(tmp_path, sqlite_template, redis_url):
    import shutil

    db = tmp_path / "db.sqlite"
    shutil.copy(sqlite_template, db)
    app = make_test_app(tmp_path, f"sqlite:///{db}", BROKER_URL=redis_url)
    assert app.extensions["myovault"].broker_problem() is None
    job = _run_through_worker(app)
    assert job.status is JobStatus.DONE and job.result["ok"] is True


@pytest.mark.integration
def test_rabbitmq_worker_runs_a_real_task(tmp_path, sqlite_template, amqp_url):
    import shutil

    db = tmp_path / "db.sqlite"
    shutil.copy(sqlite_template, db)
    app = make_test_app(tmp_path, f"sqlite:///{db}", BROKER_URL=amqp_url)
    job = _run_through_worker(app)
    assert job.status is JobStatus.DONE and job.result["ok"] is True
