"""Who may do what: one policy table, denied by default.

Every action maps to the set of *needs* that allow it; a user may act if they satisfy any need.
The same table yields the single-object check (:func:`can` / :func:`require`) and the filter
applied to listings and searches (:func:`project_filter`), so restricted projects never leak
through counts or listings.

Admins run the service (accounts, projects, memberships, audit, jobs); they do not see
individual-level data unless they also hold a project role or a grant.
"""

from __future__ import annotations

import enum
from typing import Any

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import Session

from repository.errors import AuthenticationRequired, Forbidden, NotFound
from repository.models import Grant, Membership, Project, Role
from repository.models._types import utcnow
from repository.services.context import Actor


class Need(enum.StrEnum):
    ANYONE = "anyone"
    PUBLIC_PROJECT = "public_project"  # the project's metadata is public
    AUTHENTICATED = "authenticated"  # any active, verified account (a researcher)
    ADMIN = "admin"
    OWNER = Role.OWNER.value
    INVESTIGATOR = Role.INVESTIGATOR.value
    DAC_MEMBER = Role.DAC_MEMBER.value
    GRANTEE = "grantee"  # holds an active grant on the project


N = Need
MEMBERS = frozenset({N.OWNER, N.INVESTIGATOR, N.DAC_MEMBER})

POLICY: dict[str, frozenset[Need]] = {
    # global
    "portal.dashboard": frozenset({N.AUTHENTICATED}),
    "token.manage_own": frozenset({N.AUTHENTICATED}),
    "admin.manage_users": frozenset({N.ADMIN}),
    "admin.view_audit": frozenset({N.ADMIN}),
    "admin.view_jobs": frozenset({N.ADMIN}),
    "project.create": frozenset({N.ADMIN}),
    # per project
    "project.view_metadata": frozenset({N.PUBLIC_PROJECT, N.ADMIN, N.GRANTEE} | MEMBERS),
    "project.edit": frozenset({N.OWNER, N.ADMIN}),
    "project.manage_members": frozenset({N.OWNER, N.ADMIN}),
    "project.upload": frozenset({N.INVESTIGATOR, N.OWNER}),
    "project.view_data": frozenset({N.OWNER, N.INVESTIGATOR, N.GRANTEE}),
    "project.edit_labels": frozenset({N.OWNER, N.INVESTIGATOR}),
    "project.view_jobs": frozenset({N.OWNER, N.INVESTIGATOR, N.ADMIN}),
    "project.review_requests": frozenset({N.DAC_MEMBER}),
    "project.view_audit": frozenset({N.OWNER, N.ADMIN}),
    # consent, access requests, DAC, grants, downloads, erasure (issue 7)
    "project.manage_consent": frozenset({N.INVESTIGATOR, N.OWNER}),
    "project.erase_subject": frozenset({N.OWNER}),
    "project.request_access": frozenset({N.AUTHENTICATED}),
    "project.decide_requests": frozenset({N.DAC_MEMBER}),
    # the ethics approval of an access request (its requester may always see it)
    "project.view_ethics_approval": frozenset({N.DAC_MEMBER, N.OWNER}),
    "project.manage_dac": frozenset({N.OWNER}),
    "project.manage_grants": frozenset({N.OWNER, N.DAC_MEMBER, N.ADMIN}),
    "project.view_processing_record": frozenset({N.OWNER, N.ADMIN}),
    "project.download": frozenset({N.GRANTEE}),
    # cohort search, saved queries and snapshots (issue 8); snapshot landing pages follow
    # project.view_metadata, snapshot manifests project.view_data
    "search.save_query": frozenset({N.AUTHENTICATED}),
    "snapshot.create": frozenset({N.AUTHENTICATED}),
}

PROJECT_ACTIONS = frozenset(a for a in POLICY if a.startswith("project.") and a != "project.create")


def _needs(action: str) -> frozenset[Need]:
    try:
        return POLICY[action]
    except KeyError:
        raise KeyError(f"unknown action {action!r}: add it to POLICY (denied by default)") from None


def _authenticated(actor: Actor) -> bool:
    user = actor.user
    return user is not None and user.is_active and user.is_verified


def satisfied_needs(session: Session, actor: Actor, project: Project | None) -> set[Need]:
    """The needs ``actor`` meets, globally and (if given) on ``project``."""
    needs = {N.ANYONE}
    if project is not None and project.is_public:
        needs.add(N.PUBLIC_PROJECT)
    user = actor.user
    if user is None or not user.is_active:
        return needs
    if user.is_verified:
        needs.add(N.AUTHENTICATED)
    if user.is_admin:
        needs.add(N.ADMIN)
    if project is not None:
        roles = session.scalars(
            select(Membership.role).where(
                Membership.user_id == user.id, Membership.project_id == project.id
            )
        ).all()
        needs.update(Need(r.value) for r in roles)
        if _has_active_grant(session, user.id, project.id):
            needs.add(N.GRANTEE)
    return needs


def _has_active_grant(session: Session, user_id: int, project_id: int) -> bool:
    stmt = (
        select(Grant.id)
        .where(*_active_grant_clauses(user_id))
        .where(Grant.project_id == project_id)
    )
    return session.execute(stmt.limit(1)).first() is not None


def _active_grant_clauses(user_id: int) -> list[ColumnElement[bool]]:
    return [
        Grant.user_id == user_id,
        Grant.revoked_at.is_(None),
        Grant.expires_at > utcnow(),
        Grant.conditions_accepted_at.is_not(None),
    ]


def can(session: Session, actor: Actor, action: str, project: Project | None = None) -> bool:
    needs = _needs(action)
    if action in PROJECT_ACTIONS and project is None:
        raise ValueError(f"{action} is a per-project action: pass the project")
    return bool(needs & satisfied_needs(session, actor, project))


def require(session: Session, actor: Actor, action: str, project: Project | None = None) -> None:
    """Raise unless allowed. Projects the actor may not even see answer 404, not 403."""
    if can(session, actor, action, project):
        return
    if project is not None and not can(session, actor, "project.view_metadata", project):
        raise NotFound("no such project")
    if actor.user is None:
        raise AuthenticationRequired("please log in")
    raise Forbidden(f"you may not {action.split('.', 1)[1].replace('_', ' ')} here")


def project_filter(actor: Actor, action: str) -> ColumnElement[bool]:
    """A WHERE clause on :class:`Project` selecting exactly the projects ``can`` would allow."""
    needs = _needs(action)
    user = actor.user
    clauses: list[Any] = []
    if N.ANYONE in needs:
        return true()
    if N.PUBLIC_PROJECT in needs:
        clauses.append(Project.is_public.is_(True))
    if user is not None and user.is_active:
        if N.ADMIN in needs and user.is_admin:
            return true()
        if N.AUTHENTICATED in needs and user.is_verified:
            return true()
        roles = [Role(n.value) for n in needs if n.value in {r.value for r in Role}]
        if roles:
            clauses.append(
                Project.id.in_(
                    select(Membership.project_id).where(
                        Membership.user_id == user.id, Membership.role.in_(roles)
                    )
                )
            )
        if N.GRANTEE in needs:
            clauses.append(
                Project.id.in_(select(Grant.project_id).where(*_active_grant_clauses(user.id)))
            )
    return or_(*clauses) if clauses else false()
