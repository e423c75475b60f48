"""Cohort snapshots: a query frozen into an immutable, versioned cohort with a PID.

A snapshot records the exact shareable subjects and visits matching the query in one project
at that moment, with the hash of every stored file of those visits, and a SHA-256 over the
canonical manifest. Freezing the same query again gives the next version of the same lineage.
Later consent withdrawals do not rewrite a snapshot; its landing-page statistics and any access
built on it only ever count subjects that are still shareable.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from repository.errors import NotFound, ValidationError
from repository.models import (
    CohortSnapshot,
    Derivative,
    Project,
    SavedQuery,
    SearchProfile,
    SearchSubject,
    Series,
    StoredObject,
    Subject,
    Visit,
)
from repository.security import policy
from repository.services import audit, metadata, search, search_index
from repository.services.consent_filters import shareable_subject_clause
from repository.services.context import Actor
from repository.services.pids import PidMinter, datacite_attributes


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def save_query(session: Session, actor: Actor, name: str, query: search.CohortQuery) -> SavedQuery:
    policy.require(session, actor, "search.save_query")
    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationError("a query name of 1–200 characters is required")
    assert actor.user_id is not None  # noqa: S101  (policy requires an account)
    saved = SavedQuery(user_id=actor.user_id, name=name, query=query.to_dict())
    session.add(saved)
    session.flush()
    audit.record(
        session,
        actor,
        "search.save_query",
        object_type="saved_query",
        object_id=saved.id,
        details={"name": name, "query": saved.query},
    )
    return saved


def saved_queries(session: Session, actor: Actor) -> list[SavedQuery]:
    if actor.user_id is None:
        return []
    return list(
        session.scalars(
            select(SavedQuery)
            .where(SavedQuery.user_id == actor.user_id)
            .order_by(SavedQuery.created_at.desc())
        )
    )


def _files(session: Session, visit_ids: list[int]) -> list[dict[str, Any]]:
    if not visit_ids:
        return []
    objects: dict[int, tuple[str, int, str]] = {}
    for column, visit_col, model in (
        (Series.object_id, Series.visit_id, Series),
        (Derivative.object_id, Derivative.visit_id, Derivative),
    ):
        rows = session.execute(
            select(StoredObject.id, StoredObject.sha256, StoredObject.size, StoredObject.kind)
            .join(model, column == StoredObject.id)
            .where(visit_col.in_(visit_ids), StoredObject.deleted_at.is_(None))
        ).all()
        for oid, sha, size, kind in rows:
            objects[oid] = (sha, size, kind)
    return [
        {"object_id": oid, "sha256": sha, "size": size, "kind": kind}
        for oid, (sha, size, kind) in sorted(objects.items())
    ]


def freeze(
    session: Session,
    actor: Actor,
    query: search.CohortQuery,
    *,
    project_slug: str,
    title: str,
    description: str = "",
    saved_query_id: int | None = None,
    minter: PidMinter,
    base_url: str,
) -> CohortSnapshot:
    """Freeze ``query`` restricted to one project into the next snapshot version (audited).

    ``base_url`` (e.g. ``https://myovault.example.org``) makes the landing URL sent with a DOI.
    """
    policy.require(session, actor, "snapshot.create")
    project = session.scalar(select(Project).where(Project.slug == project_slug))
    if project is None:
        raise NotFound("no such project")
    policy.require(session, actor, "project.view_metadata", project)
    title = title.strip()
    if not title or len(title) > 300:
        raise ValidationError("a snapshot title of 1–300 characters is required")
    if saved_query_id is not None:
        saved = session.get(SavedQuery, saved_query_id)
        if saved is None or saved.user_id != actor.user_id:
            raise NotFound("no such saved query")
    scoped = replace(query, project=(project.slug,))
    # The frozen list is re-checked against the authoritative consent clause, not only the
    # search index it was found through.
    matching = search.matching_subjects(session, actor, scoped).subquery("matching")
    subject_ids = list(
        session.scalars(
            select(Subject.id)
            .where(Subject.id.in_(select(matching.c.subject_id)), shareable_subject_clause())
            .order_by(Subject.id)
        )
    )
    if not subject_ids:
        raise ValidationError("no shareable subject matches this query in that project")
    visit_ids = list(
        session.scalars(
            select(Visit.id).where(Visit.subject_id.in_(subject_ids)).order_by(Visit.id)
        )
    )
    files = _files(session, visit_ids)
    canonical_query = scoped.to_dict()
    lineage = hashlib.sha256(
        _canonical({"project": project.id, "query": canonical_query})
    ).hexdigest()
    version = (
        session.scalar(
            select(func.max(CohortSnapshot.version)).where(CohortSnapshot.lineage == lineage)
        )
        or 0
    ) + 1
    manifest = {
        "project": project.slug,
        "query": canonical_query,
        "subjects": subject_ids,
        "visits": visit_ids,
        "files": files,
    }
    snapshot = CohortSnapshot(
        pid="",
        pid_kind="",
        lineage=lineage,
        version=version,
        project_id=project.id,
        saved_query_id=saved_query_id,
        title=title,
        description=description.strip()[:5000],
        query=canonical_query,
        subject_ids=subject_ids,
        visit_ids=visit_ids,
        files=files,
        manifest_sha256=hashlib.sha256(_canonical(manifest)).hexdigest(),
        n_subjects=len(subject_ids),
        n_visits=len(visit_ids),
        licence=project.licence,
        created_by_id=actor.user_id,
    )
    suffix = f"{lineage[:16]}.v{version}"
    record = landing_record_for(
        project, snapshot, url=f"{base_url.rstrip('/')}/pid/myovault:{suffix}"
    )
    snapshot.pid, snapshot.pid_kind = minter.mint(
        suffix=suffix, attributes=datacite_attributes(record)
    )
    session.add(snapshot)
    session.flush()
    audit.record(
        session,
        actor,
        "snapshot.create",
        object_type="cohort_snapshot",
        object_id=snapshot.id,
        project_id=project.id,
        details={
            "pid": snapshot.pid,
            "version": version,
            "n_subjects": snapshot.n_subjects,
            "manifest_sha256": snapshot.manifest_sha256,
        },
    )
    return snapshot


def get_snapshot(session: Session, actor: Actor, snapshot_id: int) -> CohortSnapshot:
    """The snapshot if its project's metadata is visible to ``actor`` (else 404)."""
    snapshot = session.get(CohortSnapshot, snapshot_id)
    if snapshot is None:
        raise NotFound("no such snapshot")
    project = session.get(Project, snapshot.project_id)
    if project is None or not policy.can(session, actor, "project.view_metadata", project):
        raise NotFound("no such snapshot")
    return snapshot


def by_pid(session: Session, actor: Actor, pid: str) -> CohortSnapshot:
    snapshot_id = session.scalar(select(CohortSnapshot.id).where(CohortSnapshot.pid == pid))
    if snapshot_id is None:
        raise NotFound("no such identifier")
    return get_snapshot(session, actor, snapshot_id)


def versions_of(session: Session, snapshot: CohortSnapshot) -> list[CohortSnapshot]:
    return list(
        session.scalars(
            select(CohortSnapshot)
            .where(CohortSnapshot.lineage == snapshot.lineage)
            .order_by(CohortSnapshot.version)
        )
    )


def list_snapshots(
    session: Session, actor: Actor, project: Project | None = None
) -> list[CohortSnapshot]:
    stmt = select(CohortSnapshot).join(Project, Project.id == CohortSnapshot.project_id)
    stmt = stmt.where(policy.project_filter(actor, "project.view_metadata"))
    if project is not None:
        stmt = stmt.where(CohortSnapshot.project_id == project.id)
    return list(session.scalars(stmt.order_by(CohortSnapshot.created_at.desc())))


def manifest(session: Session, actor: Actor, snapshot: CohortSnapshot) -> dict[str, Any]:
    """The individual-level manifest (pseudonyms, visits, file hashes): ``project.view_data``."""
    project = session.get(Project, snapshot.project_id)
    policy.require(session, actor, "project.view_data", project)
    still = set(
        session.scalars(
            select(Subject.id).where(
                Subject.id.in_(snapshot.subject_ids), shareable_subject_clause()
            )
        )
    )
    pseudonyms = dict(
        session.execute(
            select(Subject.id, Subject.pseudonym).where(Subject.id.in_(snapshot.subject_ids))
        ).all()
    )
    audit.record(
        session,
        actor,
        "snapshot.view_manifest",
        object_type="cohort_snapshot",
        object_id=snapshot.id,
        project_id=snapshot.project_id,
        details={"pid": snapshot.pid},
    )
    return {
        "pid": snapshot.pid,
        "manifest_sha256": snapshot.manifest_sha256,
        "subjects": [
            {"pseudonym": pseudonyms.get(sid, ""), "shareable": sid in still}
            for sid in snapshot.subject_ids
        ],
        "visits": snapshot.visit_ids,
        "files": snapshot.files,
    }


# --- landing records and statistics -----------------------------------------------------------


def landing_record_for(
    project: Project, snapshot: CohortSnapshot | None, *, url: str
) -> dict[str, Any]:
    """The public description used for JSON-LD, DataCite and OAI-PMH (no individual data)."""
    record = metadata.record_of(project)
    created = (
        snapshot.created_at
        if snapshot and snapshot.created_at
        else project.metadata_updated_at or project.created_at
    )
    record.update(
        project_title=project.title,
        project_slug=project.slug,
        url=url,
        created=(created.isoformat() if created else "1970-01-01"),
        version=project.metadata_version if snapshot is None else snapshot.version,
        resource_type="Dataset" if snapshot is None else "Cohort snapshot",
    )
    if snapshot is not None:
        from repository.models._types import utcnow

        record["created"] = (snapshot.created_at or utcnow()).isoformat()
        record["title"] = f"{snapshot.title} (v{snapshot.version})"
        record["description"] = (
            snapshot.description
            or (
                f"Cohort snapshot of {project.title}, frozen from a saved search."  # no exact count: public text
            )
        )
        record["pid"] = snapshot.pid
        record["licence"] = snapshot.licence or project.licence
    return record


def statistics(
    session: Session, actor: Actor, project: Project, subject_ids: list[int] | None
) -> dict[str, Any]:
    """Suppressed aggregate statistics of a project's (or a snapshot's) shareable subjects."""
    search_index.sync(session)
    clauses = [SearchSubject.project_id == project.id, search_index.shareable_now()]
    if subject_ids is not None:
        clauses.append(SearchSubject.subject_id.in_(subject_ids))
    exact = policy.can(session, actor, "project.view_data", project)
    matching = search.facet_counts(session, clauses)
    n = matching.total
    n_visits = int(
        session.scalar(
            select(func.coalesce(func.sum(SearchProfile.n_visits), 0))
            .join(SearchSubject, SearchSubject.profile_id == SearchProfile.id)
            .where(*clauses)
        )
        or 0
    )
    facets = search.show_facets(matching.counts, exact)
    heat = search.heatmap(session, matching, exact)
    return {
        "exact": exact,
        "subjects": search.show_count(n, exact),
        "visits": search.show_count(n_visits, exact),
        "sex": facets["sex"],
        "age": facets["age"],
        "disease": facets["disease"],
        "sequence": facets["sequence"],
        "heatmap": heat,
    }


def schema_org(record: Mapping[str, Any], stats: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A schema.org ``Dataset`` (JSON-LD) for a landing page."""
    doc: dict[str, Any] = {
        "@context": "https://schema.org",
        "@type": "Dataset",
        "name": record["title"],
        "description": record.get("description") or record["title"],
        "url": record["url"],
        "version": str(record.get("version", "")),
        "keywords": list(record.get("keywords", [])),
        "publisher": {"@type": "Organization", "name": "MyoVault"},
        "isAccessibleForFree": False,
        "conditionsOfAccess": "Access to individual-level data requires an approved request to the data access committee.",
    }
    if record.get("pid"):
        doc["identifier"] = record["pid"]
    if record.get("licence"):
        doc["license"] = metadata.LICENCES.get(record["licence"], record["licence"])
    if record.get("diseases"):
        doc["about"] = [
            {
                "@type": "MedicalCondition",
                "name": d["name"],
                "code": [
                    {"@type": "MedicalCode", "codingSystem": system, "codeValue": value}
                    for system, value in (("ORPHA", d.get("orpha")), ("ICD-10", d.get("icd10")))
                    if value
                ],
            }
            for d in record["diseases"]
        ]
    contact = record.get("contact") or {}
    if contact.get("name"):
        doc["creator"] = {
            "@type": "Person",
            "name": contact["name"],
            **({"affiliation": contact["affiliation"]} if contact.get("affiliation") else {}),
        }
    if record.get("funding"):
        doc["funder"] = [{"@type": "Organization", "name": f["funder"]} for f in record["funding"]]
    if record.get("publications"):
        doc["citation"] = [
            f"https://doi.org/{p['doi']}" if p.get("doi") else p["citation"]
            for p in record["publications"]
        ]
    if stats is not None:
        doc["variableMeasured"] = ["fat fraction (%)", "water T2 (ms)", "muscle volume (ml)"]
        doc["size"] = f"{stats['subjects']} subjects"
    return doc
