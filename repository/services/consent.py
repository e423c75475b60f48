"""Consent records: append-only versions, withdrawal, bulk import; every change audited."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consent.errors import InvalidConsentError
from consent.records import (
    PENDING_PSEUDONYM,
    ConsentInput,
    participant_id_problem,
    validate_consent,
)
from consent.tabular import ParsedTable, Participant, RowError, parse_table
from repository.errors import Conflict, Forbidden, NotFound, ValidationError
from repository.models import Consent, Grant, Membership, Project, Role, Site, Subject, User
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit, notify
from repository.services.context import Actor

SOURCES = ("ui", "csv", "api", "system")
#: Unwraps a project's pseudonym secret (the extension's ``unwrap_project_secret``).
Unwrap = Callable[[bytes], bytes]


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


# --- participants not uploaded yet ------------------------------------------------------------
def own_site(session: Session, actor: Actor, project: Project) -> Site | None:
    """The site the actor investigates for in ``project`` (their membership's site), if any."""
    if actor.user_id is None:
        return None
    site_id = session.scalar(
        select(Membership.site_id).where(
            Membership.user_id == actor.user_id,
            Membership.project_id == project.id,
            Membership.role == Role.INVESTIGATOR,
            Membership.site_id.is_not(None),
        )
    )
    return session.get(Site, site_id) if site_id is not None else None


def registration_site(
    session: Session, actor: Actor, project: Project, site_code: str | None
) -> Site | None:
    """The site a participant is registered for: the given code (a site of the project) or the
    actor's own site; ``None`` means no site (the pseudonym is then keyed with an empty site,
    as for uploads without one). An investigator bound to a site registers only for it."""
    mine = own_site(session, actor, project)
    code = (site_code or "").strip()
    if not code:
        return mine
    site = session.scalar(select(Site).where(Site.project_id == project.id, Site.code == code))
    if site is None:
        raise ValidationError(f"no site {code!r} in this project")
    may_choose = actor.system or policy.can(session, actor, "project.edit", project)
    if mine is not None and site.id != mine.id and not may_choose:
        raise Forbidden("you register participants for your own site only")
    return site


def participant_pseudonym(
    project: Project, site: Site | None, participant_id: str, unwrap: Unwrap
) -> str:
    """The pseudonym the anonymizer will give this participant's images: the keyed HMAC of
    (project slug, site code, patient id) under the project's secret — the same
    :class:`anonymizer.Pseudonymizer` call as the de-identification stage."""
    from anonymizer import Pseudonymizer

    if project.pseudonym_secret_wrapped is None:
        raise Conflict("this project has no pseudonym secret")
    secret = bytes(unwrap(project.pseudonym_secret_wrapped))
    pseudo = Pseudonymizer(secret, project.slug, site.code if site is not None else "")
    return pseudo.subject_pseudonym(participant_id.strip())


@dataclass(frozen=True)
class Registration:
    subject: Subject
    created: bool


def register_participant(
    session: Session,
    actor: Actor,
    project: Project,
    *,
    participant_id: str,
    site_code: str | None,
    unwrap: Unwrap,
) -> Registration:
    """Find or create the Subject of a participant named by the site's own id.

    The id is used once to compute the pseudonym and is never stored, logged or echoed. The
    Subject row has no images until the participant's DICOM arrive: the pipeline then finds
    it by (project, pseudonym).
    """
    if not actor.system:
        policy.require(session, actor, "project.manage_consent", project)
    problem = participant_id_problem(participant_id)
    if problem:
        raise ValidationError(problem)
    site = registration_site(session, actor, project, site_code)
    pseudonym = participant_pseudonym(project, site, participant_id, unwrap)
    subject = session.scalar(
        select(Subject).where(Subject.project_id == project.id, Subject.pseudonym == pseudonym)
    )
    if subject is not None:
        if subject.erased_at is not None:
            raise Conflict("this participant was erased; they cannot be registered again")
        return Registration(subject, created=False)
    subject = Subject(
        project_id=project.id, pseudonym=pseudonym, site_id=site.id if site is not None else None
    )
    session.add(subject)
    session.flush()
    audit.record(
        session,
        actor,
        "subject.register",
        object_type="subject",
        object_id=subject.id,
        project_id=project.id,
        details={"subject": pseudonym, "site": site.code if site is not None else ""},
    )
    return Registration(subject, created=True)


def register_with_consent(
    session: Session,
    actor: Actor,
    project: Project,
    data: Mapping[str, object],
    *,
    unwrap: Unwrap,
    source: str = "ui",
) -> tuple[Registration, Consent]:
    """Register a participant by ``data['participant_id']`` (and ``data['site']``) and append
    their consent; every field problem (the id's included) is reported at once."""
    if not actor.system:
        policy.require(session, actor, "project.manage_consent", project)
    if source not in SOURCES:
        raise ValueError(f"unknown consent source {source!r}")
    problems = []
    problem = participant_id_problem(data.get("participant_id"))
    if problem:
        problems.append(problem)
    try:
        record = validate_consent({**data, "pseudonym": PENDING_PSEUDONYM})
    except InvalidConsentError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ValidationError("; ".join(problems))
    registration = register_participant(
        session,
        actor,
        project,
        participant_id=str(data["participant_id"]),
        site_code=str(data.get("site") or ""),
        unwrap=unwrap,
    )
    record = replace(record, pseudonym=registration.subject.pseudonym)
    return registration, _append(session, actor, project, registration.subject, record, source)


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
    registered: int = 0  # new subjects created by a registration table

    @property
    def ok(self) -> bool:
        return not self.errors


def import_table(
    session: Session,
    actor: Actor,
    project: Project,
    text: str,
    *,
    unwrap: Unwrap | None = None,
) -> ImportResult:
    """Import a consent CSV/TSV: all rows or none. Every row's problems are reported.

    A registration table (``participant_id`` and ``site`` columns instead of ``pseudonym``)
    registers participants not uploaded yet; it needs ``unwrap`` for the project secret.
    """
    policy.require(session, actor, "project.manage_consent", project)
    parsed = parse_table(text)
    if parsed.registration:
        if unwrap is None:
            raise ValueError("registration tables need the project secret (unwrap)")
        return _import_registrations(session, actor, project, parsed, unwrap)
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


def _import_registrations(
    session: Session, actor: Actor, project: Project, parsed: ParsedTable, unwrap: Unwrap
) -> ImportResult:
    errors = list(parsed.errors)
    records = dict(parsed.rows)
    planned: list[tuple[int, Participant, Site | None, str]] = []
    pseudonyms_seen: dict[str, int] = {}
    for line, participant in parsed.participants:
        try:
            site = registration_site(session, actor, project, participant.site)
        except (ValidationError, Forbidden) as exc:
            errors.append(RowError(line, (exc.message,)))
            continue
        pseudonym = participant_pseudonym(project, site, participant.participant_id, unwrap)
        if pseudonym in pseudonyms_seen:  # e.g. blank site and the actor's own site
            errors.append(
                RowError(line, (f"the same participant is on line {pseudonyms_seen[pseudonym]}",))
            )
            continue
        pseudonyms_seen[pseudonym] = line
        planned.append((line, participant, site, pseudonym))
    erased = set(
        session.scalars(
            select(Subject.pseudonym).where(
                Subject.project_id == project.id,
                Subject.pseudonym.in_(list(pseudonyms_seen)),
                Subject.erased_at.is_not(None),
            )
        )
    )
    errors += [
        RowError(line, ("this participant was erased",))
        for line, _, _, pseudonym in planned
        if pseudonym in erased
    ]
    if not parsed.rows and not errors:
        errors.append(RowError(1, ("the file has no data rows",)))
    if errors:
        return ImportResult(0, tuple(sorted(errors, key=lambda e: e.line)))
    created = 0
    for line, participant, site, _ in planned:
        registration = register_participant(
            session,
            actor,
            project,
            participant_id=participant.participant_id,
            site_code=site.code if site is not None else "",
            unwrap=unwrap,
        )
        created += registration.created
        record = replace(records[line], pseudonym=registration.subject.pseudonym)
        _append(session, actor, project, registration.subject, record, "csv")
    audit.record(
        session,
        actor,
        "consent.import",
        object_type="project",
        object_id=project.id,
        project_id=project.id,
        details={"rows": len(planned), "registered": created},
    )
    return ImportResult(len(planned), (), registered=created)


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
