"""Home, dashboards, projects and jobs."""

from __future__ import annotations

from collections import defaultdict

from flask import Blueprint, render_template
from sqlalchemy import func, select

from repository.models import (
    AccessRequest,
    Job,
    JobStatus,
    Membership,
    Project,
    Role,
    Subject,
    User,
)
from repository.request_context import actor, db
from repository.security import policy
from repository.services import jobs, projects
from repository.web.guards import login_required

bp = Blueprint("pages", __name__)


@bp.get("/")
def home() -> str:
    return render_template("home.html", projects=projects.list_projects(db(), actor()))


@bp.get("/dashboard")
@login_required
def dashboard() -> str:
    session, current = db(), actor()
    user = current.user
    assert user is not None  # noqa: S101  (login_required)
    by_role: dict[Role, list[Project]] = defaultdict(list)
    for membership in projects.memberships_of(session, user):
        by_role[membership.role].append(membership.project)
    pending = {}
    if by_role[Role.DAC_MEMBER]:
        ids = [p.id for p in by_role[Role.DAC_MEMBER]]
        pending = dict(
            session.execute(
                select(AccessRequest.project_id, func.count(AccessRequest.id))
                .where(AccessRequest.project_id.in_(ids), AccessRequest.status == "pending")
                .group_by(AccessRequest.project_id)
            ).all()
        )
    subject_counts = {}
    owned = {p.id for r in (Role.OWNER, Role.INVESTIGATOR) for p in by_role[r]}
    if owned:
        subject_counts = dict(
            session.execute(
                select(Subject.project_id, func.count(Subject.id))
                .where(Subject.project_id.in_(owned), Subject.erased_at.is_(None))
                .group_by(Subject.project_id)
            ).all()
        )
    admin_stats = None
    if policy.can(session, current, "admin.manage_users"):
        admin_stats = {
            "users": session.scalar(select(func.count(User.id))),
            "projects": session.scalar(select(func.count(Project.id))),
            "memberships": session.scalar(select(func.count(Membership.id))),
            "failed_jobs": session.scalar(
                select(func.count(Job.id)).where(Job.status == JobStatus.FAILED)
            ),
        }
    return render_template(
        "dashboard.html",
        by_role=by_role,
        Role=Role,
        pending=pending,
        subject_counts=subject_counts,
        admin_stats=admin_stats,
        recent_jobs=jobs.list_jobs(session, current, limit=10),
        visible_projects=projects.list_projects(session, current),
    )


@bp.get("/projects/<slug>")
def project(slug: str) -> str:
    session, current = db(), actor()
    proj = projects.get_project(session, current, slug, "project.view_metadata")
    members = None
    if policy.can(session, current, "project.manage_members", proj):
        members = proj.memberships
    return render_template("project.html", project=proj, members=members, Role=Role)


@bp.get("/jobs")
@login_required
def job_list() -> str:
    return render_template("jobs.html", jobs=jobs.list_jobs(db(), actor(), limit=200))


@bp.get("/jobs/<int:job_id>")
@login_required
def job_detail(job_id: int) -> str:
    return render_template("job.html", job=jobs.get_job(db(), actor(), job_id))
