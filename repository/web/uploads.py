"""Upload pages: resumable browser uploads (static/uploads.js) and live upload progress.

The JSON endpoints here mirror the REST API's chunk protocol for the logged-in browser session
(cookie + CSRF header ``X-CSRFToken``); the REST API itself takes bearer tokens only.
"""

from __future__ import annotations

import json

from flask import (
    Blueprint,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response

from repository.attachments import attachment_response
from repository.errors import BadRequest
from repository.request_context import actor, db, ext
from repository.services import projects, uploads
from repository.web.guards import login_required

bp = Blueprint("uploads", __name__)


@bp.get("/projects/<slug>/upload")
@login_required
def upload_page(slug: str) -> str:
    project = projects.get_project(db(), actor(), slug, "project.upload")
    return render_template(
        "uploads/new.html",
        project=project,
        max_bytes=int(current_app.config["MAX_UPLOAD_BYTES"]),
        chunk_bytes=min(8 * 1024**2, uploads.MAX_CHUNK_BYTES),
    )


@bp.post("/projects/<slug>/uploads.json")
@login_required
def create_upload(slug: str) -> tuple[Response, int]:
    project = projects.get_project(db(), actor(), slug, "project.upload")
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("files"), list) or not body["files"]:
        raise BadRequest("send a JSON object with a non-empty list 'files'")
    upload = uploads.create_upload(
        db(),
        actor(),
        project,
        files=uploads.parse_specs(body["files"]),
        max_bytes=int(current_app.config["MAX_UPLOAD_BYTES"]),
        source="web",
        label=str(body.get("label", "")),
    )
    db().commit()
    ext().keyring.data_key(uploads.quarantine_subject(upload.id), create=True)
    return jsonify(upload=uploads.upload_json(db(), upload)), 201


@bp.patch("/uploads/<int:upload_id>/files/<int:file_id>/chunk")
@login_required
def put_chunk(upload_id: int, file_id: int) -> Response:
    item = uploads.get_file(db(), actor(), upload_id, file_id)
    try:
        offset = int(request.headers.get("Upload-Offset", ""))
    except ValueError:
        raise BadRequest("send header Upload-Offset") from None
    algorithm, _, digest = request.headers.get("Upload-Checksum", "").partition(" ")
    if algorithm.lower() != "sha256" or request.content_length is None:
        raise BadRequest("send headers Upload-Checksum: sha256 <hex> and Content-Length")
    try:
        uploads.put_chunk(
            db(),
            actor(),
            ext().store,
            item,
            offset=offset,
            stream=request.stream,
            length=request.content_length,
            sha256=digest.strip(),
        )
    except uploads.OffsetMismatch as exc:
        db().rollback()
        response = jsonify(error=exc.code, message=exc.message, offset=exc.expected)
        response.status_code = 409
        return response
    db().commit()
    return jsonify(file=uploads.file_json(item))


@bp.post("/uploads/<int:upload_id>/complete")
@login_required
def complete(upload_id: int) -> tuple[Response, int]:
    upload = uploads.get_upload(db(), actor(), upload_id)
    uploads.complete_upload(db(), actor(), upload, ext().dispatch)
    db().commit()
    return jsonify(upload=uploads.upload_json(db(), upload, with_files=False)), 202


@bp.get("/uploads/<int:upload_id>/status.json")
@login_required
def status(upload_id: int) -> Response:
    upload = uploads.get_upload(db(), actor(), upload_id)
    response = jsonify(upload=uploads.upload_json(db(), upload))
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/uploads/<int:upload_id>/report.json")
@login_required
def report(upload_id: int) -> Response:
    upload = uploads.get_upload(db(), actor(), upload_id)
    return attachment_response(
        json.dumps(upload.report, indent=2, sort_keys=True),
        filename=f"upload-{upload.id}-report.json",
        mimetype="application/json",
    )


@bp.post("/uploads/<int:upload_id>/retry")
@login_required
def retry(upload_id: int) -> Response:
    """The Retry button: queue the upload's failed stages again (audited, project uploaders)."""
    upload = uploads.get_upload(db(), actor(), upload_id)
    queued = uploads.retry_failed(db(), actor(), upload, ext().dispatch)
    db().commit()
    if queued:
        flash(f"Retrying {len(queued)} failed stage(s).", "success")
    else:
        flash("No failed stage to retry.", "info")
    return redirect(url_for("uploads.upload_detail", upload_id=upload_id))


@bp.get("/uploads")
@login_required
def upload_list() -> str:
    rows = uploads.list_uploads(db(), actor())
    return render_template(
        "uploads/list.html",
        uploads=[uploads.upload_json(db(), u, with_files=False) for u in rows],
    )


@bp.get("/uploads/<int:upload_id>")
@login_required
def upload_detail(upload_id: int) -> str:
    upload = uploads.get_upload(db(), actor(), upload_id)
    data = uploads.upload_json(db(), upload)
    return render_template(
        "uploads/detail.html",
        upload=data,
        report=upload.report,
        visits=uploads.upload_visits(db(), actor(), upload),
    )
