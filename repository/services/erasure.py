"""Erasure (GDPR Art. 17) by crypto-shredding.

Order matters and every step is safe to repeat:

1. consent is withdrawn (if it was not already), so the subject leaves the shareable set;
2. the subject's data key is destroyed (``store.destroy_subject_key``) — from this moment every
   copy of every object, including backups, is unreadable; this is its own transaction, so it
   holds even if a later step fails;
3. the encrypted objects are deleted from the store and marked deleted;
4. per-muscle metrics (derived personal data) are deleted;
5. the subject row keeps only its pseudonym and ``erased_at``; an audit tombstone records the
   pseudonym, date and reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from repository.errors import Conflict, ValidationError
from repository.models import Derivative, MuscleMetric, Project, Series, StoredObject, Visit
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit
from repository.services import consent as consent_service
from repository.services.context import Actor


def end_read_only_transaction(session: Session) -> None:
    """End ``session``'s transaction before the key ring writes on its own connection.

    On SQLite (WAL) a read transaction that started before another connection committed can
    no longer write ("database is locked"). Callers use this only before their first write;
    with ``expire_on_commit=False`` committing a read-only transaction changes nothing else.
    """
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("end_read_only_transaction called after changes were made")
    session.commit()


@dataclass(frozen=True)
class ErasureReport:
    pseudonym: str
    keys_destroyed: int
    objects_deleted: int
    metrics_deleted: int


def erase_subject(
    session: Session, actor: Actor, project: Project, pseudonym: str, *, reason: str, store: Any
) -> ErasureReport:
    """Crypto-shred and delete everything of one subject; leave an audit tombstone."""
    policy.require(session, actor, "project.erase_subject", project)
    reason = reason.strip()
    if len(reason) < 5:
        raise ValidationError("give the reason for the erasure (e.g. the participant's request)")
    subject = consent_service.find_subject(session, project, pseudonym)
    if subject.erased_at is not None:
        raise Conflict("this subject was already erased")
    visits = select(Visit.id).where(Visit.subject_id == subject.id)
    linked = (
        select(Series.object_id)
        .where(Series.visit_id.in_(visits))
        .union(select(Derivative.object_id).where(Derivative.visit_id.in_(visits)))
    )
    objects = session.scalars(
        select(StoredObject).where(
            or_(StoredObject.subject_id == subject.id, StoredObject.id.in_(linked)),
            StoredObject.deleted_at.is_(None),
        )
    ).all()
    keys = [o.key for o in objects]
    # Step 2 runs before any write in this session: on SQLite the key ring's own transaction
    # must neither wait for ours nor leave ours with a stale snapshot.
    end_read_only_transaction(session)
    destroyed = store.destroy_subject_key(subject.pseudonym)
    for key in keys:
        store.delete(key)
    current = consent_service.latest_consent(session, subject.id)
    if current is not None and current.withdrawn_on is None:
        consent_service.withdraw(
            session,
            actor,
            project,
            pseudonym,
            reason=f"erasure: {reason}",
            on=date.today(),
            action="project.erase_subject",
        )
    now = utcnow()
    for obj in objects:
        obj.deleted_at = now
    metrics = session.execute(
        delete(MuscleMetric)
        .where(MuscleMetric.subject_id == subject.id)
        .execution_options(synchronize_session=False)
    )
    metrics_deleted = int(getattr(metrics, "rowcount", 0) or 0)
    subject.erased_at = now
    session.flush()
    audit.record(
        session,
        actor,
        "subject.erase",
        object_type="subject",
        object_id=subject.id,
        project_id=project.id,
        details={
            "tombstone": True,
            "pseudonym": subject.pseudonym,
            "date": now.date(),
            "reason": reason,
            "keys_destroyed": destroyed,
            "objects_deleted": len(keys),
            "metrics_deleted": metrics_deleted,
        },
    )
    return ErasureReport(subject.pseudonym, destroyed, len(keys), metrics_deleted)
