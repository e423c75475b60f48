"""Fixity: re-verify every stored object against the sha256 recorded when it was written.

Covers the ``stored_objects`` table (de-identified DICOM, ORMIR-MIDS files, derivatives) and the
quarantine chunks of uploads still in progress. Each object is streamed, authenticated and
re-hashed (:func:`repository.storage.check_fixity`); passing objects get ``verified_at``; the
run is audited with its summary. ``myovault fixity check`` and the ``fixity.check`` job call it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.models import StoredObject, UploadChunk
from repository.models._types import utcnow
from repository.services import audit
from repository.services.context import SYSTEM, Actor
from repository.services.jobs import JobContext, handler
from repository.storage import FixityReport, FixityStatus, check_fixity


def records(session: Session, *, include_quarantine: bool = True) -> list[tuple[str, str]]:
    """(key, sha256) of every live object MyoVault wrote."""
    rows = [
        (key, sha)
        for key, sha in session.execute(
            select(StoredObject.key, StoredObject.sha256)
            .where(StoredObject.deleted_at.is_(None))
            .order_by(StoredObject.id)
        ).all()
    ]
    if include_quarantine:
        rows += [
            (key, sha)
            for key, sha in session.execute(
                select(UploadChunk.key, UploadChunk.sha256).order_by(UploadChunk.id)
            ).all()
        ]
    return rows


def run_check(db: Any, store: Any, actor: Actor = SYSTEM) -> FixityReport:
    """Check every object; mark the good ones verified; audit the outcome."""
    with db.transaction() as session:
        todo = records(session)
    # subjects erased on purpose have destroyed keys: that is not damage
    report = check_fixity(store, todo, shredded_ok=True)
    bad = {p.key for p in report.problems if p.status is not FixityStatus.SHREDDED}
    with db.transaction() as session:
        now = utcnow()
        for obj in session.scalars(select(StoredObject).where(StoredObject.deleted_at.is_(None))):
            if obj.key not in bad:
                obj.verified_at = now
        audit.record(
            session,
            actor,
            "fixity.check",
            object_type="store",
            details={
                "checked": report.checked,
                "passed": report.passed,
                "bytes_read": report.bytes_read,
                "problems": [
                    {"key": p.key, "status": p.status.value, "detail": p.detail[:300]}
                    for p in report.problems[:100]
                ],
            },
        )
    return report


@handler("fixity.check")
def fixity_job(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Scheduled fixity check (e.g. nightly via ``myovault fixity check`` or a job)."""
    ctx.progress(0.05, "re-reading every stored object")
    report = run_check(ctx.db, ctx.services["store"])
    return {
        "ok": report.ok,
        "summary": report.summary(),
        "problems": [{"key": p.key, "status": p.status.value} for p in report.problems],
    }
