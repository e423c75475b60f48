"""Consent records: append-only versions, withdrawal, bulk import; every change audited."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consent.errors import InvalidConsentError
from consent.records import ConsentInput, validate_consent
from consent.tabular import RowError, parse_table
from repository.errors import Conflict, NotFound, ValidationError
from repository.models import Consent, Grant, Project, Subject, User
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit, notify
from repository.services.context import Actor

SOURCES = ("ui", "csv", "api", "system")


def consent_status(consent: Consent | None, today: date | None = None) -> str:
    """``none`` | ``active`` | ``withdrawn`` | ``expired`` (the same rule as consent_filters)."""
    today = today or date.today()
    if consent is None:
        return "none"
    if consent.withdrawn_on is not None:
        return "withdrawn"
    if consent.expires_on is not None and consent.expires_on < today:
        return "expired"
    return "active"


def find_subject(session: Session, project: Project, pseudonym: str) -> Subject:
    subject = session.scalar(
        select(Subject).where(Subject.project_id == project.id, Subject.pseudonym == pseudonym)
    )
    if subject is None:
        raise NotFound(f"no subject {pseudonym!r} in this project")
    return subject


def latest_consent(session: Session, subject_id: int) -> Consent | None:
    return session.scalar(
        select(Consent).where(Consent.subject_id == subject_id).order_by(Consent.version.desc())
    )


def history(session: Session, actor: Actor, project: Project, pseudonym: str) -> list[Consent]:
    policy.require(session, actor, "project.manage_consent", project)
    subject = find_subject(session, project, pseudonym)
    return list(
        session.scalars(
            select(Consent).where(Consent.subject_id == subject.id).order_by(Consent.version)
        )
    )


def _next_version(session: Session, subject_id: int) -> int:
    current = session.scalar(
        select(func.max(Consent.version)).where(Consent.subject_id == subject_id)
    )
    return int(current or 0) + 1


def _append(
    session: Session,
    actor: Actor,
    project: Project,
    subject: Subject,
    record: ConsentInput,
    source: str,
) -> Consent:
    if subject.erased_at is not None:
        raise Conflict("this subject was erased; consent can no longer be recorded")
    row = Consent(
        subject_id=subject.id,
        version=_next_version(session, subject.id),
        form=record.form,
        form_version=record.form_version,
        signed_on=record.signed_on,
        duo_terms=[str(t) for t in record.terms],
        lawful_basis=record.lawful_basis,
        special_category_basis=record.special_category_basis,
        recontact_allowed=record.recontact_allowed,
        expires_on=record.expires_on,
        created_by_id=actor.user_id,
        source=source,
    )
    session.add(row)
    session.flush()
    audit.record(
        session,
        actor,
        "consent.record",
        object_type="consent",
        object_id=row.id,
        project_id=project.id,
        details={
            "subject": subject.pseudonym,
            "version": row.version,
            "duo_terms": row.duo_terms,
            "lawful_basis": f"{row.lawful_basis}+{row.special_category_basis}",
            "expires_on": row.expires_on,
            "source": source,
        },
    )
    return row


def record_consent(
    session: Session,
    actor: Actor,
    project: Project,
    data: Mapping[str, object],
    *,
    source: str = "ui",
) -> Consent:
    """Append a new consent version for the subject named by ``data['pseudonym']``.

    The system actor (demo set-up, trusted imports) is not subject to the project policy.
    """
    if not actor.system:
        policy.require(session, actor, "project.manage_consent", project)
    if source not in SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    try:
        record = validate_consent(data)
    except InvalidConsentError as exc:
        raise ValidationError("; ".join(exc.problems)) from None
    subject = find_subject(session, project, record.pseudonym)
    return _append(session, actor, project, subject, record, source)


@dataclass(frozen=True)
class ImportResult:
    created: int
    errors: tuple[RowError, ...]

    @property
    def ok(self) -> bool:
        return not self.errors


def import_table(session: Session, actor: Actor, project: Project, text: str) -> ImportResult:
    """Import a consent CSV/TSV: all rows or none. Every row's problems are reported."""
    policy.require(session, actor, "project.manage_consent", project)
    parsed = parse_table(text)
    errors = list(parsed.errors)
    subjects: dict[str, Subject] = {}
    if parsed.rows:
        names = [r.pseudonym for _, r in parsed.rows]
        found = session.scalars(
            select(Subject).where(Subject.project_id == project.id, Subject.pseudonym.in_(names))
        )
        subjects = {s.pseudonym: s for s in found}
    for line, record in parsed.rows:
        subject = subjects.get(record.pseudonym)
        if subject is None:
            errors.append(RowError(line, (f"no subject {record.pseudonym!r} in this project",)))
        elif subject.erased_at is not None:
            errors.append(RowError(line, (f"subject {record.pseudonym!r} was erased",)))
    if not parsed.rows and not errors:
        errors.append(RowError(1, ("the file has no data rows",)))
    if errors:
        return ImportResult(0, tuple(sorted(errors, key=lambda e: e.line)))
    for _, record in parsed.rows:
        _append(session, actor, project, subjects[record.pseudonym], record, "csv")
    audit.record(
        session,
        actor,
        "consent.import",
        object_type="project",
        object_id=project.id,
        project_id=project.id,
        details={"rows": len(parsed.rows)},
    )
    return ImportResult(len(parsed.rows), ())


def withdraw(
    session: Session,
    actor: Actor,
    project: Project,
    pseudonym: str,
    *,
    reason: str = "",
    on: date | None = None,
    action: str = "project.manage_consent",
) -> Consent:
    """Append a withdrawn version; the subject leaves the shareable set at once.

    Holders of active grants that included the subject are notified (without the pseudonym's
    data, only that their cohort changed and which grant).
    """
    policy.require(session, actor, action, project)
    subject = find_subject(session, project, pseudonym)
    current = latest_consent(session, subject.id)
    if current is None:
        raise Conflict("no consent is recorded for this subject")
    if current.withdrawn_on is not None:
        raise Conflict("consent is already withdrawn")
    on = on or date.today()
    row = Consent(
        subject_id=subject.id,
        version=current.version + 1,
        form=current.form,
        form_version=current.form_version,
        signed_on=current.signed_on,
        duo_terms=list(current.duo_terms),
        lawful_basis=current.lawful_basis,
        special_category_basis=current.special_category_basis,
        recontact_allowed=False,
        expires_on=current.expires_on,
        withdrawn_on=on,
        withdrawal_reason=reason.strip(),
        created_by_id=actor.user_id,
        source="ui",
    )
    session.add(row)
    session.flush()
    grants = affected_grants(session, subject)
    audit.record(
        session,
        actor,
        "consent.withdraw",
        object_type="consent",
        object_id=row.id,
        project_id=project.id,
        details={
            "subject": subject.pseudonym,
            "version": row.version,
            "withdrawn_on": on,
            "grants_notified": [g.id for g in grants],
        },
    )
    for grant in grants:
        holder = session.get(User, grant.user_id)
        if holder is None:
            continue
        notify.notify(
            session,
            [holder],
            kind="consent.withdrawn",
            subject=f"[MyoVault] A participant withdrew from your grant #{grant.id}",
            body=(
                f"A participant included in your data-access grant #{grant.id} on project "
                f"{project.title} withdrew consent on {on.isoformat()}.\n"
                "Under the data-use agreement you must stop using and delete their data. "
                "Future downloads exclude them; the grant page lists the current cohort."
            ),
            project_id=project.id,
        )
    return row


def affected_grants(session: Session, subject: Subject) -> list[Grant]:
    """Active (not revoked, not expired) grants whose cohort includes ``subject``."""
    now = utcnow()
    grants = session.scalars(
        select(Grant).where(
            Grant.project_id == subject.project_id,
            Grant.revoked_at.is_(None),
            Grant.expires_at > now,
        )
    )
    return [g for g in grants if subject.id in (g.subject_ids or [])]


@dataclass(frozen=True)
class SubjectConsentRow:
    subject: Subject
    consent: Consent | None
    status: str


def overview(session: Session, actor: Actor, project: Project) -> list[SubjectConsentRow]:
    """Every subject of the project with its current consent version and status."""
    policy.require(session, actor, "project.manage_consent", project)
    subjects = session.scalars(
        select(Subject).where(Subject.project_id == project.id).order_by(Subject.pseudonym)
    ).all()
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
    today = date.today()
    return [
        SubjectConsentRow(
            s,
            consents.get(s.id),
            "erased" if s.erased_at is not None else consent_status(consents.get(s.id), today),
        )
        for s in subjects
    ]
