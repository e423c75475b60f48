"""Search, snapshots and dataset metadata in the REST API (same filters as the search page)."""

from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request, url_for
from werkzeug.wrappers import Response

from repository.api import api_bp
from repository.errors import AuthenticationRequired, BadRequest
from repository.models import CohortSnapshot, Project
from repository.request_context import actor, db
from repository.services import metadata, projects, search, snapshots
from repository.services.pids import minter_from_config


def _snapshot_json(s: CohortSnapshot, project: Project) -> dict[str, Any]:
    return {
        "id": s.id,
        "pid": s.pid,
        "pid_kind": s.pid_kind,
        "version": s.version,
        "project": project.slug,
        "title": s.title,
        "query": s.query,
        "manifest_sha256": s.manifest_sha256,
        "created_at": s.created_at.isoformat(),
        "landing_page": url_for("catalog.snapshot_page", snapshot_id=s.id, _external=True),
    }


@api_bp.get("/search")
def search_subjects() -> Response:
    """Faceted cohort search with small-cell suppression.
    ---
    get:
      summary: Search shareable subjects by facets, per-muscle metric ranges and full text.
      description: >
        Repeat a parameter for OR within a facet; facets are AND-ed (sequence and muscle
        require all values). Per-muscle conditions mc=muscle:side:metric:min:max (side L, R
        or any; metric ff_mean, t2w_mean, volume_ml) are combined with combine=and|or.
        Without a grant on every contributing project, counts below 5 are "<5" and the
        others rounded to 5. Unknown parameters are rejected (422).
      parameters:
        - {name: q, in: query, schema: {type: string}}
        - {name: project, in: query, schema: {type: array, items: {type: string}}}
        - {name: disease, in: query, schema: {type: array, items: {type: string}}}
        - {name: sex, in: query, schema: {type: array, items: {type: string, enum: [F, M, O]}}}
        - {name: vendor, in: query, schema: {type: array, items: {type: string}}}
        - {name: field_strength, in: query, schema: {type: array, items: {type: number}}}
        - {name: sequence, in: query, schema: {type: array, items: {type: string}}}
        - {name: anatomy, in: query, schema: {type: array, items: {type: string}}}
        - {name: muscle, in: query, schema: {type: array, items: {type: string}}}
        - {name: age_min, in: query, schema: {type: number}}
        - {name: age_max, in: query, schema: {type: number}}
        - {name: visits_min, in: query, schema: {type: integer}}
        - {name: visits_max, in: query, schema: {type: integer}}
        - {name: mc, in: query, schema: {type: array, items: {type: string}}}
        - {name: combine, in: query, schema: {type: string, enum: [and, or]}}
        - {name: page, in: query, schema: {type: integer, minimum: 1}}
        - {name: per_page, in: query, schema: {type: integer, minimum: 1, maximum: 100}}
        - name: after
          in: query
          description: Keyset cursor; pass the previous response's "next" to get the next page.
          schema: {type: string}
      responses:
        200: {description: Counts, facets, heat map and (with view_data) a page of subjects.}
        422: {description: Invalid or unknown parameter.}
    """
    params = {k: request.args.getlist(k) for k in request.args}
    query = search.parse_query(params)
    page, per_page = search.parse_page(params)
    after = search.parse_cursor(params)
    result = search.search(db(), actor(), query, page=page, per_page=per_page, after=after)
    return jsonify(result.to_json())


@api_bp.post("/snapshots")
def create_snapshot() -> tuple[Response, int]:
    """Freeze a query into a cohort snapshot with a PID.
    ---
    post:
      summary: Freeze a search (same keys as GET /search, JSON values) in one project.
      security: [{bearer: []}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [project, title, query]
              properties:
                project: {type: string}
                title: {type: string}
                description: {type: string}
                query: {type: object}
      responses:
        201: {description: The snapshot.}
        401: {description: No token.}
        404: {description: No such project.}
        422: {description: Invalid query or nothing matches.}
        503: {description: The DOI registration agency is unreachable.}
    """
    if actor().user is None:
        raise AuthenticationRequired("this endpoint needs an API token")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("query", {}), dict):
        raise BadRequest("send a JSON object with project, title and query (an object)")
    session = db()
    snapshot = snapshots.freeze(
        session,
        actor(),
        search.parse_query(body.get("query", {})),
        project_slug=str(body.get("project", "")),
        title=str(body.get("title", "")),
        description=str(body.get("description", "")),
        minter=minter_from_config(current_app.config),
        base_url=request.host_url,
    )
    session.commit()
    project = session.get(Project, snapshot.project_id)
    assert project is not None  # noqa: S101
    return jsonify(_snapshot_json(snapshot, project)), 201


@api_bp.get("/snapshots/<int:snapshot_id>")
def get_snapshot(snapshot_id: int) -> Response:
    """A snapshot's public description and suppressed statistics.
    ---
    get:
      summary: Snapshot metadata (PID, version, query, manifest hash, statistics).
      responses:
        200: {description: The snapshot.}
        404: {description: No such snapshot (or not visible).}
    """
    session = db()
    snapshot = snapshots.get_snapshot(session, actor(), snapshot_id)
    project = session.get(Project, snapshot.project_id)
    assert project is not None  # noqa: S101
    stats = snapshots.statistics(session, actor(), project, snapshot.subject_ids)
    return jsonify(**_snapshot_json(snapshot, project), statistics=stats)


@api_bp.get("/projects/<slug>/metadata")
def get_metadata(slug: str) -> Response:
    """A project's FAIR metadata record.
    ---
    get:
      summary: Current metadata record and version.
      responses:
        200: {description: The record.}
        404: {description: No such project (or not visible).}
    """
    project = projects.get_project(db(), actor(), slug, "project.view_metadata")
    return jsonify(version=project.metadata_version, record=metadata.record_of(project))


@api_bp.put("/projects/<slug>/metadata")
def put_metadata(slug: str) -> Response:
    """Replace a project's metadata (owners); saves a new version.
    ---
    put:
      summary: Validate and save the metadata record as a new version.
      security: [{bearer: []}]
      requestBody:
        content:
          application/json:
            schema: {type: object}
      responses:
        200: {description: Saved; the new version.}
        401: {description: No token.}
        403: {description: Not an owner.}
        404: {description: No such project.}
        422: {description: Invalid metadata.}
    """
    if actor().user is None:
        raise AuthenticationRequired("this endpoint needs an API token")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("send the metadata record as a JSON object")
    session = db()
    project = projects.get_project(session, actor(), slug, "project.edit")
    version = metadata.update_metadata(session, actor(), project, body)
    session.commit()
    return jsonify(version=version.version, record=metadata.record_of(project))
