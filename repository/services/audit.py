"""Append-only audit log with a hash chain; ``verify_chain`` finds edits and deletions.

Events are written in the same transaction as the change they describe, so a change and its
audit event commit (or roll back) together. Writers are serialised while appending (an advisory
lock on PostgreSQL; SQLite serialises writers itself), so ``seq`` has no gaps and every event
names its predecessor's hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from repository.models import AuditEvent
from repository.models._types import utcnow
from repository.services.context import Actor

GENESIS_HASH = "0" * 64
_PG_LOCK_ID = 0x4D594F56  # "MYOV"


def _canonical(event: AuditEvent) -> bytes:
    body = {
        "seq": event.seq,
        "at": event.at.isoformat(timespec="microseconds"),
        "actor_id": event.actor_id,
        "actor": event.actor,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "project_id": event.project_id,
        "ip": event.ip,
        "details": event.details,
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


def event_hash(prev_hash: str, event: AuditEvent) -> str:
    return hashlib.sha256(prev_hash.encode() + _canonical(event)).hexdigest()


def record(
    session: Session,
    actor: Actor,
    action: str,
    *,
    object_type: str = "",
    object_id: str | int = "",
    project_id: int | None = None,
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain inside ``session``'s transaction."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_ID})
    last = session.execute(
        select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).first()
    seq, prev = (last[0] + 1, last[1]) if last else (1, GENESIS_HASH)
    event = AuditEvent(
        seq=seq,
        at=utcnow(),
        actor_id=actor.user_id,
        actor=actor.label,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        project_id=project_id,
        ip=actor.ip,
        details=json.loads(json.dumps(details or {}, default=str)),
        prev_hash=prev,
    )
    event.hash = event_hash(prev, event)
    session.add(event)
    session.flush()
    return event


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    problem: str


@dataclass(frozen=True)
class ChainReport:
    events: int
    problems: tuple[ChainProblem, ...]
    head_hash: str

    @property
    def ok(self) -> bool:
        return not self.problems


def _iter_events(session: Session, batch: int = 1000) -> Iterator[AuditEvent]:
    last_seq = 0
    while True:
        rows = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.seq > last_seq)
            .order_by(AuditEvent.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last_seq = rows[-1].seq


def verify_chain(session: Session) -> ChainReport:
    """Recompute every hash; report modified events, broken links and missing sequence numbers."""
    problems: list[ChainProblem] = []
    prev_hash, expected_seq, count = GENESIS_HASH, 1, 0
    for event in _iter_events(session):
        count += 1
        if event.seq != expected_seq:
            problems.append(
                ChainProblem(
                    expected_seq, f"events {expected_seq}..{event.seq - 1} are missing (deleted)"
                )
            )
        if event.prev_hash != prev_hash:
            problems.append(ChainProblem(event.seq, "link to the previous event is broken"))
        if event_hash(event.prev_hash, event) != event.hash:
            problems.append(
                ChainProblem(event.seq, "event content was modified after it was written")
            )
        prev_hash, expected_seq = event.hash, event.seq + 1
    return ChainReport(events=count, problems=tuple(problems), head_hash=prev_hash)


def recent(session: Session, limit: int = 50, project_id: int | None = None) -> list[AuditEvent]:
    stmt = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
    if project_id is not None:
        stmt = stmt.where(AuditEvent.project_id == project_id)
    return list(session.scalars(stmt))
