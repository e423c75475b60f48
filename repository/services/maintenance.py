"""Built-in maintenance jobs."""

from __future__ import annotations

from typing import Any

from repository.services import audit
from repository.services.jobs import JobContext, handler


@handler("audit.verify")
def verify_audit_chain(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Re-verify the audit hash chain; the result lists any problem found."""
    ctx.progress(0.1, "verifying the audit chain")
    with ctx.db.transaction() as session:
        report = audit.verify_chain(session)
    return {
        "ok": report.ok,
        "events": report.events,
        "head_hash": report.head_hash,
        "problems": [{"seq": p.seq, "problem": p.problem} for p in report.problems],
    }
