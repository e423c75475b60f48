"""The API's routes. Thin: parse, call one service, serialise."""

from __future__ import annotations

from flask import current_app, jsonify
from werkzeug.wrappers import Response

from repository.api import api_bp
from repository.api.openapi import build_openapi
from repository.api.requests import json_body, require_user
from repository.api.serialize import job_json, membership_json, project_json, token_json, user_json
from repository.request_context import actor, db, ext
from repository.security import policy
from repository.services import accounts, audit, jobs, projects


@api_bp.get("/health")
def health() -> tuple[Response, int]:
    """Service health.
    ---
    get:
      summary: Database, storage and broker status (no authentication).
      responses:
        200: {description: All dependencies reachable.}
        503: {description: At least one dependency is down; see checks.}
    """
    report = ext().health()
    return jsonify(report), 200 if report["status"] == "ok" else 503


@api_bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document of this API.
    ---
    get:
      summary: OpenAPI 3 description generated from the registered routes.
      responses:
        200: {description: The OpenAPI document.}
    """
    return jsonify(build_openapi(current_app))


@api_bp.get("/me")
def me() -> Response:
    """The token's user and their project roles.
    ---
    get:
      summary: Who am I.
      security: [{bearer: []}]
      responses:
        200: {description: The user.}
        401: {description: No or invalid token.}
    """
    require_user()
    user = actor().user
    assert user is not None  # noqa: S101
    return jsonify(
        user=user_json(user),
        memberships=[membership_json(m) for m in projects.memberships_of(db(), user)],
    )


@api_bp.get("/projects")
def list_projects() -> Response:
    """Projects visible to the caller (public ones for anonymous callers).
    ---
    get:
      summary: List projects.
      responses:
        200: {description: Projects.}
    """
    return jsonify(projects=[project_json(p) for p in projects.list_projects(db(), actor())])


@api_bp.post("/projects")
def create_project() -> tuple[Response, int]:
    """Create a project (admins).
    ---
    post:
      summary: Create a project.
      security: [{bearer: []}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [slug, title]
              properties:
                slug: {type: string}
                title: {type: string}
                description: {type: string}
                is_public: {type: boolean}
      responses:
        201: {description: Created.}
        401: {description: No token.}
        403: {description: Not an admin.}
        409: {description: Slug taken.}
        422: {description: Invalid fields.}
    """
    require_user()
    body = json_body()
    project = projects.create_project(
        db(),
        actor(),
        slug=str(body.get("slug", "")),
        title=str(body.get("title", "")),
        description=str(body.get("description", "")),
        is_public=bool(body.get("is_public", True)),
        wrap_secret=ext().wrap_project_secret,
    )
    db().commit()
    return jsonify(project=project_json(project)), 201


@api_bp.get("/projects/<slug>")
def get_project(slug: str) -> Response:
    """One project's metadata.
    ---
    get:
      summary: Project metadata.
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      responses:
        200: {description: The project.}
        404: {description: No such project (or not visible to you).}
    """
    project = projects.get_project(db(), actor(), slug, "project.view_metadata")
    return jsonify(project=project_json(project))


@api_bp.get("/projects/<slug>/members")
def list_members(slug: str) -> Response:
    """Members of a project (owners and admins).
    ---
    get:
      summary: List members.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      responses:
        200: {description: Memberships.}
        403: {description: Not allowed.}
        404: {description: No such project.}
    """
    project = projects.get_project(db(), actor(), slug, "project.manage_members")
    return jsonify(members=[membership_json(m) for m in project.memberships])


@api_bp.post("/projects/<slug>/members")
def add_member(slug: str) -> tuple[Response, int]:
    """Give a user a role in a project (owners and admins).
    ---
    post:
      summary: Add a member.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [email, role]
              properties:
                email: {type: string}
                role: {type: string, enum: [owner, investigator, dac_member]}
                site: {type: string}
      responses:
        201: {description: Added.}
        403: {description: Not allowed.}
        404: {description: No such project or user.}
        409: {description: Already a member in that role.}
        422: {description: Unknown role.}
    """
    require_user()
    body = json_body()
    project = projects.get_project(db(), actor(), slug, "project.manage_members")
    membership = projects.add_member(
        db(),
        actor(),
        project,
        email=str(body.get("email", "")),
        role=str(body.get("role", "")),
        site_code=body.get("site"),
    )
    db().commit()
    return jsonify(membership=membership_json(membership)), 201


@api_bp.get("/jobs")
def list_jobs() -> Response:
    """Jobs the caller may see.
    ---
    get:
      summary: List jobs with state and progress.
      security: [{bearer: []}]
      responses:
        200: {description: Jobs.}
        401: {description: No token.}
    """
    require_user()
    return jsonify(jobs=[job_json(j) for j in jobs.list_jobs(db(), actor())])


@api_bp.get("/jobs/<int:job_id>")
def get_job(job_id: int) -> Response:
    """One job.
    ---
    get:
      summary: Job state and progress.
      security: [{bearer: []}]
      parameters: [{name: job_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200: {description: The job.}
        404: {description: No such job (or not visible to you).}
    """
    require_user()
    return jsonify(job=job_json(jobs.get_job(db(), actor(), job_id)))


@api_bp.get("/tokens")
def list_tokens() -> Response:
    """The caller's API tokens (never the secret).
    ---
    get:
      summary: List my tokens.
      security: [{bearer: []}]
      responses:
        200: {description: Tokens.}
    """
    require_user()
    return jsonify(tokens=[token_json(t) for t in accounts.list_tokens(db(), actor())])


@api_bp.delete("/tokens/<int:token_id>")
def revoke_token(token_id: int) -> tuple[str, int]:
    """Revoke one of the caller's tokens.
    ---
    delete:
      summary: Revoke a token.
      security: [{bearer: []}]
      parameters: [{name: token_id, in: path, required: true, schema: {type: integer}}]
      responses:
        204: {description: Revoked.}
        404: {description: No such token.}
    """
    require_user()
    accounts.revoke_token(db(), actor(), token_id)
    db().commit()
    return "", 204


@api_bp.get("/audit/verify")
def verify_audit() -> Response:
    """Verify the audit log's hash chain (admins).
    ---
    get:
      summary: Verify the audit chain.
      security: [{bearer: []}]
      responses:
        200: {description: Verification report.}
        403: {description: Not an admin.}
    """
    require_user()
    policy.require(db(), actor(), "admin.view_audit")
    report = audit.verify_chain(db())
    return jsonify(
        ok=report.ok,
        events=report.events,
        head_hash=report.head_hash,
        problems=[{"seq": p.seq, "problem": p.problem} for p in report.problems],
    )
