"""Projects (cohorts) and their members."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.errors import Conflict, NotFound, ValidationError
from repository.models import Membership, Project, Role, Site, User
from repository.security import policy
from repository.services import audit
from repository.services.context import Actor

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}[a-z0-9]$")


def create_project(
    session: Session,
    actor: Actor,
    *,
    slug: str,
    title: str,
    description: str = "",
    is_public: bool = True,
    wrap_secret: Callable[[bytes], bytes] | None = None,
) -> Project:
    """Create a cohort. ``wrap_secret`` (bytes → bytes) wraps the new pseudonym secret."""
    if not actor.system:
        policy.require(session, actor, "project.create")
    slug = slug.strip().lower()
    if not SLUG_RE.match(slug):
        raise ValidationError("the short name must be 3–64 characters: a–z, 0–9 and '-'")
    if not title.strip():
        raise ValidationError("a title is required")
    if session.scalar(select(Project.id).where(Project.slug == slug)) is not None:
        raise Conflict(f"a project named {slug!r} already exists")
    secret = secrets.token_bytes(32)
    wrapped = wrap_secret(secret) if wrap_secret is not None else None
    project = Project(
        slug=slug,
        title=title.strip(),
        description=description.strip(),
        is_public=is_public,
        created_by_id=actor.user_id,
        pseudonym_secret_wrapped=wrapped,
    )
    session.add(project)
    session.flush()
    audit.record(
        session,
        actor,
        "project.create",
        object_type="project",
        object_id=project.id,
        project_id=project.id,
        details={"slug": slug, "title": project.title},
    )
    return project


def get_project(session: Session, actor: Actor, slug: str, action: str) -> Project:
    """The project named ``slug`` if ``actor`` may perform ``action`` on it (else 404/403)."""
    project = session.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound("no such project")
    policy.require(session, actor, action, project)
    return project


def list_projects(session: Session, actor: Actor) -> list[Project]:
    stmt = select(Project).where(policy.project_filter(actor, "project.view_metadata"))
    return list(session.scalars(stmt.order_by(Project.title)))


def add_site(session: Session, actor: Actor, project: Project, *, code: str, name: str) -> Site:
    if not actor.system:
        policy.require(session, actor, "project.edit", project)
    code = code.strip().upper()
    if not re.fullmatch(r"[A-Z0-9-]{2,32}", code):
        raise ValidationError("site code: 2–32 characters A–Z, 0–9, '-'")
    if session.scalar(select(Site.id).where(Site.project_id == project.id, Site.code == code)):
        raise Conflict(f"site {code} already exists in this project")
    site = Site(project_id=project.id, code=code, name=name.strip() or code)
    session.add(site)
    session.flush()
    audit.record(
        session,
        actor,
        "project.site.add",
        object_type="site",
        object_id=site.id,
        project_id=project.id,
        details={"code": code},
    )
    return site


def add_member(
    session: Session,
    actor: Actor,
    project: Project,
    *,
    email: str,
    role: Role | str,
    site_code: str | None = None,
) -> Membership:
    if not actor.system:
        policy.require(session, actor, "project.manage_members", project)
    try:
        role = Role(role)
    except ValueError:
        raise ValidationError(
            f"unknown role {role!r}; one of {', '.join(r.value for r in Role)}"
        ) from None
    user = session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no account for {email}")
    site_id = None
    if site_code:
        site_id = session.scalar(
            select(Site.id).where(Site.project_id == project.id, Site.code == site_code.upper())
        )
        if site_id is None:
            raise NotFound(f"no site {site_code} in this project")
    existing = session.scalar(
        select(Membership).where(
            Membership.user_id == user.id,
            Membership.project_id == project.id,
            Membership.role == role,
        )
    )
    if existing is not None:
        raise Conflict(f"{user.email} is already {role.value} of {project.slug}")
    membership = Membership(user_id=user.id, project_id=project.id, role=role, site_id=site_id)
    session.add(membership)
    session.flush()
    audit.record(
        session,
        actor,
        "project.member.add",
        object_type="membership",
        object_id=membership.id,
        project_id=project.id,
        details={"user": user.email, "role": role.value, "site": site_code},
    )
    return membership


def remove_member(session: Session, actor: Actor, project: Project, membership_id: int) -> None:
    policy.require(session, actor, "project.manage_members", project)
    membership = session.get(Membership, membership_id)
    if membership is None or membership.project_id != project.id:
        raise NotFound("no such membership")
    details = {"user": membership.user.email, "role": membership.role.value}
    session.delete(membership)
    audit.record(
        session,
        actor,
        "project.member.remove",
        object_type="membership",
        object_id=membership_id,
        project_id=project.id,
        details=details,
    )


def memberships_of(session: Session, user: User) -> list[Membership]:
    return list(
        session.scalars(
            select(Membership).where(Membership.user_id == user.id).order_by(Membership.project_id)
        )
    )
