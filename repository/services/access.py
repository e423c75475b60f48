"""Access requests, the data-access committee (comments, votes, decision rule), and grants.

A request names a cohort (a whole project or a cohort snapshot), a purpose, an intended use in
DUO terms and the data wanted. Only subjects whose current consent covers the use are
included; the requester sees how many were excluded and why, never who. Committee members
discuss and vote; a decision is recorded only when the project's rule (majority, unanimity or
quorum) supports it. Approval creates a time-limited grant that becomes active when the
requester accepts the data-use agreement; revocation and expiry apply at once because every
check reads the grant row (see ``policy``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consent.duo import IntendedUse, mismatches, parse_consent_terms
from consent.errors import ConsentError
from repository import models
from repository.errors import Conflict, Forbidden, NotFound, ValidationError
from repository.models import (
    AccessRequest,
    Comment,
    Consent,
    DacSettings,
    Decision,
    Grant,
    Membership,
    Project,
    Role,
    StoredObject,
    Subject,
    User,
    Visit,
    Vote,
)
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit, notify
from repository.services.consent import consent_status
from repository.services.context import SYSTEM, Actor
from repository.services.erasure import end_read_only_transaction
from repository.services.jobs import JobContext, handler

DATA_KINDS = ("images", "maps", "metrics")
RULES = ("majority", "unanimity", "quorum")
VOTES = ("approve", "refuse", "abstain")
DEFAULT_DEADLINE_DAYS = 14
ESCALATE_AFTER_DAYS = 7
MAX_DURATION_DAYS = 5 * 365
SMALL_CELL = 5

# Exclusion reasons that do not come from DUO matching.
NO_CONSENT = "no consent recorded"
WITHDRAWN = "consent withdrawn"
EXPIRED = "consent expired"
ERASED = "participant data erased"
UNREADABLE = "consent terms not understood"
#: Registered with consent before their images were uploaded: nothing to share yet, so they are
#: not part of a cohort (a grant never covers data that arrive after the committee decided).
NO_DATA = "no data uploaded yet"


def suppress(n: int) -> int | str:
    """Disclosure control for requesters, as in search (DESIGN §4): 1–4 become ``"<5"``, larger
    counts are rounded to a multiple of 5. Zero stays zero: it reveals nobody, and a requester
    must learn that no consent covers their use."""
    if n == 0:
        return 0
    if n < SMALL_CELL:
        return f"<{SMALL_CELL}"
    return max(SMALL_CELL, SMALL_CELL * round(n / SMALL_CELL))


# --- settings ----------------------------------------------------------------------------------


def settings_for(session: Session, project: Project) -> DacSettings:
    """The project's committee settings (defaults if none were saved; not added to the session)."""
    row = session.scalar(select(DacSettings).where(DacSettings.project_id == project.id))
    if row is not None:
        return row
    return DacSettings(
        project_id=project.id,
        rule="majority",
        quorum=2,
        deadline_days=DEFAULT_DEADLINE_DAYS,
        grant_days=365,
        conditions="",
    )


def update_settings(
    session: Session,
    actor: Actor,
    project: Project,
    *,
    rule: str,
    quorum: int,
    deadline_days: int,
    grant_days: int,
    conditions: str = "",
) -> DacSettings:
    policy.require(session, actor, "project.manage_dac", project)
    if rule not in RULES:
        raise ValidationError(f"decision rule must be one of {', '.join(RULES)}")
    if not 1 <= quorum <= 50:
        raise ValidationError("quorum must be between 1 and 50")
    if not 1 <= deadline_days <= 365:
        raise ValidationError("deadline must be 1–365 days")
    if not 1 <= grant_days <= MAX_DURATION_DAYS:
        raise ValidationError(f"grant duration must be 1–{MAX_DURATION_DAYS} days")
    row = session.scalar(select(DacSettings).where(DacSettings.project_id == project.id))
    if row is None:
        row = DacSettings(project_id=project.id)
        session.add(row)
    row.rule, row.quorum, row.deadline_days, row.grant_days = (
        rule,
        quorum,
        deadline_days,
        grant_days,
    )
    row.conditions, row.updated_at = conditions.strip(), utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "dac.settings",
        object_type="project",
        object_id=project.id,
        project_id=project.id,
        details={
            "rule": rule,
            "quorum": quorum,
            "deadline_days": deadline_days,
            "grant_days": grant_days,
        },
    )
    return row


# --- matching ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class MatchResult:
    candidates: int
    matched_ids: tuple[int, ...]
    exclusions: dict[str, int] = field(default_factory=dict)  # reason -> subjects

    @property
    def excluded(self) -> int:
        return self.candidates - len(self.matched_ids)

    def public(self) -> dict[str, Any]:
        """Counts for the requester, with small cells suppressed."""
        return {
            "candidates": suppress(self.candidates),
            "matched": suppress(len(self.matched_ids)),
            "excluded": suppress(self.excluded),
            "exclusions": {k: suppress(v) for k, v in sorted(self.exclusions.items())},
        }


def _snapshot_subject_ids(session: Session, project: Project, snapshot_id: int) -> list[int]:
    snapshot_model = getattr(models, "CohortSnapshot", None)
    if snapshot_model is None:
        raise ValidationError("cohort snapshots are not available in this installation")
    snapshot = session.get(snapshot_model, snapshot_id)
    if snapshot is None or snapshot.project_id != project.id:
        raise NotFound("no such cohort snapshot in this project")
    return [int(i) for i in snapshot.subject_ids]


def evaluate(
    session: Session,
    project: Project,
    use: IntendedUse,
    *,
    snapshot_id: int | None = None,
    restrict_to: Iterable[int] | None = None,
    today: date | None = None,
) -> MatchResult:
    """Which subjects' current consent covers ``use``; reasons counted per excluded subject."""
    today = today or date.today()
    stmt = select(Subject).where(Subject.project_id == project.id)
    if snapshot_id is not None:
        stmt = stmt.where(Subject.id.in_(_snapshot_subject_ids(session, project, snapshot_id)))
    if restrict_to is not None:
        stmt = stmt.where(Subject.id.in_(list(restrict_to)))
    subjects = session.scalars(stmt.order_by(Subject.id)).all()
    with_data = set(
        session.scalars(
            select(Visit.subject_id)
            .where(Visit.subject_id.in_([s.id for s in subjects]))
            .distinct()
        )
    )
    latest = (
        select(Consent.subject_id, func.max(Consent.version).label("v"))
        .group_by(Consent.subject_id)
        .subquery()
    )
    consents = {
        c.subject_id: c
        for c in session.scalars(
            select(Consent)
            .join(
                latest,
                (Consent.subject_id == latest.c.subject_id) & (Consent.version == latest.c.v),
            )
            .where(Consent.subject_id.in_([s.id for s in subjects]))
        )
    }
    matched: list[int] = []
    reasons: Counter[str] = Counter()
    for subject in subjects:
        if subject.erased_at is not None:
            reasons[ERASED] += 1
            continue
        if subject.id not in with_data:
            reasons[NO_DATA] += 1
            continue
        consent = consents.get(subject.id)
        status = consent_status(consent, today)
        if status != "active":
            reasons[{"none": NO_CONSENT, "withdrawn": WITHDRAWN, "expired": EXPIRED}[status]] += 1
            continue
        assert consent is not None  # noqa: S101  (status active)
        try:
            terms = parse_consent_terms([str(t) for t in consent.duo_terms])
        except ConsentError:
            reasons[UNREADABLE] += 1
            continue
        problems = mismatches(terms, use)
        if problems:
            reasons.update(set(problems))
        else:
            matched.append(subject.id)
    return MatchResult(len(subjects), tuple(matched), dict(reasons))


# --- requests ----------------------------------------------------------------------------------


def _data_kinds(kinds: Sequence[str]) -> str:
    chosen = sorted({k.strip().lower() for k in kinds if k.strip()})
    unknown = [k for k in chosen if k not in DATA_KINDS]
    if unknown or not chosen:
        raise ValidationError(f"data requested must be some of {', '.join(DATA_KINDS)}")
    return ",".join(k for k in DATA_KINDS if k in chosen)


def intended_use(actor: Actor, institution: str, use: dict[str, Any]) -> IntendedUse:
    """Build the intended use; the user and institution come from the request, not the form."""
    try:
        return IntendedUse.from_json(
            {**use, "user": actor.user.email if actor.user else "", "institution": institution}
        )
    except ConsentError as exc:
        raise ValidationError(str(exc)) from None


def requestable_project(session: Session, actor: Actor, slug: str) -> Project:
    """The project named ``slug`` if the actor may see it *and* request access (404 first)."""
    from repository.services.projects import get_project

    project = get_project(session, actor, slug, "project.view_metadata")
    policy.require(session, actor, "project.request_access", project)
    return project


def preview(
    session: Session,
    actor: Actor,
    project: Project,
    *,
    use: dict[str, Any],
    institution: str = "",
    snapshot_id: int | None = None,
) -> MatchResult:
    policy.require(session, actor, "project.view_metadata", project)
    policy.require(session, actor, "project.request_access", project)
    return evaluate(
        session, project, intended_use(actor, institution, use), snapshot_id=snapshot_id
    )


def create_request(
    session: Session,
    actor: Actor,
    project: Project,
    *,
    purpose: str,
    use: dict[str, Any],
    institution: str,
    data_kinds: Sequence[str],
    duration_days: int = 365,
    snapshot_id: int | None = None,
    ethics_document: bytes | None = None,
    store: Any = None,
) -> AccessRequest:
    """File a request. The ethics approval (if any) is stored encrypted before any write here."""
    policy.require(session, actor, "project.view_metadata", project)
    policy.require(session, actor, "project.request_access", project)
    assert actor.user is not None  # noqa: S101  (request_access needs an account)
    purpose = purpose.strip()
    if len(purpose) < 20:
        raise ValidationError("describe the purpose of the research (at least 20 characters)")
    institution = institution.strip()
    if not institution:
        raise ValidationError("your institution is required")
    if not 1 <= duration_days <= MAX_DURATION_DAYS:
        raise ValidationError(f"duration must be 1–{MAX_DURATION_DAYS} days")
    levels = _data_kinds(data_kinds)
    if ethics_document:
        use = {**use, "ethics_approval": True}
    elif use.get("ethics_approval"):
        raise ValidationError("upload the ethics approval you declare")
    the_use = intended_use(actor, institution, use)
    existing = session.scalar(
        select(AccessRequest.id).where(
            AccessRequest.project_id == project.id,
            AccessRequest.requester_id == actor.user.id,
            AccessRequest.status == "pending",
        )
    )
    if existing is not None:
        raise Conflict(f"you already have a pending request (#{existing}) for this project")
    result = evaluate(session, project, the_use, snapshot_id=snapshot_id)
    if not result.matched_ids:
        raise ValidationError(
            "no participant's consent covers this use; excluded: "
            + "; ".join(f"{k}: {suppress(v)}" for k, v in sorted(result.exclusions.items()))
        )
    ethics_object_id = None
    if ethics_document:
        if store is None:
            raise ValueError("a store is needed to keep the ethics approval")
        if len(ethics_document) > 20 * 1024 * 1024:
            raise ValidationError("the ethics approval must be at most 20 MiB")
        end_read_only_transaction(session)  # the store may create a data key (own connection)
        info = store.put(
            f"access/ethics/{uuid.uuid4().hex}", ethics_document, subject="access-requests"
        )
        obj = StoredObject(
            key=info.key,
            size=info.size,
            sha256=info.sha256,
            key_id=info.key_id,
            kind="ETHICS_APPROVAL",
            content_type="application/octet-stream",
        )
        session.add(obj)
        session.flush()
        ethics_object_id = obj.id
    settings = settings_for(session, project)
    req = AccessRequest(
        project_id=project.id,
        requester_id=actor.user.id,
        purpose=purpose,
        duo_terms=[the_use.purpose],
        institution=institution,
        data_level=levels,
        query={"snapshot_id": snapshot_id} if snapshot_id else {"project": project.slug},
        status="pending",
        snapshot_id=snapshot_id,
        intended_use=the_use.to_json(),
        matched_subject_ids=list(result.matched_ids),
        exclusions=result.exclusions,
        ethics_object_id=ethics_object_id,
        duration_days=duration_days,
        deadline_at=utcnow() + timedelta(days=settings.deadline_days),
    )
    session.add(req)
    session.flush()
    audit.record(
        session,
        actor,
        "access.request",
        object_type="access_request",
        object_id=req.id,
        project_id=project.id,
        details={
            "intended_use": req.intended_use,
            "data": levels,
            "snapshot_id": snapshot_id,
            "matched": len(result.matched_ids),
            "excluded": result.excluded,
        },
    )
    notify.notify(
        session,
        notify.project_members(session, project.id, Role.DAC_MEMBER),
        kind="access.new_request",
        subject=f"[MyoVault] New access request #{req.id} for {project.title}",
        body=(
            f"{actor.user.name} ({institution}) requests {levels} for {len(result.matched_ids)} "
            f"participants. Please review it before {req.deadline_at:%Y-%m-%d}."
        ),
        project_id=project.id,
    )
    return req


def _may_review(session: Session, actor: Actor, project: Project) -> bool:
    return policy.can(session, actor, "project.review_requests", project)


def _may_see(session: Session, actor: Actor, req: AccessRequest, project: Project) -> bool:
    if actor.user is None:
        return False
    if req.requester_id == actor.user.id:
        return True
    return any(
        policy.can(session, actor, action, project)
        for action in ("project.review_requests", "project.manage_dac", "project.manage_grants")
    )


def get_request(session: Session, actor: Actor, request_id: int) -> AccessRequest:
    """The request if the actor is its requester or oversees the project; else 404."""
    req = session.get(AccessRequest, request_id)
    if req is None:
        raise NotFound("no such access request")
    project = session.get(Project, req.project_id)
    if project is None or not _may_see(session, actor, req, project):
        raise NotFound("no such access request")
    return req


@dataclass(frozen=True)
class EthicsDocument:
    request_id: int
    object: StoredObject
    content_type: str  # application/pdf when the bytes are a PDF, else octet-stream

    @property
    def filename(self) -> str:
        ext = ".pdf" if self.content_type == "application/pdf" else ".bin"
        return f"ethics-approval-request-{self.request_id}{ext}"


def ethics_document(session: Session, actor: Actor, request_id: int) -> EthicsDocument:
    """The ethics approval uploaded with a request: for its requester, the project's DAC members
    and owners only. Others who may see the request get 403; anyone else 404 (as for the
    request itself), and a request without an approval answers 404."""
    req = get_request(session, actor, request_id)
    project = session.get(Project, req.project_id)
    assert project is not None  # noqa: S101
    is_requester = actor.user is not None and actor.user.id == req.requester_id
    if not is_requester and not policy.can(session, actor, "project.view_ethics_approval", project):
        raise Forbidden("only the requester, the committee and the owners see the ethics approval")
    obj = session.get(StoredObject, req.ethics_object_id) if req.ethics_object_id else None
    if obj is None or obj.deleted_at is not None:
        raise NotFound("this request has no ethics approval")
    return EthicsDocument(req.id, obj, "application/octet-stream")


def read_ethics_document(
    session: Session, actor: Actor, request_id: int, store: Any
) -> tuple[EthicsDocument, bytes]:
    """The approval's bytes (checked against their SHA-256); the read is audited."""
    doc = ethics_document(session, actor, request_id)
    data = bytes(store.read_bytes(doc.object.key, expected_sha256=doc.object.sha256))
    kind = "application/pdf" if data.startswith(b"%PDF-") else "application/octet-stream"
    req = session.get(AccessRequest, request_id)
    assert req is not None  # noqa: S101
    audit.record(
        session,
        actor,
        "access.ethics_download",
        object_type="access_request",
        object_id=request_id,
        project_id=req.project_id,
        details={"sha256": doc.object.sha256, "size": doc.object.size},
    )
    return EthicsDocument(doc.request_id, doc.object, kind), data


def my_requests(session: Session, actor: Actor) -> list[AccessRequest]:
    if actor.user is None:
        return []
    return list(
        session.scalars(
            select(AccessRequest)
            .where(AccessRequest.requester_id == actor.user.id)
            .order_by(AccessRequest.id.desc())
        )
    )


def review_queue(
    session: Session, actor: Actor, *, pending_only: bool = True
) -> list[AccessRequest]:
    """Requests of every project where the actor sits on the committee."""
    if actor.user is None:
        return []
    projects = select(Project.id).where(policy.project_filter(actor, "project.review_requests"))
    stmt = select(AccessRequest).where(AccessRequest.project_id.in_(projects))
    if pending_only:
        stmt = stmt.where(AccessRequest.status == "pending")
    return list(session.scalars(stmt.order_by(AccessRequest.created_at)))


def project_requests(session: Session, actor: Actor, project: Project) -> list[AccessRequest]:
    if not (
        policy.can(session, actor, "project.review_requests", project)
        or policy.can(session, actor, "project.manage_dac", project)
    ):
        policy.require(session, actor, "project.review_requests", project)
    return list(
        session.scalars(
            select(AccessRequest)
            .where(AccessRequest.project_id == project.id)
            .order_by(AccessRequest.id.desc())
        )
    )


def _pending(req: AccessRequest) -> None:
    if req.status != "pending":
        raise Conflict(f"this request is already {req.status}")


def _reviewable(
    session: Session, actor: Actor, request_id: int, action: str
) -> tuple[AccessRequest, Project]:
    req = get_request(session, actor, request_id)
    project = session.get(Project, req.project_id)
    assert project is not None  # noqa: S101  (foreign key)
    policy.require(session, actor, action, project)
    if actor.user is not None and req.requester_id == actor.user.id:
        raise Forbidden("you cannot review your own request")
    return req, project


def add_comment(session: Session, actor: Actor, request_id: int, body: str) -> Comment:
    req, project = _reviewable(session, actor, request_id, "project.review_requests")
    body = body.strip()
    if not 1 <= len(body) <= 5000:
        raise ValidationError("a comment has 1–5000 characters")
    assert actor.user is not None  # noqa: S101
    row = Comment(request_id=req.id, user_id=actor.user.id, body=body)
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor,
        "access.comment",
        object_type="access_request",
        object_id=req.id,
        project_id=project.id,
        details={"comment_id": row.id},
    )
    return row


def comments(session: Session, actor: Actor, req: AccessRequest) -> list[Comment]:
    project = session.get(Project, req.project_id)
    if project is None or not _may_review(session, actor, project):
        return []
    return list(
        session.scalars(select(Comment).where(Comment.request_id == req.id).order_by(Comment.id))
    )


def cast_vote(session: Session, actor: Actor, request_id: int, vote: str, reason: str = "") -> Vote:
    req, project = _reviewable(session, actor, request_id, "project.review_requests")
    _pending(req)
    if vote not in VOTES:
        raise ValidationError(f"vote must be one of {', '.join(VOTES)}")
    assert actor.user is not None  # noqa: S101
    row = session.scalar(
        select(Vote).where(Vote.request_id == req.id, Vote.user_id == actor.user.id)
    )
    previous = row.vote if row is not None else None
    if row is None:
        row = Vote(request_id=req.id, user_id=actor.user.id, vote=vote)
        session.add(row)
    row.vote, row.reason, row.created_at = vote, reason.strip(), utcnow()
    session.flush()
    audit.record(
        session,
        actor,
        "access.vote",
        object_type="access_request",
        object_id=req.id,
        project_id=project.id,
        details={"vote": vote, "previous": previous, "reason": row.reason},
    )
    return row


def votes(session: Session, actor: Actor, req: AccessRequest) -> list[Vote]:
    project = session.get(Project, req.project_id)
    if project is None or not _may_review(session, actor, project):
        return []
    return list(session.scalars(select(Vote).where(Vote.request_id == req.id).order_by(Vote.id)))


@dataclass(frozen=True)
class Tally:
    rule: str
    members: int
    approve: int
    refuse: int
    abstain: int
    quorum: int
    outcome: str | None  # approved | refused | None (not decided yet)

    @property
    def summary(self) -> str:
        return (
            f"{self.approve} approve, {self.refuse} refuse, {self.abstain} abstain of "
            f"{self.members} members ({self.rule}"
            + (f", quorum {self.quorum})" if self.rule == "quorum" else ")")
        )


def decide_rule(
    rule: str, members: int, approve: int, refuse: int, abstain: int, quorum: int
) -> str | None:
    """The outcome the votes support under ``rule``, or None while it is still open.

    - majority: approved when more than half of all members approve; refused when that can no
      longer happen.
    - unanimity: approved when every member approves; refused by any refusal.
    - quorum: once at least ``quorum`` approve/refuse votes are cast, the majority of those
      decides (a tie refuses).
    """
    if members <= 0:
        return None
    if rule == "majority":
        if approve * 2 > members:
            return "approved"
        undecided = members - approve - refuse - abstain
        if (approve + undecided) * 2 <= members:
            return "refused"
        return None
    if rule == "unanimity":
        if refuse > 0 or abstain > 0:
            return "refused"
        return "approved" if approve == members else None
    if rule == "quorum":
        if approve + refuse < quorum:
            return None
        return "approved" if approve > refuse else "refused"
    raise ValueError(f"unknown decision rule {rule!r}")


def tally(session: Session, req: AccessRequest) -> Tally:
    project = session.get(Project, req.project_id)
    assert project is not None  # noqa: S101
    settings = settings_for(session, project)
    member_ids = set(
        session.scalars(
            select(Membership.user_id).where(
                Membership.project_id == project.id, Membership.role == Role.DAC_MEMBER
            )
        )
    ) - {req.requester_id}
    counts: Counter[str] = Counter(
        v.vote
        for v in session.scalars(select(Vote).where(Vote.request_id == req.id))
        if v.user_id in member_ids
    )
    outcome = decide_rule(
        settings.rule,
        len(member_ids),
        counts["approve"],
        counts["refuse"],
        counts["abstain"],
        settings.quorum,
    )
    return Tally(
        settings.rule,
        len(member_ids),
        counts["approve"],
        counts["refuse"],
        counts["abstain"],
        settings.quorum,
        outcome,
    )


def _conditions_text(project: Project, settings: DacSettings, req: AccessRequest) -> str:
    use = req.intended_use
    lines = [
        f"Data-use agreement for grant on project {project.title} ({project.slug}).",
        f"Licence: {project.licence or 'as agreed with the data controller'}.",
        f"Purpose: {req.purpose}",
        f"Permitted use: {use.get('purpose')}"
        + (f" (disease: {use.get('disease')})" if use.get("disease") else "")
        + ("; commercial use" if use.get("commercial") else "; non-commercial use only"),
        "Do not attempt to re-identify participants; do not link with other data to that end.",
        "Keep the data secure, do not pass it on, and delete it when the grant ends or is revoked.",
        "Delete the data of participants who withdraw when MyoVault notifies you.",
    ]
    for obligation in use.get("accepts") or []:
        lines.append(f"Obligation accepted: {obligation}.")
    for condition in project.data_use_conditions or []:
        lines.append(f"Project condition: {condition}")
    if settings.conditions:
        lines.append(settings.conditions)
    return "\n".join(lines)


def decide(session: Session, actor: Actor, request_id: int, outcome: str, reason: str) -> Decision:
    """Record the committee's decision; only an outcome the votes support can be recorded."""
    req, project = _reviewable(session, actor, request_id, "project.decide_requests")
    _pending(req)
    if outcome not in ("approved", "refused"):
        raise ValidationError("outcome must be approved or refused")
    reason = reason.strip()
    if len(reason) < 5:
        raise ValidationError("give the reason for the decision")
    result = tally(session, req)
    if result.outcome != outcome:
        raise Conflict(f"the votes do not support '{outcome}' yet: {result.summary}")
    assert actor.user is not None  # noqa: S101
    decision = Decision(
        request_id=req.id, decided_by_id=actor.user.id, outcome=outcome, reason=reason
    )
    session.add(decision)
    req.status, req.decided_at = outcome, utcnow()
    session.flush()
    grant = None
    if outcome == "approved":
        settings = settings_for(session, project)
        use = IntendedUse.from_json(req.intended_use)
        current = evaluate(
            session, project, use, restrict_to=[int(i) for i in req.matched_subject_ids]
        )
        days = min(req.duration_days, settings.grant_days)
        grant = Grant(
            request_id=req.id,
            user_id=req.requester_id,
            project_id=project.id,
            data_level=req.data_level,
            expires_at=utcnow() + timedelta(days=days),
            snapshot_id=req.snapshot_id,
            subject_ids=list(current.matched_ids),
            conditions=_conditions_text(project, settings, req),
        )
        session.add(grant)
        session.flush()
    audit.record(
        session,
        actor,
        "access.decide",
        object_type="access_request",
        object_id=req.id,
        project_id=project.id,
        details={
            "outcome": outcome,
            "reason": reason,
            "tally": result.summary,
            "grant_id": grant.id if grant else None,
            "subjects": len(grant.subject_ids) if grant else 0,
        },
    )
    requester = session.get(User, req.requester_id)
    if requester is not None:
        notify.notify(
            session,
            [requester],
            kind=f"access.{outcome}",
            subject=f"[MyoVault] Your access request #{req.id} was {outcome}",
            body=(
                f"The data-access committee of {project.title} {outcome} your request #{req.id}.\n"
                f"Reason: {reason}\n"
                + (
                    f"Accept the data-use agreement of grant #{grant.id} to activate it; it "
                    f"expires on {grant.expires_at:%Y-%m-%d}."
                    if grant
                    else ""
                )
            ),
            project_id=project.id,
        )
    return decision


def cancel_request(session: Session, actor: Actor, request_id: int) -> AccessRequest:
    req = get_request(session, actor, request_id)
    if actor.user is None or req.requester_id != actor.user.id:
        raise Forbidden("only the requester can withdraw a request")
    _pending(req)
    req.status = "withdrawn"
    audit.record(
        session,
        actor,
        "access.cancel",
        object_type="access_request",
        object_id=req.id,
        project_id=req.project_id,
    )
    return req


def decision_of(session: Session, req: AccessRequest) -> Decision | None:
    return session.scalar(
        select(Decision).where(Decision.request_id == req.id).order_by(Decision.id.desc())
    )


# --- grants ------------------------------------------------------------------------------------


def grant_state(grant: Grant, now: datetime | None = None) -> str:
    """``awaiting_agreement`` | ``active`` | ``expired`` | ``revoked``."""
    now = now or utcnow()
    if grant.revoked_at is not None:
        return "revoked"
    if grant.expires_at <= now:
        return "expired"
    if grant.conditions_accepted_at is None:
        return "awaiting_agreement"
    return "active"


def get_grant(session: Session, actor: Actor, grant_id: int) -> Grant:
    """The grant if the actor holds it or manages the project's grants; else 404."""
    grant = session.get(Grant, grant_id)
    if grant is None or actor.user is None:
        raise NotFound("no such grant")
    if grant.user_id == actor.user.id:
        return grant
    project = session.get(Project, grant.project_id)
    if project is None or not policy.can(session, actor, "project.manage_grants", project):
        raise NotFound("no such grant")
    return grant


def accept_conditions(session: Session, actor: Actor, grant_id: int) -> Grant:
    grant = get_grant(session, actor, grant_id)
    if actor.user is None or grant.user_id != actor.user.id:
        raise Forbidden("only the grant holder can accept its data-use agreement")
    state = grant_state(grant)
    if state != "awaiting_agreement":
        raise Conflict(f"this grant is {state.replace('_', ' ')}")
    grant.conditions_accepted_at = utcnow()
    audit.record(
        session,
        actor,
        "grant.accept_conditions",
        object_type="grant",
        object_id=grant.id,
        project_id=grant.project_id,
        details={"expires_at": grant.expires_at},
    )
    return grant


def revoke_grant(session: Session, actor: Actor, grant_id: int, reason: str) -> Grant:
    grant = get_grant(session, actor, grant_id)
    project = session.get(Project, grant.project_id)
    assert project is not None  # noqa: S101
    policy.require(session, actor, "project.manage_grants", project)
    if grant.revoked_at is not None:
        raise Conflict("this grant is already revoked")
    reason = reason.strip()
    if len(reason) < 5:
        raise ValidationError("give the reason for revoking the grant")
    grant.revoked_at, grant.revoke_reason = utcnow(), reason
    audit.record(
        session,
        actor,
        "grant.revoke",
        object_type="grant",
        object_id=grant.id,
        project_id=project.id,
        details={"reason": reason},
    )
    holder = session.get(User, grant.user_id)
    if holder is not None:
        notify.notify(
            session,
            [holder],
            kind="grant.revoked",
            subject=f"[MyoVault] Your grant #{grant.id} on {project.title} was revoked",
            body=f"Reason: {reason}\nStop using the data and delete your copies.",
            project_id=project.id,
        )
    return grant


def my_grants(session: Session, actor: Actor) -> list[Grant]:
    if actor.user is None:
        return []
    return list(
        session.scalars(
            select(Grant).where(Grant.user_id == actor.user.id).order_by(Grant.id.desc())
        )
    )


def project_grants(session: Session, actor: Actor, project: Project) -> list[Grant]:
    policy.require(session, actor, "project.manage_grants", project)
    return list(
        session.scalars(
            select(Grant).where(Grant.project_id == project.id).order_by(Grant.id.desc())
        )
    )


# --- reminders and escalation (a job) ----------------------------------------------------------


def process_overdue(session: Session, now: datetime | None = None) -> dict[str, int]:
    """Remind the committee of requests pending past their deadline; escalate to the owners
    when still pending :data:`ESCALATE_AFTER_DAYS` after the reminder. Idempotent."""
    now = now or utcnow()
    reminded = escalated = 0
    pending = session.scalars(
        select(AccessRequest).where(
            AccessRequest.status == "pending",
            AccessRequest.deadline_at.is_not(None),
            AccessRequest.deadline_at <= now,
        )
    ).all()
    for req in pending:
        project = session.get(Project, req.project_id)
        assert project is not None  # noqa: S101
        if req.reminded_at is None:
            notify.notify(
                session,
                [
                    u
                    for u in notify.project_members(session, project.id, Role.DAC_MEMBER)
                    if u.id != req.requester_id
                ],
                kind="access.reminder",
                subject=f"[MyoVault] Reminder: access request #{req.id} is past its deadline",
                body=(
                    f"Request #{req.id} on {project.title} has been pending since "
                    f"{req.created_at:%Y-%m-%d}; its deadline was {req.deadline_at:%Y-%m-%d}."
                ),
                project_id=project.id,
            )
            req.reminded_at = now
            reminded += 1
            audit.record(
                session,
                SYSTEM,
                "access.remind",
                object_type="access_request",
                object_id=req.id,
                project_id=project.id,
            )
        elif req.escalated_at is None and req.reminded_at <= now - timedelta(
            days=ESCALATE_AFTER_DAYS
        ):
            notify.notify(
                session,
                notify.project_members(session, project.id, Role.OWNER),
                kind="access.escalation",
                subject=f"[MyoVault] Escalation: access request #{req.id} is still undecided",
                body=(
                    f"Request #{req.id} on {project.title} is still pending {ESCALATE_AFTER_DAYS} "
                    "days after the committee was reminded. Please make sure the committee "
                    "decides (or add members to it)."
                ),
                project_id=project.id,
            )
            req.escalated_at = now
            escalated += 1
            audit.record(
                session,
                SYSTEM,
                "access.escalate",
                object_type="access_request",
                object_id=req.id,
                project_id=project.id,
            )
    return {"reminded": reminded, "escalated": escalated}


@handler("access.reminders")
def _reminders_job(ctx: JobContext, payload: dict[str, Any]) -> dict[str, Any]:
    """Periodic job: reminders and escalations for overdue access requests."""
    with ctx.db.transaction() as session:
        return dict(process_overdue(session))
