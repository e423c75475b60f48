"""API: consent records, access requests, committee votes, grants, downloads, provenance, GDPR
reports. Thin: parse, call one service, serialise. Counts shown to requesters are suppressed."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from flask import Response, jsonify, request, stream_with_context, url_for

from repository.api import api_bp
from repository.api.requests import json_body, require_user
from repository.attachments import attachment_response
from repository.errors import ValidationError
from repository.models import AccessRequest, Consent, Grant, Project
from repository.request_context import actor, db, ext
from repository.security import policy
from repository.services import access, downloads, erasure, projects, provenance
from repository.services import consent as consent_service


def _project(slug: str, action: str) -> Project:
    require_user()
    return projects.get_project(db(), actor(), slug, action)


def _requestable(slug: str) -> Project:
    require_user()
    return access.requestable_project(db(), actor(), slug)


def consent_json(c: Consent) -> dict[str, Any]:
    return {
        "version": c.version,
        "form": c.form,
        "form_version": c.form_version,
        "signed_on": c.signed_on.isoformat(),
        "duo_terms": list(c.duo_terms),
        "lawful_basis": c.lawful_basis,
        "special_category_basis": c.special_category_basis,
        "recontact_allowed": c.recontact_allowed,
        "expires_on": c.expires_on.isoformat() if c.expires_on else None,
        "withdrawn_on": c.withdrawn_on.isoformat() if c.withdrawn_on else None,
        "source": c.source,
        "created_at": c.created_at.isoformat(),
    }


def request_json(req: AccessRequest, *, as_requester: bool) -> dict[str, Any]:
    shown = access.suppress if as_requester else (lambda n: n)
    return {
        "id": req.id,
        "project": req.project_id,
        "status": req.status,
        "purpose": req.purpose,
        "intended_use": req.intended_use,
        "institution": req.institution,
        "data": req.data_level.split(","),
        "snapshot_id": req.snapshot_id,
        "included": shown(len(req.matched_subject_ids)),
        "exclusions": {k: shown(v) for k, v in sorted(req.exclusions.items())},
        "ethics_approval": req.ethics_object_id is not None,
        "deadline_at": req.deadline_at.isoformat() if req.deadline_at else None,
        "created_at": req.created_at.isoformat(),
    }


def grant_json(g: Grant) -> dict[str, Any]:
    return {
        "id": g.id,
        "request": g.request_id,
        "project": g.project_id,
        "data": g.data_level.split(","),
        "state": access.grant_state(g),
        "expires_at": g.expires_at.isoformat(),
        "conditions": g.conditions,
        "subjects": len(g.subject_ids or []),
    }


@api_bp.get("/projects/<slug>/consents")
def list_consents(slug: str) -> Response:
    """Current consent of every subject of a project.
    ---
    get:
      summary: Consent overview (investigators and owners).
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      responses:
        200: {description: Subjects with their current consent version and status.}
        401: {description: No token.}
        403: {description: Not allowed.}
        404: {description: No such project.}
    """
    project = _project(slug, "project.manage_consent")
    rows = consent_service.overview(db(), actor(), project)
    return jsonify(
        subjects=[
            {
                "pseudonym": r.subject.pseudonym,
                "status": r.status,
                "consent": consent_json(r.consent) if r.consent else None,
            }
            for r in rows
        ]
    )


@api_bp.post("/projects/<slug>/consents")
def record_consent(slug: str) -> tuple[Response, int]:
    """Record a new consent version for a subject.
    ---
    post:
      summary: Append a consent version (never overwrites).
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [pseudonym, form, form_version, signed_on, duo_terms, lawful_basis, special_category_basis]
              properties:
                pseudonym: {type: string}
                form: {type: string}
                form_version: {type: string}
                signed_on: {type: string, format: date}
                duo_terms: {type: array, items: {type: string}, example: [HMB, IRB]}
                lawful_basis: {type: string, example: 6(1)(e)}
                special_category_basis: {type: string, example: 9(2)(j)}
                recontact_allowed: {type: boolean}
                expires_on: {type: string, format: date}
      responses:
        201: {description: Recorded.}
        403: {description: Not allowed.}
        404: {description: No such project or subject.}
        409: {description: Subject erased.}
        422: {description: Invalid fields (all problems listed).}
    """
    project = _project(slug, "project.manage_consent")
    row = consent_service.record_consent(db(), actor(), project, json_body(), source="api")
    result = consent_json(row)
    db().commit()
    return jsonify(consent=result), 201


@api_bp.post("/projects/<slug>/consents/import")
def import_consents(slug: str) -> tuple[Response, int]:
    """Bulk import a consent CSV/TSV (all rows or none).
    ---
    post:
      summary: Import consent records from CSV or TSV text.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          text/csv: {schema: {type: string}}
          text/tab-separated-values: {schema: {type: string}}
      responses:
        201: {description: All rows imported.}
        403: {description: Not allowed.}
        404: {description: No such project.}
        422: {description: Row-level errors; nothing imported.}
    """
    project = _project(slug, "project.manage_consent")
    try:
        text = request.get_data(cache=False).decode("utf-8")
    except UnicodeDecodeError:
        raise ValidationError("the table must be UTF-8 text") from None
    result = consent_service.import_table(
        db(), actor(), project, text, unwrap=ext().unwrap_project_secret
    )
    if not result.ok:
        db().rollback()
        return jsonify(
            error="invalid",
            message="nothing was imported",
            rows=[{"line": e.line, "problems": list(e.problems)} for e in result.errors],
        ), 422
    db().commit()
    return jsonify(imported=result.created, registered=result.registered), 201


@api_bp.post("/projects/<slug>/participants")
def register_participant(slug: str) -> tuple[Response, int]:
    """Register a participant not uploaded yet, by the site's own participant id.
    ---
    post:
      summary: Get (or create) the pseudonymous subject of a site participant.
      description: >
        The participant id is used once to compute the keyed pseudonym the de-identification
        will give the participant's images (project secret, project, site, id); it is never
        stored or returned. With consent fields (as for POST consents) a consent version is
        recorded as well.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [participant_id]
              properties:
                participant_id: {type: string, maxLength: 64}
                site: {type: string, description: site code (default the caller's own site)}
                consent: {type: object, description: optional consent fields (no pseudonym)}
      responses:
        201: {description: Subject created.}
        200: {description: The participant was already registered (or uploaded).}
        403: {description: Not allowed (or another site than the caller's).}
        404: {description: No such project.}
        409: {description: The participant was erased.}
        422: {description: Invalid fields (all problems listed).}
    """
    project = _project(slug, "project.manage_consent")
    body = json_body()
    unwrap = ext().unwrap_project_secret
    consent_fields = body.get("consent")
    if consent_fields is not None and not isinstance(consent_fields, dict):
        raise ValidationError("consent must be an object of consent fields")
    result: dict[str, Any]
    if consent_fields:
        registration, row = consent_service.register_with_consent(
            db(),
            actor(),
            project,
            {
                **consent_fields,
                "participant_id": body.get("participant_id", ""),
                "site": body.get("site", ""),
            },
            unwrap=unwrap,
            source="api",
        )
        result = {"consent": consent_json(row)}
    else:
        registration = consent_service.register_participant(
            db(),
            actor(),
            project,
            participant_id=str(body.get("participant_id") or ""),
            site_code=str(body.get("site") or ""),
            unwrap=unwrap,
        )
        result = {}
    result = {
        "pseudonym": registration.subject.pseudonym,
        "created": registration.created,
        **result,
    }
    db().commit()
    return jsonify(result), 201 if registration.created else 200


@api_bp.get("/projects/<slug>/subjects/<pseudonym>/consents")
def consent_history(slug: str, pseudonym: str) -> Response:
    """Every consent version of one subject.
    ---
    get:
      summary: Consent history.
      security: [{bearer: []}]
      parameters:
        - {name: slug, in: path, required: true, schema: {type: string}}
        - {name: pseudonym, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: Versions, oldest first.}
        403: {description: Not allowed.}
        404: {description: No such project or subject.}
    """
    project = _project(slug, "project.manage_consent")
    return jsonify(
        versions=[
            consent_json(c) for c in consent_service.history(db(), actor(), project, pseudonym)
        ]
    )


@api_bp.post("/projects/<slug>/subjects/<pseudonym>/withdraw")
def withdraw_consent(slug: str, pseudonym: str) -> Response:
    """Withdraw a subject's consent (effective immediately).
    ---
    post:
      summary: Withdraw consent; grant holders are notified.
      security: [{bearer: []}]
      parameters:
        - {name: slug, in: path, required: true, schema: {type: string}}
        - {name: pseudonym, in: path, required: true, schema: {type: string}}
      requestBody:
        content:
          application/json:
            schema: {type: object, properties: {reason: {type: string}}}
      responses:
        200: {description: The new (withdrawn) version.}
        403: {description: Not allowed.}
        404: {description: No such project or subject.}
        409: {description: Already withdrawn or no consent.}
    """
    project = _project(slug, "project.manage_consent")
    body = request.get_json(silent=True) or {}
    row = consent_service.withdraw(
        db(), actor(), project, pseudonym, reason=str(body.get("reason", ""))
    )
    result = consent_json(row)
    db().commit()
    return jsonify(consent=result)


@api_bp.post("/projects/<slug>/subjects/<pseudonym>/erase")
def erase_subject(slug: str, pseudonym: str) -> Response:
    """Erase a subject (crypto-shredding; owners).
    ---
    post:
      summary: Destroy the subject's data key, delete objects, leave a tombstone.
      security: [{bearer: []}]
      parameters:
        - {name: slug, in: path, required: true, schema: {type: string}}
        - {name: pseudonym, in: path, required: true, schema: {type: string}}
      requestBody:
        content:
          application/json:
            schema: {type: object, required: [reason], properties: {reason: {type: string}}}
      responses:
        200: {description: What was destroyed.}
        403: {description: Not allowed.}
        404: {description: No such project or subject.}
        409: {description: Already erased.}
        422: {description: No reason given.}
    """
    project = _project(slug, "project.erase_subject")
    report = erasure.erase_subject(
        db(),
        actor(),
        project,
        pseudonym,
        reason=str(json_body().get("reason", "")),
        store=ext().store,
    )
    db().commit()
    return jsonify(
        erased=report.pseudonym,
        keys_destroyed=report.keys_destroyed,
        objects_deleted=report.objects_deleted,
        metrics_deleted=report.metrics_deleted,
    )


@api_bp.get("/projects/<slug>/subjects/<pseudonym>/access-report")
def subject_access_report(slug: str, pseudonym: str) -> Response:
    """GDPR Art. 15 access report of one participant.
    ---
    get:
      summary: Which grants and downloads included this participant (audited).
      security: [{bearer: []}]
      parameters:
        - {name: slug, in: path, required: true, schema: {type: string}}
        - {name: pseudonym, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: The report.}
        403: {description: Not allowed.}
        404: {description: No such project or subject.}
    """
    project = _project(slug, "project.manage_consent")
    report = provenance.access_report(db(), actor(), project, pseudonym)
    db().commit()
    return jsonify(report)


def _prov_response(text: str) -> Response:
    return Response(text, mimetype="application/json")


@api_bp.get("/projects/<slug>/subjects/<pseudonym>/prov")
def subject_prov(slug: str, pseudonym: str) -> Response:
    """W3C PROV-JSON of one subject's objects and derived numbers.
    ---
    get:
      summary: Subject provenance (PROV-JSON).
      security: [{bearer: []}]
      parameters:
        - {name: slug, in: path, required: true, schema: {type: string}}
        - {name: pseudonym, in: path, required: true, schema: {type: string}}
      responses:
        200: {description: PROV-JSON document.}
        403: {description: Not allowed.}
        404: {description: No such project or subject.}
    """
    project = _project(slug, "project.view_data")
    return _prov_response(provenance.subject_prov(db(), actor(), project, pseudonym))


@api_bp.get("/projects/<slug>/prov")
def project_prov(slug: str) -> Response:
    """W3C PROV-JSON of a whole project.
    ---
    get:
      summary: Project provenance (PROV-JSON).
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      responses:
        200: {description: PROV-JSON document.}
        403: {description: Not allowed.}
        404: {description: No such project.}
    """
    project = _project(slug, "project.view_data")
    return _prov_response(provenance.project_prov(db(), actor(), project))


@api_bp.get("/projects/<slug>/processing-record")
def processing_record(slug: str) -> Response:
    """GDPR Art. 30 record of processing for a project.
    ---
    get:
      summary: Art. 30 record (owners and admins).
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      responses:
        200: {description: The record.}
        403: {description: Not allowed.}
        404: {description: No such project.}
    """
    project = _project(slug, "project.view_processing_record")
    return jsonify(provenance.processing_record(db(), actor(), project))


def _request_args(body: dict[str, Any]) -> dict[str, Any]:
    use = body.get("intended_use")
    if not isinstance(use, dict):
        raise ValidationError('intended_use must be an object, e.g. {"purpose": "HMB"}')
    snapshot = body.get("snapshot_id")
    if snapshot is not None and not isinstance(snapshot, int):
        raise ValidationError("snapshot_id must be an integer")
    return {"use": use, "institution": str(body.get("institution", "")), "snapshot_id": snapshot}


@api_bp.post("/projects/<slug>/access-requests/preview")
def preview_request(slug: str) -> Response:
    """How many participants' consent covers an intended use (suppressed counts).
    ---
    post:
      summary: Preview matching participants without filing a request.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [intended_use]
              properties:
                intended_use: {type: object}
                institution: {type: string}
                snapshot_id: {type: integer}
      responses:
        200: {description: Counts included and excluded by reason (no identities).}
        401: {description: No token.}
        404: {description: No such project or snapshot.}
        422: {description: Invalid intended use.}
    """
    project = _requestable(slug)
    args = _request_args(json_body())
    result = access.preview(db(), actor(), project, **args)
    return jsonify(result.public())


@api_bp.post("/projects/<slug>/access-requests")
def create_access_request(slug: str) -> tuple[Response, int]:
    """File an access request.
    ---
    post:
      summary: Request access to a project or cohort snapshot.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [purpose, intended_use, institution, data]
              properties:
                purpose: {type: string}
                intended_use: {type: object, description: "purpose (GRU|HMB|DS|POA), disease, commercial, for_profit, methods_development, genetic_study, country, project, until, accepts"}
                institution: {type: string}
                data: {type: array, items: {type: string, enum: [images, maps, metrics]}}
                duration_days: {type: integer}
                snapshot_id: {type: integer}
                ethics_approval_base64: {type: string}
      responses:
        201: {description: Filed.}
        401: {description: No token.}
        404: {description: No such project or snapshot.}
        409: {description: A pending request exists.}
        422: {description: Invalid, or no participant's consent covers the use.}
    """
    project = _requestable(slug)
    body = json_body()
    args = _request_args(body)
    ethics = None
    if body.get("ethics_approval_base64"):
        try:
            ethics = base64.b64decode(str(body["ethics_approval_base64"]), validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("ethics_approval_base64 is not valid base64") from None
    data = body.get("data")
    if not isinstance(data, list):
        raise ValidationError('data must be a list such as ["metrics"]')
    duration = body.get("duration_days", 365)
    req = access.create_request(
        db(),
        actor(),
        project,
        purpose=str(body.get("purpose", "")),
        data_kinds=[str(d) for d in data],
        duration_days=duration if isinstance(duration, int) else 0,
        ethics_document=ethics,
        store=ext().store,
        **args,
    )
    result = request_json(req, as_requester=True)
    db().commit()
    return jsonify(request=result), 201


@api_bp.get("/access-requests")
def list_access_requests() -> Response:
    """The caller's requests and the committee queue.
    ---
    get:
      summary: My requests, and pending requests of committees I sit on.
      security: [{bearer: []}]
      responses:
        200: {description: Requests.}
        401: {description: No token.}
    """
    require_user()
    return jsonify(
        mine=[request_json(r, as_requester=True) for r in access.my_requests(db(), actor())],
        to_review=[request_json(r, as_requester=False) for r in access.review_queue(db(), actor())],
    )


@api_bp.get("/access-requests/<int:request_id>/ethics-approval")
def get_ethics_approval(request_id: int) -> Response:
    """The ethics approval uploaded with an access request (audited download).
    ---
    get:
      summary: Download the ethics approval (requester, committee members, owners).
      security: [{bearer: []}]
      parameters: [{name: request_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200:
          description: The document as uploaded (SHA-256 in the Digest header).
          content:
            application/pdf: {schema: {type: string, format: binary}}
            application/octet-stream: {schema: {type: string, format: binary}}
        401: {description: No token.}
        403: {description: May see the request but not its ethics approval.}
        404: {description: No such request, not yours to see, or no approval uploaded.}
    """
    require_user()
    doc, data = access.read_ethics_document(db(), actor(), request_id, ext().store)
    db().commit()  # the download is audited
    return attachment_response(
        data, filename=doc.filename, mimetype=doc.content_type, sha256_hex=doc.object.sha256
    )


@api_bp.get("/access-requests/<int:request_id>")
def get_access_request(request_id: int) -> Response:
    """One access request (requester or committee).
    ---
    get:
      summary: Request with tally, votes and comments for committee members.
      security: [{bearer: []}]
      parameters: [{name: request_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200: {description: The request.}
        401: {description: No token.}
        404: {description: No such request (or not yours to see).}
    """
    require_user()
    req = access.get_request(db(), actor(), request_id)
    project = db().get(Project, req.project_id)
    requester = actor().user is not None and actor().user.id == req.requester_id  # type: ignore[union-attr]
    out: dict[str, Any] = {"request": request_json(req, as_requester=requester)}
    decision = access.decision_of(db(), req)
    if decision is not None:
        out["decision"] = {"outcome": decision.outcome, "reason": decision.reason}
    if project is not None and policy.can(db(), actor(), "project.review_requests", project):
        t = access.tally(db(), req)
        out["tally"] = {"summary": t.summary, "outcome": t.outcome}
        out["votes"] = [
            {"user": v.user_id, "vote": v.vote, "reason": v.reason}
            for v in access.votes(db(), actor(), req)
        ]
        out["comments"] = [
            {"user": c.user_id, "body": c.body, "at": c.created_at.isoformat()}
            for c in access.comments(db(), actor(), req)
        ]
    return jsonify(out)


@api_bp.post("/access-requests/<int:request_id>/votes")
def vote_on_request(request_id: int) -> tuple[Response, int]:
    """Vote on a request (committee members).
    ---
    post:
      summary: Cast or change your vote.
      security: [{bearer: []}]
      parameters: [{name: request_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [vote]
              properties:
                vote: {type: string, enum: [approve, refuse, abstain]}
                reason: {type: string}
      responses:
        201: {description: Recorded.}
        403: {description: Not on the committee, or your own request.}
        404: {description: No such request.}
        409: {description: Already decided.}
        422: {description: Invalid vote.}
    """
    require_user()
    body = json_body()
    access.cast_vote(
        db(), actor(), request_id, str(body.get("vote", "")), str(body.get("reason", ""))
    )
    db().commit()
    return jsonify(ok=True), 201


@api_bp.post("/access-requests/<int:request_id>/comments")
def comment_on_request(request_id: int) -> tuple[Response, int]:
    """Comment on a request (committee members).
    ---
    post:
      summary: Add to the committee discussion.
      security: [{bearer: []}]
      parameters: [{name: request_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema: {type: object, required: [body], properties: {body: {type: string}}}
      responses:
        201: {description: Added.}
        403: {description: Not on the committee.}
        404: {description: No such request.}
        422: {description: Empty or too long.}
    """
    require_user()
    access.add_comment(db(), actor(), request_id, str(json_body().get("body", "")))
    db().commit()
    return jsonify(ok=True), 201


@api_bp.post("/access-requests/<int:request_id>/decision")
def decide_request(request_id: int) -> tuple[Response, int]:
    """Record the committee's decision (must match the votes under the project's rule).
    ---
    post:
      summary: Approve or refuse with a reason.
      security: [{bearer: []}]
      parameters: [{name: request_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [outcome, reason]
              properties:
                outcome: {type: string, enum: [approved, refused]}
                reason: {type: string}
      responses:
        201: {description: Decided; a grant is created on approval.}
        403: {description: Not on the committee.}
        404: {description: No such request.}
        409: {description: Votes do not support this outcome, or already decided.}
        422: {description: Invalid outcome or no reason.}
    """
    require_user()
    body = json_body()
    decision = access.decide(
        db(), actor(), request_id, str(body.get("outcome", "")), str(body.get("reason", ""))
    )
    grant = db().query(Grant).filter(Grant.request_id == request_id).one_or_none()
    out = {"outcome": decision.outcome, "grant": grant.id if grant else None}
    db().commit()
    return jsonify(out), 201


@api_bp.get("/grants")
def list_grants() -> Response:
    """The caller's grants.
    ---
    get:
      summary: My grants with their state.
      security: [{bearer: []}]
      responses:
        200: {description: Grants.}
        401: {description: No token.}
    """
    require_user()
    return jsonify(grants=[grant_json(g) for g in access.my_grants(db(), actor())])


@api_bp.post("/grants/<int:grant_id>/accept")
def accept_grant(grant_id: int) -> Response:
    """Accept the data-use agreement of a grant (activates it).
    ---
    post:
      summary: Accept the conditions.
      security: [{bearer: []}]
      parameters: [{name: grant_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema: {type: object, required: [accept], properties: {accept: {type: boolean}}}
      responses:
        200: {description: Active.}
        403: {description: Not the holder.}
        404: {description: No such grant.}
        409: {description: Not awaiting agreement.}
        422: {description: accept must be true.}
    """
    require_user()
    if json_body().get("accept") is not True:
        raise ValidationError('send {"accept": true} to accept the data-use agreement')
    grant = access.accept_conditions(db(), actor(), grant_id)
    out = grant_json(grant)
    db().commit()
    return jsonify(grant=out)


@api_bp.post("/grants/<int:grant_id>/revoke")
def revoke_grant(grant_id: int) -> Response:
    """Revoke a grant (owners, committee, admins); immediate.
    ---
    post:
      summary: Revoke.
      security: [{bearer: []}]
      parameters: [{name: grant_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema: {type: object, required: [reason], properties: {reason: {type: string}}}
      responses:
        200: {description: Revoked.}
        403: {description: Not allowed.}
        404: {description: No such grant.}
        409: {description: Already revoked.}
    """
    require_user()
    grant = access.revoke_grant(db(), actor(), grant_id, str(json_body().get("reason", "")))
    out = grant_json(grant)
    db().commit()
    return jsonify(grant=out)


@api_bp.post("/grants/<int:grant_id>/download-links")
def create_download_link(grant_id: int) -> tuple[Response, int]:
    """A short-lived, single-use download link bound to the caller.
    ---
    post:
      summary: Create a download link (valid 5 minutes).
      security: [{bearer: []}]
      parameters: [{name: grant_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              properties:
                layout: {type: string, enum: [bagit, zip]}
                subject: {type: string, description: one participant's pseudonym}
      responses:
        201: {description: The link.}
        403: {description: Grant not active or not yours.}
        404: {description: No such grant or subject.}
    """
    require_user()
    body = request.get_json(silent=True) or {}
    link, token = downloads.create_link(
        db(),
        actor(),
        grant_id,
        layout=str(body.get("layout", "bagit")),
        subject_pseudonym=body.get("subject") or None,
    )
    expires = link.expires_at.isoformat()
    db().commit()
    return jsonify(url=url_for("api.download_package", token=token), expires_at=expires), 201


@api_bp.get("/downloads/<token>")
def download_package(token: str) -> Response:
    """Stream the package of a download link (same user's token only).
    ---
    get:
      summary: Download a zip / BagIt package.
      security: [{bearer: []}]
      parameters: [{name: token, in: path, required: true, schema: {type: string}}]
      responses:
        200: {description: The zip stream.}
        401: {description: No token.}
        403: {description: Link expired or used, or grant no longer active.}
        404: {description: No such link for you.}
    """
    require_user()
    plan = downloads.open_package(db(), actor(), token)
    db().commit()
    store, database = ext().store, ext().db

    def done(sent: int, complete: bool) -> None:
        downloads.finish(database.transaction, plan.download_id, sent, complete)

    body = stream_with_context(downloads.stream_package(plan, store, done))
    return attachment_response(body, filename=f"{plan.name}.zip", mimetype="application/zip")
