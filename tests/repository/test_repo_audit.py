"""The hash-chained audit log detects modified and deleted events."""

from __future__ import annotations

from click.testing import CliRunner
from sqlalchemy import delete, select, update

from repository.cli import main
from repository.models import AuditEvent
from repository.services import audit
from repository.services.context import SYSTEM


def _write_events(app, n: int = 5) -> None:
    with app.extensions["myovault"].db.transaction() as session:
        for i in range(n):
            audit.record(session, SYSTEM, "test.event", object_id=i, details={"i": i})


def _verify(app):
    with app.extensions["myovault"].db.transaction() as session:
        return audit.verify_chain(session)


def test_intact_chain_verifies(app, world):
    _write_events(app)
    report = _verify(app)
    assert report.ok and report.events >= 5


def test_modified_event_is_detected(app, world):
    _write_events(app)
    with app.extensions["myovault"].db.transaction() as session:
        session.execute(
            update(AuditEvent).where(AuditEvent.seq == 3).values(details={"i": "tampered"})
        )
    report = _verify(app)
    assert not report.ok
    assert any(p.seq == 3 and "modified" in p.problem for p in report.problems)


def test_deleted_event_is_detected(app, world):
    _write_events(app)
    with app.extensions["myovault"].db.transaction() as session:
        session.execute(delete(AuditEvent).where(AuditEvent.seq == 4))
    report = _verify(app)
    assert not report.ok
    assert any("missing" in p.problem for p in report.problems)


def test_rewritten_chain_with_recomputed_hash_still_breaks_the_link(app, world):
    _write_events(app)
    with app.extensions["myovault"].db.transaction() as session:
        event = session.scalar(select(AuditEvent).where(AuditEvent.seq == 2))
        event.details = {"forged": True}
        event.hash = audit.event_hash(event.prev_hash, event)
    report = _verify(app)
    assert any(p.seq == 3 and "link" in p.problem for p in report.problems)


def test_cli_verify_exit_codes(app, world, monkeypatch):
    for key in ("HOME", "DATABASE_URL", "SECRET_KEY"):
        monkeypatch.setenv(f"MYOVAULT_{key}", str(app.config[key]))
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "audit chain OK" in ok.output
    with app.extensions["myovault"].db.transaction() as session:
        session.execute(update(AuditEvent).where(AuditEvent.seq == 1).values(actor="mallory"))
    bad = runner.invoke(main, ["audit", "verify"])
    assert bad.exit_code == 1
    assert "event 1" in bad.output


def test_changes_are_audited_with_who_and_what(app, client, world):
    with app.extensions["myovault"].db.transaction() as session:
        actions = session.scalars(select(AuditEvent.action)).all()
    assert actions.count("user.create") == 6
    assert actions.count("project.create") == 2
    assert "project.member.add" in actions
