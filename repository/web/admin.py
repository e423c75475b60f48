"""Administration: accounts, projects, memberships, audit log."""

from __future__ import annotations

from flask import Blueprint, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from repository.errors import MyoVaultError
from repository.models import Role
from repository.request_context import actor, db, ext
from repository.security import policy
from repository.services import accounts, audit, projects
from repository.web.guards import login_required

bp = Blueprint("admin", __name__, url_prefix="/admin")


def _form_flag(name: str) -> bool:
    return request.form.get(name) in {"on", "true", "1", "yes"}


@bp.get("/users")
@login_required
def users() -> str:
    return render_template("admin/users.html", users=accounts.list_users(db(), actor()))


@bp.post("/users")
@login_required
def create_user() -> Response | tuple[str, int]:
    try:
        user = accounts.create_user(
            db(),
            actor(),
            email=request.form.get("email", ""),
            name=request.form.get("name", ""),
            password=request.form.get("password", ""),
            is_admin=_form_flag("is_admin"),
            institution=request.form.get("institution", ""),
        )
    except MyoVaultError as exc:
        db().rollback()
        flash(exc.message, "error")
        return render_template(
            "admin/users.html", users=accounts.list_users(db(), actor()), form=request.form
        ), exc.status
    db().commit()
    flash(f"Account {user.email} created.", "success")
    return redirect(url_for("admin.users"))


@bp.post("/users/<int:user_id>")
@login_required
def update_user(user_id: int) -> Response:
    action = request.form.get("action", "")
    changes = {
        "activate": {"is_active": True},
        "deactivate": {"is_active": False},
        "make_admin": {"is_admin": True},
        "remove_admin": {"is_admin": False},
    }
    if action not in changes:
        flash("Unknown action.", "error")
        return redirect(url_for("admin.users"))
    try:
        accounts.set_user_flags(db(), actor(), user_id, **changes[action])
        db().commit()
        flash("Account updated.", "success")
    except MyoVaultError as exc:
        db().rollback()
        flash(exc.message, "error")
    return redirect(url_for("admin.users"))


@bp.get("/projects")
@login_required
def project_list() -> str:
    policy.require(db(), actor(), "project.create")
    return render_template("admin/projects.html", projects=projects.list_projects(db(), actor()))


@bp.post("/projects")
@login_required
def create_project() -> Response:
    try:
        project = projects.create_project(
            db(),
            actor(),
            slug=request.form.get("slug", ""),
            title=request.form.get("title", ""),
            description=request.form.get("description", ""),
            is_public=_form_flag("is_public"),
            wrap_secret=ext().wrap_project_secret,
        )
        db().commit()
    except MyoVaultError as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("admin.project_list"))
    flash(f"Project {project.slug} created. Add its members below.", "success")
    return redirect(url_for("pages.project", slug=project.slug))


@bp.post("/projects/<slug>/members")
@login_required
def add_member(slug: str) -> Response:
    session, current = db(), actor()
    project = projects.get_project(session, current, slug, "project.manage_members")
    try:
        projects.add_member(
            session,
            current,
            project,
            email=request.form.get("email", ""),
            role=request.form.get("role", ""),
            site_code=request.form.get("site") or None,
        )
        session.commit()
        flash("Member added.", "success")
    except MyoVaultError as exc:
        session.rollback()
        flash(exc.message, "error")
    return redirect(url_for("pages.project", slug=slug))


@bp.post("/projects/<slug>/members/<int:membership_id>/remove")
@login_required
def remove_member(slug: str, membership_id: int) -> Response:
    session, current = db(), actor()
    project = projects.get_project(session, current, slug, "project.manage_members")
    projects.remove_member(session, current, project, membership_id)
    session.commit()
    flash("Member removed.", "success")
    return redirect(url_for("pages.project", slug=slug))


@bp.post("/projects/<slug>/sites")
@login_required
def add_site(slug: str) -> Response:
    session, current = db(), actor()
    project = projects.get_project(session, current, slug, "project.edit")
    try:
        projects.add_site(
            session,
            current,
            project,
            code=request.form.get("code", ""),
            name=request.form.get("name", ""),
        )
        session.commit()
        flash("Site added.", "success")
    except MyoVaultError as exc:
        session.rollback()
        flash(exc.message, "error")
    return redirect(url_for("pages.project", slug=slug))


@bp.get("/audit")
@login_required
def audit_log() -> str:
    session = db()
    policy.require(session, actor(), "admin.view_audit")
    report = audit.verify_chain(session) if request.args.get("verify") else None
    return render_template(
        "admin/audit.html", events=audit.recent(session, limit=200), report=report, Role=Role
    )
