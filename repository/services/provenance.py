"""Provenance (W3C PROV) per subject and per project, the Art. 30 record, the Art. 15 report.

The graph is built from what the database holds: stored objects by hash, the pipeline's
derivatives with software/model versions and parameters, per-muscle metrics, consent versions,
the Upload rows (who uploaded what, when, through which channel; the audit log only for
objects stored outside an upload). :mod:`consent.provenance` turns it into PROV-JSON.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from consent.art30 import ProcessingFacts, Recipient, art30_record
from consent.provenance import ProvActivity, ProvAgent, ProvEntity, ProvGraph, to_prov_json
from repository.errors import NotFound
from repository.models import (
    AccessRequest,
    AuditEvent,
    Consent,
    Derivative,
    Download,
    Grant,
    MuscleMetric,
    Project,
    Series,
    Site,
    StoredObject,
    Subject,
    Upload,
    UploadFile,
    User,
    Visit,
)
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit
from repository.services.access import grant_state
from repository.services.consent import find_subject
from repository.services.context import Actor


class _Builder:
    def __init__(self) -> None:
        self.entities: dict[str, ProvEntity] = {}
        self.agents: dict[str, ProvAgent] = {}
        self.activities: list[ProvActivity] = []
        self.attributions: list[tuple[str, str]] = []
        self.derivations: list[tuple[str, str]] = []

    def entity(self, entity: ProvEntity) -> str:
        self.entities.setdefault(entity.id, entity)
        return entity.id

    def agent(self, agent: ProvAgent) -> str:
        self.agents.setdefault(agent.id, agent)
        return agent.id

    def graph(self) -> ProvGraph:
        return ProvGraph(
            tuple(self.entities.values()),
            tuple(self.agents.values()),
            tuple(self.activities),
            tuple(dict.fromkeys(self.attributions)),
            tuple(dict.fromkeys(self.derivations)),
        )


def _user_agent(b: _Builder, session: Session, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    user = session.get(User, user_id)
    label = (user.name or f"user {user_id}") if user is not None else f"user {user_id}"
    return b.agent(ProvAgent(f"user-{user_id}", label, "person"))


def _object_entity(b: _Builder, obj: StoredObject) -> str:
    return b.entity(
        ProvEntity(
            f"object-{obj.id}",
            obj.kind,
            "stored_object",
            obj.sha256,
            {"size": obj.size, "created_at": obj.created_at, "deleted_at": obj.deleted_at},
        )
    )


def _add_uploads(
    b: _Builder, session: Session, subject: Subject, series_objects: dict[int, str]
) -> set[str]:
    """Upload activities from the Upload rows: who uploaded (the uploader user), when, through
    which channel, which de-identified objects it produced (by hash) and which ingested series
    were converted from them. Returns the entity ids attributed to an uploader."""
    rows = session.execute(
        select(UploadFile.deid_object_id, UploadFile.series_id, Upload)
        .join(Upload, Upload.id == UploadFile.upload_id)
        .where(
            Upload.project_id == subject.project_id,
            UploadFile.subject_pseudonym == subject.pseudonym,
            UploadFile.deid_object_id.is_not(None),
        )
        .order_by(Upload.id, UploadFile.id)
    ).all()
    generated: dict[int, list[str]] = {}
    uploads: dict[int, Upload] = {}
    attributed: set[str] = set()
    for object_id, series_id, upload in rows:
        obj = session.get(StoredObject, object_id)
        if obj is None:
            continue
        eid = _object_entity(b, obj)
        uploads[upload.id] = upload
        generated.setdefault(upload.id, []).append(eid)
        if series_id in series_objects:  # the NIfTI series was converted from this DICOM
            b.derivations.append((series_objects[series_id], eid))
        person = _user_agent(b, session, upload.created_by_id)
        if person:
            b.attributions.append((eid, person))
            attributed.add(eid)
            if series_id in series_objects:
                b.attributions.append((series_objects[series_id], person))
                attributed.add(series_objects[series_id])
    for upload_id, entities in generated.items():
        upload = uploads[upload_id]
        person = _user_agent(b, session, upload.created_by_id)
        site = session.get(Site, upload.site_id) if upload.site_id is not None else None
        agents = [person] if person else []
        if site is not None:
            agents.append(b.agent(ProvAgent(f"site-{site.id}", site.code, "organization")))
        b.activities.append(
            ProvActivity(
                f"upload-{upload_id}",
                f"upload and de-identify ({upload.source})",
                generated=tuple(dict.fromkeys(entities)),
                agents=tuple(agents),
                started=upload.created_at,
                ended=upload.finished_at or upload.completed_at,
                attributes={"source": upload.source, "files": len(set(entities))},
            )
        )
    return attributed


def _uploaders(session: Session, object_ids: list[int]) -> dict[int, int]:
    """object id -> user id of whoever stored it, from the audit log (when recorded)."""
    if not object_ids:
        return {}
    rows = session.execute(
        select(AuditEvent.object_id, AuditEvent.actor_id).where(
            AuditEvent.object_type == "stored_object",
            AuditEvent.object_id.in_([str(i) for i in object_ids]),
            AuditEvent.actor_id.is_not(None),
        )
    ).all()
    return {int(o): int(a) for o, a in rows if str(o).isdigit() and a is not None}


def _add_subject(b: _Builder, session: Session, subject: Subject) -> None:
    subj = b.entity(
        ProvEntity(
            f"subject-{subject.id}",
            subject.pseudonym,
            "subject",
            "",
            {"erased_at": subject.erased_at},
        )
    )
    if subject.site_id is not None:
        site = session.get(Site, subject.site_id)
        if site is not None:
            b.attributions.append(
                (subj, b.agent(ProvAgent(f"site-{site.id}", site.code, "organization")))
            )
    for consent in session.scalars(
        select(Consent).where(Consent.subject_id == subject.id).order_by(Consent.version)
    ):
        cid = b.entity(
            ProvEntity(
                f"consent-{consent.id}",
                f"consent v{consent.version}",
                "consent",
                "",
                {
                    "form": f"{consent.form} {consent.form_version}",
                    "duo_terms": " ".join(consent.duo_terms),
                    "lawful_basis": f"{consent.lawful_basis}+{consent.special_category_basis}",
                    "signed_on": consent.signed_on,
                    "withdrawn_on": consent.withdrawn_on,
                },
            )
        )
        b.derivations.append((cid, subj))
        agent = _user_agent(b, session, consent.created_by_id)
        if agent:
            b.attributions.append((cid, agent))
    visits = session.scalars(
        select(Visit).where(Visit.subject_id == subject.id).order_by(Visit.id)
    ).all()
    series_objects: dict[int, str] = {}
    object_ids: list[int] = []
    for visit in visits:
        for series in session.scalars(
            select(Series).where(Series.visit_id == visit.id).order_by(Series.id)
        ):
            if series.object_id is None:
                continue
            obj = session.get(StoredObject, series.object_id)
            if obj is None:
                continue
            eid = _object_entity(b, obj)
            series_objects[series.id] = eid
            object_ids.append(obj.id)
            b.derivations.append((eid, subj))
            b.activities.append(
                ProvActivity(
                    f"ingest-series-{series.id}",
                    f"ingest {series.contrast} series (ses-{visit.label})",
                    generated=(eid,),
                    ended=series.created_at,
                    attributes={
                        "contrast": series.contrast,
                        "vendor": series.vendor,
                        "field_strength_t": series.field_strength_t,
                        "mids_path": series.mids_path,
                    },
                )
            )
        for der in session.scalars(
            select(Derivative).where(Derivative.visit_id == visit.id).order_by(Derivative.id)
        ):
            obj = session.get(StoredObject, der.object_id)
            if obj is None:
                continue
            out = _object_entity(b, obj)
            used = (series_objects[der.series_id],) if der.series_id in series_objects else ()
            software = b.agent(
                ProvAgent(
                    f"software-{der.software}-{der.software_version}".replace(" ", "_"),
                    f"{der.software} {der.software_version}",
                    "software",
                    {"model_version": der.model_version} if der.model_version else {},
                )
            )
            agents = [software]
            person = _user_agent(b, session, der.created_by_id)
            if person:
                agents.append(person)
            b.activities.append(
                ProvActivity(
                    f"derive-{der.id}",
                    f"compute {der.kind} v{der.version}",
                    used=used,
                    generated=(out,),
                    agents=tuple(agents),
                    ended=der.created_at,
                    attributes={
                        "software": der.software,
                        "software_version": der.software_version,
                        "model_version": der.model_version,
                        "parameters": der.parameters,
                    },
                )
            )
            for source in used:
                b.derivations.append((out, source))
    for metric in session.scalars(
        select(MuscleMetric).where(MuscleMetric.subject_id == subject.id).order_by(MuscleMetric.id)
    ):
        mid = b.entity(
            ProvEntity(
                f"metric-{metric.id}",
                f"{metric.muscle} {metric.side} {metric.metric}",
                "muscle_metric",
                "",
                {"value": metric.value, "unit": metric.unit, "model_version": metric.model_version},
            )
        )
        if metric.derivative_id is not None:
            made_by = session.get(Derivative, metric.derivative_id)
            if made_by is not None:
                if f"object-{made_by.object_id}" not in b.entities:
                    obj = session.get(StoredObject, made_by.object_id)
                    if obj is not None:
                        _object_entity(b, obj)
                if f"object-{made_by.object_id}" in b.entities:
                    b.derivations.append((mid, f"object-{made_by.object_id}"))
    attributed = _add_uploads(b, session, subject, series_objects)
    for object_id, user_id in _uploaders(session, object_ids).items():
        agent = _user_agent(b, session, user_id)
        if agent and f"object-{object_id}" not in attributed:  # Upload rows take precedence
            b.attributions.append((f"object-{object_id}", agent))


def _require_in_active_grant(session: Session, actor: Actor, subject: Subject) -> None:
    """Grantees see provenance only of subjects their active grant still includes."""
    from repository.services.downloads import included_subjects

    user_id = actor.user_id
    for grant in session.scalars(
        select(Grant).where(Grant.user_id == user_id, Grant.project_id == subject.project_id)
    ):
        if grant_state(grant) == "active" and subject.id in {
            s.id for s in included_subjects(session, grant, subject.id)
        }:
            return
    raise NotFound("no such subject")


def subject_prov(session: Session, actor: Actor, project: Project, pseudonym: str) -> str:
    """PROV-JSON of one subject (project members with data access)."""
    policy.require(session, actor, "project.view_data", project)
    subject = find_subject(session, project, pseudonym)
    if not policy.can(session, actor, "project.manage_consent", project):
        _require_in_active_grant(session, actor, subject)
    b = _Builder()
    _add_subject(b, session, subject)
    return to_prov_json(b.graph())


def project_prov(session: Session, actor: Actor, project: Project) -> str:
    """PROV-JSON of every subject of the project (owners and investigators)."""
    policy.require(session, actor, "project.view_data", project)
    if not (
        policy.can(session, actor, "project.manage_consent", project)
        or policy.can(session, actor, "project.view_audit", project)
    ):
        policy.require(session, actor, "project.manage_consent", project)
    b = _Builder()
    b.entity(ProvEntity(f"project-{project.id}", project.slug, "project"))
    for subject in session.scalars(
        select(Subject).where(Subject.project_id == project.id).order_by(Subject.id)
    ):
        _add_subject(b, session, subject)
        b.derivations.append((f"project-{project.id}", f"subject-{subject.id}"))
    return to_prov_json(b.graph())


def processing_record(session: Session, actor: Actor, project: Project) -> dict[str, Any]:
    """GDPR Art. 30(1) record of processing for the project."""
    policy.require(session, actor, "project.view_processing_record", project)
    subjects = (
        session.scalar(select(func.count(Subject.id)).where(Subject.project_id == project.id)) or 0
    )
    latest = (
        select(Consent.subject_id, func.max(Consent.version).label("v"))
        .group_by(Consent.subject_id)
        .subquery()
    )
    bases: Counter[str] = Counter(
        f"{c.lawful_basis}+{c.special_category_basis}"
        if c.special_category_basis
        else c.lawful_basis
        for c in session.scalars(
            select(Consent)
            .join(
                latest,
                (Consent.subject_id == latest.c.subject_id) & (Consent.version == latest.c.v),
            )
            .join(Subject, Subject.id == Consent.subject_id)
            .where(Subject.project_id == project.id)
        )
    )
    steps = sorted(
        {
            f"{s} {v}" + (f" (model {m})" if m else "")
            for s, v, m in session.execute(
                select(Derivative.software, Derivative.software_version, Derivative.model_version)
                .join(Visit, Visit.id == Derivative.visit_id)
                .join(Subject, Subject.id == Visit.subject_id)
                .where(Subject.project_id == project.id)
                .distinct()
            ).all()
        }
    )
    recipients: Counter[tuple[str, str]] = Counter()
    for institution, use in session.execute(
        select(AccessRequest.institution, AccessRequest.intended_use)
        .select_from(Grant)
        .join(AccessRequest, AccessRequest.id == Grant.request_id, isouter=True)
        .where(Grant.project_id == project.id)
    ).all():
        country = str((use or {}).get("country") or "")
        recipients[(institution or "unknown institution", country)] += 1
    owners = [m.user.name or m.user.email for m in project.memberships if m.role.value == "owner"]
    facts = ProcessingFacts(
        project=project.slug,
        title=project.title,
        controller=", ".join(owners) or "project owner (not set)",
        purposes=[
            "scientific research on neuromuscular disease using quantitative muscle MRI",
            "sharing pseudonymised data with approved researchers under data-access agreements",
        ],
        subjects=int(subjects),
        lawful_bases=dict(bases),
        data_categories=[
            "pseudonymised MRI images (ORMIR-MIDS)",
            "quantitative maps (fat fraction, water T2, B1) and muscle label images",
            "per-muscle metrics",
            "age at scan, sex, diagnosis",
            "consent records (DUO terms, dates)",
        ],
        processing_steps=steps,
        recipients=[
            Recipient(inst, country, n) for (inst, country), n in sorted(recipients.items())
        ],
        retention="until consent is withdrawn or erasure requested; quarantine: none after verification",
        generated_at=utcnow().isoformat(timespec="seconds"),
    )
    return art30_record(facts)


def access_report(
    session: Session, actor: Actor, project: Project, pseudonym: str
) -> dict[str, Any]:
    """GDPR Art. 15: which grants, projects and downloads included this participant's data.

    Generating the report is itself audited (it reveals who received the data).
    """
    policy.require(session, actor, "project.manage_consent", project)
    subject = find_subject(session, project, pseudonym)
    consents = session.scalars(
        select(Consent).where(Consent.subject_id == subject.id).order_by(Consent.version)
    ).all()
    grants = [
        g
        for g in session.scalars(
            select(Grant).where(Grant.project_id == project.id).order_by(Grant.id)
        )
        if subject.id in (g.subject_ids or [])
    ]
    downloads = [
        d
        for d in session.scalars(
            select(Download)
            .where(Download.grant_id.in_([g.id for g in grants]))
            .order_by(Download.id)
        )
        if subject.id in (d.subject_ids or [])
    ]
    report: dict[str, Any] = {
        "report": "GDPR Art. 15 access report",
        "project": {"slug": project.slug, "title": project.title},
        "pseudonym": subject.pseudonym,
        "generated_on": date.today().isoformat(),
        "erased_at": subject.erased_at.isoformat() if subject.erased_at else None,
        "consent": [
            {
                "version": c.version,
                "form": f"{c.form} {c.form_version}",
                "signed_on": c.signed_on.isoformat(),
                "duo_terms": list(c.duo_terms),
                "lawful_basis": c.lawful_basis,
                "special_category_basis": c.special_category_basis,
                "expires_on": c.expires_on.isoformat() if c.expires_on else None,
                "withdrawn_on": c.withdrawn_on.isoformat() if c.withdrawn_on else None,
            }
            for c in consents
        ],
        "grants": [],
        "downloads": [],
    }
    for g in grants:
        req = session.get(AccessRequest, g.request_id) if g.request_id else None
        holder = session.get(User, g.user_id)
        report["grants"].append(
            {
                "grant": g.id,
                "recipient": holder.name if holder else "",
                "institution": req.institution if req else "",
                "purpose": req.purpose if req else "",
                "data": g.data_level,
                "from": g.created_at.isoformat(),
                "until": g.expires_at.isoformat(),
                "state": grant_state(g),
            }
        )
    for d in downloads:
        report["downloads"].append(
            {"download": d.id, "grant": d.grant_id, "at": d.at.isoformat(), "status": d.status}
        )
    audit.record(
        session,
        actor,
        "subject.access_report",
        object_type="subject",
        object_id=subject.id,
        project_id=project.id,
        details={"pseudonym": subject.pseudonym},
    )
    return report
