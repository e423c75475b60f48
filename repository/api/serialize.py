"""Model → JSON shapes of the API (only what the caller may see)."""

from __future__ import annotations

from typing import Any

from repository.models import ApiToken, Job, Membership, Project, User


def user_json(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "email": user.email,
        "name": user.name,
        "is_admin": user.is_admin,
        "institution": user.institution,
    }


def project_json(project: Project) -> dict[str, Any]:
    return {
        "slug": project.slug,
        "title": project.title,
        "description": project.description,
        "licence": project.licence,
        "is_public": project.is_public,
        "created_at": project.created_at.isoformat(),
    }


def membership_json(m: Membership) -> dict[str, Any]:
    return {
        "id": m.id,
        "project": m.project.slug,
        "user": m.user.email,
        "role": m.role.value,
        "site": m.site.code if m.site else None,
    }


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "kind": job.kind,
        "status": job.status.value,
        "progress": job.progress,
        "message": job.message,
        "error": job.error,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }


def token_json(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat(),
        "revoked": token.revoked_at is not None,
    }
