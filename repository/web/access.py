"""Access requests, the committee's work, grants and audited downloads in the portal."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, redirect, render_template, request, stream_with_context, url_for
from werkzeug.wrappers import Response

from consent.duo import MODIFIERS, OBLIGATIONS, PURPOSES, TERMS
from repository.attachments import attachment_response
from repository.errors import Conflict, Forbidden, ValidationError
from repository.models import Grant, Project, User
from repository.request_context import actor, db, ext
from repository.security import policy
from repository.services import access, downloads, notify, projects
from repository.services.access import DATA_KINDS, RULES
from repository.web.guards import login_required

bp = Blueprint("access", __name__)
MAX_ETHICS_BYTES = 20 * 1024 * 1024
EXPECTED_ERRORS = (ValidationError, Conflict, Forbidden)


def _use_from_form() -> dict[str, Any]:
    form = request.form
    return {
        "purpose": form.get("use_purpose", ""),
        "disease": form.get("disease", ""),
        "commercial": form.get("commercial") == "on",
        "for_profit": form.get("for_profit") == "on",
        "methods_development": form.get("methods_development") == "on",
        "genetic_study": form.get("genetic_study") == "on",
        "country": form.get("country", ""),
        "project": form.get("research_project", ""),
        "until": form.get("until") or None,
        "accepts": form.getlist("accepts"),
    }


def _form_context(project: Project) -> dict[str, Any]:
    return {
        "project": project,
        "purposes": [(p, TERMS[p].label) for p in PURPOSES],
        "obligations": [(o, TERMS[o].label) for o in sorted(OBLIGATIONS)],
        "data_kinds": DATA_KINDS,
        "modifiers": MODIFIERS,
    }


@bp.get("/projects/<slug>/request-access")
@login_required
def request_form(slug: str) -> str:
    project = access.requestable_project(db(), actor(), slug)
    snapshot = request.args.get("snapshot", "")
    form = {"snapshot_id": snapshot} if snapshot.isdigit() else {}
    return render_template(
        "consent/request_form.html", form=form, preview=None, **_form_context(project)
    )


@bp.post("/projects/<slug>/request-access")
@login_required
def submit_request(slug: str) -> Response | tuple[str, int]:
    project = access.requestable_project(db(), actor(), slug)
    form = request.form
    snapshot_raw = form.get("snapshot_id", "").strip()
    snapshot_id = int(snapshot_raw) if snapshot_raw.isdigit() else None
    try:
        if form.get("action") == "preview":
            result = access.preview(
                db(),
                actor(),
                project,
                use=_use_from_form(),
                institution=form.get("institution", ""),
                snapshot_id=snapshot_id,
            )
            return render_template(
                "consent/request_form.html",
                form=form,
                preview=result.public(),
                **_form_context(project),
            ), 200
        upload = request.files.get("ethics")
        ethics = (
            upload.read(MAX_ETHICS_BYTES + 1) if upload is not None and upload.filename else None
        )
        if ethics is not None and len(ethics) > MAX_ETHICS_BYTES:
            raise ValidationError("the ethics approval must be at most 20 MiB")
        duration = form.get("duration_days", "365")
        req = access.create_request(
            db(),
            actor(),
            project,
            purpose=form.get("purpose", ""),
            use=_use_from_form(),
            institution=form.get("institution", ""),
            data_kinds=form.getlist("data"),
            duration_days=int(duration) if duration.isdigit() else 0,
            snapshot_id=snapshot_id,
            ethics_document=ethics or None,
            store=ext().store,
        )
    except EXPECTED_ERRORS as exc:
        db().rollback()
        flash(exc.message, "error")
        return render_template(
            "consent/request_form.html", form=form, preview=None, **_form_context(project)
        ), exc.status
    request_id = req.id
    db().commit()
    flash(f"Request #{request_id} sent to the data-access committee.", "success")
    return redirect(url_for("access.request_detail", request_id=request_id))


@bp.get("/requests")
@login_required
def requests_home() -> str:
    session, current = db(), actor()
    return render_template(
        "consent/requests.html",
        mine=access.my_requests(session, current),
        grants=access.my_grants(session, current),
        queue=access.review_queue(session, current),
        notifications=notify.inbox(session, current.user, limit=20) if current.user else [],
        projects=projects.list_projects(session, current),
        grant_state=access.grant_state,
        dac_projects=[
            p
            for p in projects.list_projects(session, current)
            if policy.can(session, current, "project.review_requests", p)
            or policy.can(session, current, "project.manage_dac", p)
        ],
        project_by_id={p.id: p for p in session.query(Project).all()},
    )


@bp.get("/requests/<int:request_id>")
@login_required
def request_detail(request_id: int) -> str:
    session, current = db(), actor()
    req = access.get_request(session, current, request_id)
    project = session.get(Project, req.project_id)
    reviewer = policy.can(session, current, "project.review_requests", project)  # type: ignore[arg-type]
    is_requester = current.user is not None and current.user.id == req.requester_id
    grant = session.query(Grant).filter(Grant.request_id == req.id).one_or_none()
    return render_template(
        "consent/request_detail.html",
        req=req,
        project=project,
        requester=session.get(User, req.requester_id),
        reviewer=reviewer and not is_requester,
        may_decide=policy.can(session, current, "project.decide_requests", project)
        and not is_requester,  # type: ignore[arg-type]
        is_requester=is_requester,
        tally=access.tally(session, req) if reviewer and not is_requester else None,
        votes=access.votes(session, current, req),
        comments=access.comments(session, current, req),
        users={u.id: u for u in session.query(User).all()} if reviewer else {},
        decision=access.decision_of(session, req),
        grant=grant,
        grant_state=access.grant_state,
        exclusions=req.exclusions,
        suppress=access.suppress if is_requester else (lambda n: n),
        may_view_ethics=is_requester
        or policy.can(session, current, "project.view_ethics_approval", project),  # type: ignore[arg-type]
    )


@bp.get("/requests/<int:request_id>/ethics-approval")
@login_required
def ethics_page(request_id: int) -> str:
    """The ethics approval's details and download link (requester, committee, owners)."""
    session = db()
    doc = access.ethics_document(session, actor(), request_id)
    req = access.get_request(session, actor(), request_id)
    return render_template(
        "consent/ethics.html", doc=doc, req=req, project=session.get(Project, req.project_id)
    )


@bp.get("/requests/<int:request_id>/ethics-approval/file")
@login_required
def ethics_file(request_id: int) -> Response:
    doc, data = access.read_ethics_document(db(), actor(), request_id, ext().store)
    db().commit()  # the download is audited
    return attachment_response(data, filename=doc.filename, mimetype=doc.content_type)


def _post(request_id: int, fn: Any, success: str) -> Response:
    try:
        fn()
    except EXPECTED_ERRORS as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("access.request_detail", request_id=request_id))
    db().commit()
    flash(success, "success")
    return redirect(url_for("access.request_detail", request_id=request_id))


@bp.post("/requests/<int:request_id>/comment")
@login_required
def comment(request_id: int) -> Response:
    return _post(
        request_id,
        lambda: access.add_comment(db(), actor(), request_id, request.form.get("body", "")),
        "Comment added.",
    )


@bp.post("/requests/<int:request_id>/vote")
@login_required
def vote(request_id: int) -> Response:
    return _post(
        request_id,
        lambda: access.cast_vote(
            db(), actor(), request_id, request.form.get("vote", ""), request.form.get("reason", "")
        ),
        "Vote recorded.",
    )


@bp.post("/requests/<int:request_id>/decide")
@login_required
def decide(request_id: int) -> Response:
    return _post(
        request_id,
        lambda: access.decide(
            db(),
            actor(),
            request_id,
            request.form.get("outcome", ""),
            request.form.get("reason", ""),
        ),
        "Decision recorded; the requester has been notified.",
    )


@bp.post("/requests/<int:request_id>/cancel")
@login_required
def cancel(request_id: int) -> Response:
    return _post(
        request_id, lambda: access.cancel_request(db(), actor(), request_id), "Request withdrawn."
    )


@bp.get("/projects/<slug>/dac")
@login_required
def dac(slug: str) -> str:
    session, current = db(), actor()
    project = projects.get_project(session, current, slug, "project.view_metadata")
    requests_ = access.project_requests(session, current, project)
    grants = (
        access.project_grants(session, current, project)
        if policy.can(session, current, "project.manage_grants", project)
        else []
    )
    return render_template(
        "consent/dac.html",
        project=project,
        settings=access.settings_for(session, project),
        requests=requests_,
        grants=grants,
        rules=RULES,
        grant_state=access.grant_state,
        users={u.id: u for u in session.query(User).all()},
    )


@bp.post("/projects/<slug>/dac/settings")
@login_required
def dac_settings(slug: str) -> Response:
    project = projects.get_project(db(), actor(), slug, "project.manage_dac")
    form = request.form

    def number(name: str) -> int:
        value = form.get(name, "")
        return int(value) if value.isdigit() else 0

    try:
        access.update_settings(
            db(),
            actor(),
            project,
            rule=form.get("rule", ""),
            quorum=number("quorum"),
            deadline_days=number("deadline_days"),
            grant_days=number("grant_days"),
            conditions=form.get("conditions", ""),
        )
    except EXPECTED_ERRORS as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("access.dac", slug=slug))
    db().commit()
    flash("Committee settings saved.", "success")
    return redirect(url_for("access.dac", slug=slug))


@bp.get("/grants/<int:grant_id>")
@login_required
def grant_detail(grant_id: int) -> str:
    session, current = db(), actor()
    grant = access.get_grant(session, current, grant_id)
    holder = current.user is not None and grant.user_id == current.user.id
    state = access.grant_state(grant)
    included = downloads.included_subjects(session, grant) if holder and state == "active" else []
    return render_template(
        "consent/grant.html",
        grant=grant,
        project=session.get(Project, grant.project_id),
        holder=holder,
        state=state,
        included=included,
        may_revoke=policy.can(
            session, current, "project.manage_grants", session.get(Project, grant.project_id)
        ),  # type: ignore[arg-type]
    )


def _grant_post(grant_id: int, fn: Any, success: str) -> Response:
    try:
        fn()
    except EXPECTED_ERRORS as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("access.grant_detail", grant_id=grant_id))
    db().commit()
    flash(success, "success")
    return redirect(url_for("access.grant_detail", grant_id=grant_id))


@bp.post("/grants/<int:grant_id>/accept")
@login_required
def accept(grant_id: int) -> Response:
    if request.form.get("agree") != "on":
        flash("Tick the box to accept the data-use agreement.", "error")
        return redirect(url_for("access.grant_detail", grant_id=grant_id))
    return _grant_post(
        grant_id,
        lambda: access.accept_conditions(db(), actor(), grant_id),
        "Agreement accepted; the grant is active.",
    )


@bp.post("/grants/<int:grant_id>/revoke")
@login_required
def revoke(grant_id: int) -> Response:
    return _grant_post(
        grant_id,
        lambda: access.revoke_grant(db(), actor(), grant_id, request.form.get("reason", "")),
        "Grant revoked.",
    )


@bp.post("/grants/<int:grant_id>/download")
@login_required
def create_download(grant_id: int) -> Response:
    try:
        _, token = downloads.create_link(
            db(),
            actor(),
            grant_id,
            layout=request.form.get("layout", "bagit"),
            subject_pseudonym=request.form.get("subject") or None,
        )
    except (ValidationError, Forbidden) as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("access.grant_detail", grant_id=grant_id))
    db().commit()
    return redirect(url_for("access.download", token=token))


@bp.get("/downloads/<token>")
@login_required
def download(token: str) -> Response:
    plan = downloads.open_package(db(), actor(), token)
    db().commit()  # the download is logged before the first byte leaves
    store, database = ext().store, ext().db

    def done(sent: int, complete: bool) -> None:
        downloads.finish(database.transaction, plan.download_id, sent, complete)

    body = stream_with_context(downloads.stream_package(plan, store, done))
    return attachment_response(body, filename=f"{plan.name}.zip", mimetype="application/zip")
