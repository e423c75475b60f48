"""Landing pages (projects and snapshots), DataCite/JSON-LD exports, PID resolver, sitemap."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET  # noqa: S405  (we only build XML)
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup
from sqlalchemy import select
from werkzeug.wrappers import Response

from repository.errors import ValidationError
from repository.models import CohortSnapshot, Project
from repository.request_context import actor, db
from repository.security import policy
from repository.services import metadata, projects, snapshots
from repository.services.context import ANONYMOUS
from repository.services.pids import datacite_attributes, datacite_xml
from repository.web.guards import login_required

bp = Blueprint("catalog", __name__)


def _jsonld(doc: dict[str, Any]) -> Markup:
    # JSON in a <script type="application/ld+json"> block (data, not executed; CSP-safe).
    text = json.dumps(doc, ensure_ascii=False, sort_keys=True)
    text = text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)  # noqa: S704  (escaped above)


def project_record(project: Project) -> dict[str, Any]:
    url = url_for("catalog.dataset_page", slug=project.slug, _external=True)
    return snapshots.landing_record_for(project, None, url=url)


def snapshot_record(project: Project, snapshot: CohortSnapshot) -> dict[str, Any]:
    url = url_for("catalog.snapshot_page", snapshot_id=snapshot.id, _external=True)
    return snapshots.landing_record_for(project, snapshot, url=url)


@bp.get("/datasets/<slug>")
def dataset_page(slug: str) -> str:
    session, current = db(), actor()
    project = projects.get_project(session, current, slug, "project.view_metadata")
    record = project_record(project)
    stats = snapshots.statistics(session, current, project, None)
    return render_template(
        "search/dataset.html",
        project=project,
        record=record,
        stats=stats,
        jsonld=_jsonld(snapshots.schema_org(record, stats)),
        duo=metadata.DUO_TERMS,
        licences=metadata.LICENCES,
        snapshots=snapshots.list_snapshots(session, current, project),
        can_edit=policy.can(session, current, "project.edit", project),
    )


@bp.get("/cohorts/<int:snapshot_id>")
def snapshot_page(snapshot_id: int) -> str:
    session, current = db(), actor()
    snapshot = snapshots.get_snapshot(session, current, snapshot_id)
    project = session.get(Project, snapshot.project_id)
    assert project is not None  # noqa: S101  (foreign key)
    record = snapshot_record(project, snapshot)
    stats = snapshots.statistics(session, current, project, snapshot.subject_ids)
    return render_template(
        "search/snapshot.html",
        project=project,
        snapshot=snapshot,
        record=record,
        stats=stats,
        jsonld=_jsonld(snapshots.schema_org(record, stats)),
        duo=metadata.DUO_TERMS,
        licences=metadata.LICENCES,
        versions=snapshots.versions_of(session, snapshot),
        can_view_data=policy.can(session, current, "project.view_data", project),
    )


@bp.get("/pid/<path:pid>")
def resolve(pid: str) -> Response:
    snapshot = snapshots.by_pid(db(), actor(), pid)
    return redirect(url_for("catalog.snapshot_page", snapshot_id=snapshot.id), code=303)


def _xml_response(root: ET.Element) -> Response:
    body = ET.tostring(root, encoding="unicode", xml_declaration=False)
    return Response('<?xml version="1.0" encoding="UTF-8"?>\n' + body, mimetype="application/xml")


@bp.get("/datasets/<slug>/datacite.xml")
def dataset_datacite_xml(slug: str) -> Response:
    project = projects.get_project(db(), actor(), slug, "project.view_metadata")
    url = url_for("catalog.dataset_page", slug=slug, _external=True)
    return _xml_response(datacite_xml(project_record(project), url, "URL"))


@bp.get("/datasets/<slug>/datacite.json")
def dataset_datacite_json(slug: str) -> Response:
    project = projects.get_project(db(), actor(), slug, "project.view_metadata")
    return jsonify(
        data={"type": "dois", "attributes": datacite_attributes(project_record(project))}
    )


def _snapshot_and_project(snapshot_id: int) -> tuple[CohortSnapshot, Project]:
    session = db()
    snapshot = snapshots.get_snapshot(session, actor(), snapshot_id)
    project = session.get(Project, snapshot.project_id)
    assert project is not None  # noqa: S101
    return snapshot, project


@bp.get("/cohorts/<int:snapshot_id>/datacite.xml")
def snapshot_datacite_xml(snapshot_id: int) -> Response:
    snapshot, project = _snapshot_and_project(snapshot_id)
    kind = "DOI" if snapshot.pid_kind == "doi" else "URL"
    ident = (
        snapshot.pid
        if snapshot.pid_kind == "doi"
        else url_for("catalog.resolve", pid=snapshot.pid, _external=True)
    )
    return _xml_response(datacite_xml(snapshot_record(project, snapshot), ident, kind))


@bp.get("/cohorts/<int:snapshot_id>/datacite.json")
def snapshot_datacite_json(snapshot_id: int) -> Response:
    snapshot, project = _snapshot_and_project(snapshot_id)
    attrs = datacite_attributes(snapshot_record(project, snapshot))
    if snapshot.pid_kind == "doi":
        attrs["doi"] = snapshot.pid
    else:
        attrs["alternateIdentifiers"] = [
            {"alternateIdentifier": snapshot.pid, "alternateIdentifierType": "local"}
        ]
    return jsonify(data={"type": "dois", "attributes": attrs})


@bp.get("/cohorts/<int:snapshot_id>/manifest.json")
@login_required
def snapshot_manifest(snapshot_id: int) -> Response:
    session = db()
    snapshot = snapshots.get_snapshot(session, actor(), snapshot_id)
    data = snapshots.manifest(session, actor(), snapshot)
    session.commit()  # the audit event of the view
    return jsonify(data)


@bp.route("/datasets/<slug>/metadata", methods=["GET", "POST"])
@login_required
def edit_metadata(slug: str) -> str | Response:
    session, current = db(), actor()
    project = projects.get_project(session, current, slug, "project.edit")
    form = request.form
    record = metadata.record_of(project)
    error = None
    if request.method == "POST":
        try:
            record = _record_from_form(form)
            version = metadata.update_metadata(session, current, project, record)
        except ValidationError as exc:
            error = exc.message
        else:
            session.commit()
            flash(f"Metadata saved (version {version.version}).", "success")
            return redirect(url_for("catalog.dataset_page", slug=slug))
    return render_template(
        "search/metadata_form.html",
        project=project,
        record=record,
        error=error,
        duo=metadata.DUO_TERMS,
        licences=metadata.LICENCES,
        versions=metadata.versions(session, current, project),
    )


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _record_from_form(form: Any) -> dict[str, Any]:
    """Form fields → metadata record. Multi-part lines use ' | ' between parts."""

    def parts(line: str, n: int) -> list[str]:
        items = [p.strip() for p in line.split("|")]
        if len(items) > n:
            raise ValidationError(f"too many ' | ' parts in {line!r}")
        return items + [""] * (n - len(items))

    diseases = []
    for line in _lines(form.get("diseases", "")):
        name, orpha, icd10 = parts(line, 3)
        diseases.append({"name": name, "orpha": orpha, "icd10": icd10})
    funding = [
        dict(zip(("funder", "award"), parts(x, 2), strict=True))
        for x in _lines(form.get("funding", ""))
    ]
    publications = []
    for line in _lines(form.get("publications", "")):
        doi, citation = parts(line, 2)
        publications.append({"doi": doi, "citation": citation})
    return {
        "title": form.get("title", ""),
        "description": form.get("description", ""),
        "diseases": diseases,
        "site_names": _lines(form.get("site_names", "")),
        "contact": {
            "name": form.get("contact_name", ""),
            "email": form.get("contact_email", ""),
            "affiliation": form.get("contact_affiliation", ""),
        },
        "licence": form.get("licence", ""),
        "data_use_conditions": form.getlist("duo"),
        "keywords": [k.strip() for k in form.get("keywords", "").split(",") if k.strip()],
        "funding": funding,
        "publications": publications,
    }


SITEMAP_NS = "http://www.sitemaps.org/schemas/sitemap/0.9"


@bp.get("/sitemap.xml")
def sitemap() -> Response:
    """Public landing pages only (what an anonymous visitor may see)."""
    session = db()
    ET.register_namespace("", SITEMAP_NS)
    root = ET.Element(f"{{{SITEMAP_NS}}}urlset")

    def add(loc: str, lastmod: Any) -> None:
        url = ET.SubElement(root, f"{{{SITEMAP_NS}}}url")
        ET.SubElement(url, f"{{{SITEMAP_NS}}}loc").text = loc
        if lastmod is not None:
            ET.SubElement(url, f"{{{SITEMAP_NS}}}lastmod").text = lastmod.date().isoformat()

    add(url_for("search.search_page", _external=True), None)
    for project in projects.list_projects(session, ANONYMOUS):
        add(
            url_for("catalog.dataset_page", slug=project.slug, _external=True),
            project.metadata_updated_at,
        )
    public = select(CohortSnapshot).join(Project, Project.id == CohortSnapshot.project_id)
    public = public.where(policy.project_filter(ANONYMOUS, "project.view_metadata"))
    for snapshot in session.scalars(public.order_by(CohortSnapshot.id)):
        add(
            url_for("catalog.snapshot_page", snapshot_id=snapshot.id, _external=True),
            snapshot.created_at,
        )
    return _xml_response(root)
