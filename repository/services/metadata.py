"""Project (dataset) metadata: validated on save, editable by owners, every save a new version.

The record is a closed vocabulary: unknown fields are rejected, never ignored. Disease codes
are checked for shape (ORPHA:<digits>, ICD-10 like ``G71.0``); data-use conditions must be
DUO identifiers from :data:`DUO_TERMS`; the licence an SPDX identifier from :data:`LICENCES`.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.errors import ValidationError
from repository.models import Project, ProjectMetadataVersion
from repository.models._types import utcnow
from repository.security import policy
from repository.services import audit
from repository.services.context import Actor

ORPHA_RE = re.compile(r"^ORPHA:\d{1,7}$")
ICD10_RE = re.compile(r"^[A-TV-Z]\d{2}(\.\d{1,2})?$")
DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

#: Data Use Ontology terms accepted as data-use conditions (id → label).
DUO_TERMS: dict[str, str] = {
    "DUO:0000004": "no restriction",
    "DUO:0000042": "general research use",
    "DUO:0000006": "health or medical or biomedical research",
    "DUO:0000007": "disease specific research",
    "DUO:0000011": "population origins or ancestry research only",
    "DUO:0000043": "clinical care use",
    "DUO:0000015": "no general methods research",
    "DUO:0000016": "genetic studies only",
    "DUO:0000018": "not for profit, non commercial use only",
    "DUO:0000019": "publication required",
    "DUO:0000020": "collaboration required",
    "DUO:0000021": "ethics approval required",
    "DUO:0000022": "geographical restriction",
    "DUO:0000024": "publication moratorium",
    "DUO:0000025": "time limit on use",
    "DUO:0000026": "user specific restriction",
    "DUO:0000027": "project specific restriction",
    "DUO:0000028": "institution specific restriction",
    "DUO:0000029": "return to database or resource",
    "DUO:0000045": "not for profit organisation use only",
    "DUO:0000046": "non-commercial use only",
}

#: Licences (SPDX identifier → URL) a dataset may carry.
LICENCES: dict[str, str] = {
    "CC-BY-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "CC-BY-NC-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "CC-BY-NC-ND-4.0": "https://creativecommons.org/licenses/by-nc-nd/4.0/",
    "CC0-1.0": "https://creativecommons.org/publicdomain/zero/1.0/",
    "ODbL-1.0": "https://opendatacommons.org/licenses/odbl/1-0/",
    "LicenseRef-MyoVault-DUA": "data use agreement required (see the access conditions)",
}

FIELDS = (
    "title",
    "description",
    "diseases",
    "site_names",
    "contact",
    "licence",
    "data_use_conditions",
    "keywords",
    "funding",
    "publications",
)


def _text(value: Any, field: str, max_len: int, required: bool = False) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ValidationError(f"{field}: expected text")
    value = value.strip()
    if required and not value:
        raise ValidationError(f"{field}: required")
    if len(value) > max_len:
        raise ValidationError(f"{field}: at most {max_len} characters")
    return value


def _list(value: Any, field: str, max_items: int = 50) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValidationError(f"{field}: expected a list")
    if len(value) > max_items:
        raise ValidationError(f"{field}: at most {max_items} entries")
    return value


def _closed(entry: Any, field: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ValidationError(f"{field}: each entry must be an object")
    unknown = set(entry) - allowed
    if unknown:
        raise ValidationError(f"{field}: unknown keys {', '.join(sorted(unknown))}")
    return entry


def validate(record: dict[str, Any]) -> dict[str, Any]:
    """Return the normalised metadata record or raise :class:`ValidationError` (fail closed)."""
    if not isinstance(record, dict):
        raise ValidationError("metadata must be an object")
    unknown = set(record) - set(FIELDS)
    if unknown:
        raise ValidationError(f"unknown metadata fields: {', '.join(sorted(unknown))}")
    out: dict[str, Any] = {
        "title": _text(record.get("title"), "title", 300, required=True),
        "description": _text(record.get("description"), "description", 20000),
    }
    diseases = []
    for entry in _list(record.get("diseases"), "diseases"):
        entry = _closed(entry, "diseases", {"name", "orpha", "icd10"})
        name = _text(entry.get("name"), "disease name", 200, required=True)
        orpha = _text(entry.get("orpha"), "ORPHA code", 20).upper()
        icd10 = _text(entry.get("icd10"), "ICD-10 code", 10).upper()
        if orpha and not orpha.startswith("ORPHA:"):
            orpha = f"ORPHA:{orpha}"
        if orpha and not ORPHA_RE.match(orpha):
            raise ValidationError(f"{name}: ORPHA code must look like ORPHA:269")
        if icd10 and not ICD10_RE.match(icd10):
            raise ValidationError(f"{name}: ICD-10 code must look like G71.0")
        if not (orpha or icd10):
            raise ValidationError(f"{name}: give an ORPHA and/or ICD-10 code")
        diseases.append({"name": name, "orpha": orpha, "icd10": icd10})
    out["diseases"] = diseases
    out["site_names"] = [
        _text(s, "site", 300, required=True) for s in _list(record.get("site_names"), "sites")
    ]
    contact = record.get("contact") or {}
    contact = _closed(contact, "contact", {"name", "email", "affiliation"})
    email = _text(contact.get("email"), "contact email", 320)
    if email and not EMAIL_RE.match(email):
        raise ValidationError("contact email is not an email address")
    out["contact"] = {
        "name": _text(contact.get("name"), "contact name", 200),
        "email": email,
        "affiliation": _text(contact.get("affiliation"), "contact affiliation", 300),
    }
    licence = _text(record.get("licence"), "licence", 100)
    if licence and licence not in LICENCES:
        raise ValidationError(f"licence must be one of {', '.join(LICENCES)}")
    out["licence"] = licence
    duo = []
    for term in _list(record.get("data_use_conditions"), "data_use_conditions"):
        term = _text(term, "data use condition", 20).upper()
        if term not in DUO_TERMS:
            raise ValidationError(f"unknown DUO term {term!r}")
        duo.append(term)
    out["data_use_conditions"] = sorted(set(duo))
    keywords = [
        _text(k, "keyword", 100, required=True) for k in _list(record.get("keywords"), "keywords")
    ]
    out["keywords"] = list(dict.fromkeys(keywords))
    funding = []
    for entry in _list(record.get("funding"), "funding"):
        entry = _closed(entry, "funding", {"funder", "award"})
        funding.append(
            {
                "funder": _text(entry.get("funder"), "funder", 300, required=True),
                "award": _text(entry.get("award"), "award", 100),
            }
        )
    out["funding"] = funding
    publications = []
    for entry in _list(record.get("publications"), "publications"):
        entry = _closed(entry, "publications", {"doi", "citation"})
        doi = _text(entry.get("doi"), "DOI", 200)
        if doi.lower().startswith("https://doi.org/"):
            doi = doi[len("https://doi.org/") :]
        if doi and not DOI_RE.match(doi):
            raise ValidationError(f"{doi!r} is not a DOI (10.xxxx/…)")
        citation = _text(entry.get("citation"), "citation", 2000)
        if not (doi or citation):
            raise ValidationError("publications: give a DOI or a citation")
        publications.append({"doi": doi, "citation": citation})
    out["publications"] = publications
    return out


def record_of(project: Project) -> dict[str, Any]:
    """The current metadata record of ``project`` (public fields only)."""
    return {
        "title": project.title,
        "description": project.description,
        "diseases": list(project.diseases or []),
        "site_names": list(project.site_names or []),
        "contact": dict(project.contact or {}),
        "licence": project.licence,
        "data_use_conditions": list(project.data_use_conditions or []),
        "keywords": list(project.keywords or []),
        "funding": list(project.funding or []),
        "publications": list(project.publications or []),
    }


def update_metadata(
    session: Session, actor: Actor, project: Project, record: dict[str, Any]
) -> ProjectMetadataVersion:
    """Validate and save ``record`` as the next metadata version of ``project`` (audited)."""
    policy.require(session, actor, "project.edit", project)
    clean = validate(record)
    before = record_of(project)
    for field, value in clean.items():
        setattr(project, field, value)
    project.metadata_version = (project.metadata_version or 0) + 1
    project.metadata_updated_at = utcnow()
    version = ProjectMetadataVersion(
        project_id=project.id,
        version=project.metadata_version,
        record=clean,
        created_by_id=actor.user_id,
    )
    session.add(version)
    session.flush()
    changed = sorted(f for f in FIELDS if before.get(f) != clean.get(f))
    audit.record(
        session,
        actor,
        "project.metadata.update",
        object_type="project",
        object_id=project.id,
        project_id=project.id,
        details={"version": version.version, "changed": changed},
    )
    return version


def versions(session: Session, actor: Actor, project: Project) -> list[ProjectMetadataVersion]:
    policy.require(session, actor, "project.view_metadata", project)
    return list(
        session.scalars(
            select(ProjectMetadataVersion)
            .where(ProjectMetadataVersion.project_id == project.id)
            .order_by(ProjectMetadataVersion.version.desc())
        )
    )
