"""Consent pages for site investigators and owners: records, bulk import, withdrawal, erasure,
provenance (PROV-JSON), the Art. 30 record and the Art. 15 access report."""

from __future__ import annotations

import json

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from consent.duo import TERMS
from consent.records import ART6_BASES, ART9_CONDITIONS
from repository.attachments import attachment_response
from repository.errors import Conflict, Forbidden, ValidationError
from repository.request_context import actor, db, ext
from repository.services import consent as consent_service
from repository.services import erasure, projects, provenance
from repository.web.guards import login_required

bp = Blueprint("consent", __name__)
MAX_TABLE_BYTES = 5 * 1024 * 1024


def _project(slug: str, action: str):  # type: ignore[no-untyped-def]
    return projects.get_project(db(), actor(), slug, action)


def _json_download(body: str, filename: str) -> Response:
    return attachment_response(body, filename=filename, mimetype="application/json")


@bp.get("/projects/<slug>/consent")
@login_required
def overview(slug: str) -> str:
    project = _project(slug, "project.manage_consent")
    return _overview_page(project, None)


def _overview_page(project, import_errors):  # type: ignore[no-untyped-def]
    own = consent_service.own_site(db(), actor(), project)
    return render_template(
        "consent/overview.html",
        project=project,
        rows=consent_service.overview(db(), actor(), project),
        terms=TERMS,
        art6=ART6_BASES,
        art9=ART9_CONDITIONS,
        import_errors=import_errors,
        sites=sorted(project.sites, key=lambda s: s.code),
        own_site=own.code if own is not None else "",
    )


@bp.post("/projects/<slug>/consent")
@login_required
def record(slug: str) -> Response:
    project = _project(slug, "project.manage_consent")
    form = request.form
    given_pseudonym = form.get("pseudonym", "").strip()
    data: dict[str, object] = {
        "pseudonym": given_pseudonym,
        "form": form.get("form", ""),
        "form_version": form.get("form_version", ""),
        "signed_on": form.get("signed_on", ""),
        "duo_terms": " ".join(
            [form.get("permission", ""), *form.getlist("modifier"), form.get("extra_terms", "")]
        ),
        "lawful_basis": form.get("lawful_basis", ""),
        "special_category_basis": form.get("special_category_basis", ""),
        "recontact_allowed": form.get("recontact_allowed") == "on",
        "expires_on": form.get("expires_on", ""),
    }
    participant_id = form.get("participant_id", "")
    try:
        if participant_id.strip():
            if given_pseudonym:
                raise ValidationError("give either a pseudonym or a participant id, not both")
            registration, row = consent_service.register_with_consent(
                db(),
                actor(),
                project,
                {**data, "participant_id": participant_id, "site": form.get("site", "")},
                unwrap=ext().unwrap_project_secret,
                source="ui",
            )
            pseudonym = registration.subject.pseudonym
            done = "registered as" if registration.created else "already registered as"
            message = f"Participant {done} {pseudonym}; consent version {row.version} recorded."
        else:
            row = consent_service.record_consent(db(), actor(), project, data, source="ui")
            pseudonym = given_pseudonym
            message = f"Consent version {row.version} recorded for {pseudonym}."
    except (ValidationError, Conflict, Forbidden) as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("consent.overview", slug=slug))
    db().commit()
    flash(message, "success")
    return redirect(url_for("consent.overview", slug=slug))


@bp.post("/projects/<slug>/consent/import")
@login_required
def import_table(slug: str) -> Response | tuple[str, int]:
    project = _project(slug, "project.manage_consent")
    upload = request.files.get("table")
    raw = upload.read(MAX_TABLE_BYTES + 1) if upload is not None else b""
    if not raw or len(raw) > MAX_TABLE_BYTES:
        flash("Choose a CSV or TSV file of at most 5 MiB.", "error")
        return redirect(url_for("consent.overview", slug=slug))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        flash("The file must be UTF-8 text.", "error")
        return redirect(url_for("consent.overview", slug=slug))
    result = consent_service.import_table(
        db(), actor(), project, text, unwrap=ext().unwrap_project_secret
    )
    if not result.ok:
        db().rollback()
        return _overview_page(project, result.errors), 422
    db().commit()
    registered = f" ({result.registered} participants registered)" if result.registered else ""
    flash(f"{result.created} consent records imported{registered}.", "success")
    return redirect(url_for("consent.overview", slug=slug))


@bp.get("/projects/<slug>/subjects/<pseudonym>/consent")
@login_required
def subject(slug: str, pseudonym: str) -> str:
    project = _project(slug, "project.manage_consent")
    versions = consent_service.history(db(), actor(), project, pseudonym)
    subj = consent_service.find_subject(db(), project, pseudonym)
    return render_template(
        "consent/subject.html",
        project=project,
        subject=subj,
        versions=versions,
        status="erased"
        if subj.erased_at
        else consent_service.consent_status(versions[-1] if versions else None),
    )


@bp.post("/projects/<slug>/subjects/<pseudonym>/withdraw")
@login_required
def withdraw(slug: str, pseudonym: str) -> Response:
    project = _project(slug, "project.manage_consent")
    try:
        consent_service.withdraw(
            db(), actor(), project, pseudonym, reason=request.form.get("reason", "")
        )
    except (ValidationError, Conflict) as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("consent.subject", slug=slug, pseudonym=pseudonym))
    db().commit()
    flash(
        f"Consent of {pseudonym} withdrawn; they are excluded from searches and new cohorts.",
        "success",
    )
    return redirect(url_for("consent.subject", slug=slug, pseudonym=pseudonym))


@bp.post("/projects/<slug>/subjects/<pseudonym>/erase")
@login_required
def erase(slug: str, pseudonym: str) -> Response:
    project = _project(slug, "project.erase_subject")
    if request.form.get("confirm", "") != pseudonym:
        flash("Type the pseudonym to confirm the erasure.", "error")
        return redirect(url_for("consent.subject", slug=slug, pseudonym=pseudonym))
    try:
        report = erasure.erase_subject(
            db(),
            actor(),
            project,
            pseudonym,
            reason=request.form.get("reason", ""),
            store=ext().store,
        )
    except (ValidationError, Conflict) as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("consent.subject", slug=slug, pseudonym=pseudonym))
    db().commit()
    flash(
        f"{pseudonym} erased: {report.keys_destroyed} data key destroyed, "
        f"{report.objects_deleted} objects deleted.",
        "success",
    )
    return redirect(url_for("consent.subject", slug=slug, pseudonym=pseudonym))


@bp.get("/projects/<slug>/subjects/<pseudonym>/access-report")
@login_required
def access_report(slug: str, pseudonym: str) -> str:
    project = _project(slug, "project.manage_consent")
    report = provenance.access_report(db(), actor(), project, pseudonym)
    db().commit()  # the report itself is audited
    return render_template("consent/access_report.html", project=project, report=report)


@bp.get("/projects/<slug>/subjects/<pseudonym>/prov.json")
@login_required
def subject_prov(slug: str, pseudonym: str) -> Response:
    project = _project(slug, "project.view_data")
    return _json_download(
        provenance.subject_prov(db(), actor(), project, pseudonym), f"prov-{slug}-{pseudonym}.json"
    )


@bp.get("/projects/<slug>/prov.json")
@login_required
def project_prov(slug: str) -> Response:
    project = _project(slug, "project.view_data")
    return _json_download(provenance.project_prov(db(), actor(), project), f"prov-{slug}.json")


@bp.get("/projects/<slug>/processing-record")
@login_required
def processing_record(slug: str) -> str | Response:
    project = _project(slug, "project.view_processing_record")
    record = provenance.processing_record(db(), actor(), project)
    if request.args.get("format") == "json":
        return _json_download(json.dumps(record, indent=2), f"art30-{slug}.json")
    return render_template("consent/art30.html", project=project, record=record)
