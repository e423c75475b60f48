"""Resumable upload API (tus-like chunk protocol; see :mod:`repository.services.uploads`).

1. ``POST /projects/<slug>/uploads`` with ``{"files": [{"path", "size", "sha256"}, …]}``.
2. For each file: ``PATCH /uploads/<id>/files/<fid>`` with the raw bytes of one chunk and
   headers ``Upload-Offset`` (where the chunk starts) and ``Upload-Checksum: sha256 <hex>``.
   After a dropped connection, ``HEAD`` (or ``GET``) the file: ``Upload-Offset`` says where to
   resume.
3. ``POST /uploads/<id>/complete`` starts the pipeline; ``GET /uploads/<id>`` shows progress.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, jsonify, request
from werkzeug.wrappers import Response

from repository.api import api_bp
from repository.api.requests import json_body, require_user
from repository.attachments import attachment_response
from repository.errors import BadRequest
from repository.request_context import actor, db, ext
from repository.services import projects, uploads


def _offset_headers(response: Response, item: Any) -> Response:
    response.headers["Upload-Offset"] = str(item.received_bytes)
    response.headers["Upload-Length"] = str(item.size)
    response.headers["Cache-Control"] = "no-store"
    return response


@api_bp.post("/projects/<slug>/uploads")
def create_upload(slug: str) -> tuple[Response, int]:
    """Open a resumable upload session.
    ---
    post:
      summary: Declare the files of an upload (investigators and owners).
      description: >
        Files whose sha256 was already received in the project are marked `duplicate` and need
        no bytes. The declared total must not exceed the server's MAX_UPLOAD_BYTES.
      security: [{bearer: []}]
      parameters: [{name: slug, in: path, required: true, schema: {type: string}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [files]
              properties:
                label: {type: string}
                source: {type: string, enum: [web, cli]}
                files:
                  type: array
                  items:
                    type: object
                    required: [path, size, sha256]
                    properties:
                      path: {type: string, description: Relative path (no '..').}
                      size: {type: integer}
                      sha256: {type: string, description: Hex sha256 of the whole file.}
      responses:
        201: {description: The upload with its files (id, offset, state).}
        401: {description: No token.}
        403: {description: You may not upload to this project.}
        404: {description: No such project.}
        413: {description: Larger than the upload limit.}
        422: {description: Invalid file list.}
    """
    require_user()
    body = json_body()
    project = projects.get_project(db(), actor(), slug, "project.upload")
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise BadRequest("send a non-empty list 'files'")
    specs = uploads.parse_specs(files)
    source = str(body.get("source", "cli"))
    if source not in ("web", "cli"):
        raise BadRequest("source must be web or cli")
    upload = uploads.create_upload(
        db(),
        actor(),
        project,
        files=specs,
        max_bytes=int(current_app.config["MAX_UPLOAD_BYTES"]),
        source=source,
        label=str(body.get("label", "")),
    )
    db().commit()
    # the quarantine data key exists before any chunk arrives: chunk requests then only read
    # the key ring (on SQLite a write there would conflict with the request's snapshot)
    ext().keyring.data_key(uploads.quarantine_subject(upload.id), create=True)
    return jsonify(upload=uploads.upload_json(db(), upload)), 201


@api_bp.post("/uploads/<int:upload_id>/files")
def add_files(upload_id: int) -> tuple[Response, int]:
    """Declare more files of an open upload.
    ---
    post:
      summary: Add files to an open upload (large folders are declared in batches).
      security: [{bearer: []}]
      parameters: [{name: upload_id, in: path, required: true, schema: {type: integer}}]
      requestBody:
        content:
          application/json:
            schema:
              type: object
              required: [files]
              properties:
                files: {type: array, items: {type: object}}
      responses:
        201: {description: The new files.}
        404: {description: No such upload.}
        409: {description: The upload is closed or a path is already declared.}
        413: {description: Larger than the upload limit.}
    """
    require_user()
    upload = uploads.get_upload(db(), actor(), upload_id)
    files = json_body().get("files")
    if not isinstance(files, list) or not files:
        raise BadRequest("send a non-empty list 'files'")
    created = uploads.add_files(
        db(),
        actor(),
        upload,
        uploads.parse_specs(files),
        max_bytes=int(current_app.config["MAX_UPLOAD_BYTES"]),
    )
    db().commit()
    return jsonify(files=[uploads.file_json(f) for f in created]), 201


@api_bp.get("/uploads")
def list_uploads() -> Response:
    """Uploads of your projects.
    ---
    get:
      summary: List uploads (newest first) of the projects where you upload.
      security: [{bearer: []}]
      responses:
        200: {description: Uploads without their file lists.}
        401: {description: No token.}
    """
    require_user()
    rows = uploads.list_uploads(db(), actor())
    return jsonify(uploads=[uploads.upload_json(db(), u, with_files=False) for u in rows])


@api_bp.get("/uploads/<int:upload_id>")
def get_upload(upload_id: int) -> Response:
    """An upload's progress: bytes, per-file states, pipeline jobs, what needs attention.
    ---
    get:
      summary: Upload status (poll it for live progress).
      security: [{bearer: []}]
      parameters: [{name: upload_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200: {description: The upload.}
        404: {description: No such upload (or not yours to see).}
    """
    require_user()
    upload = uploads.get_upload(db(), actor(), upload_id)
    return jsonify(upload=uploads.upload_json(db(), upload))


@api_bp.get("/uploads/<int:upload_id>/report")
def get_report(upload_id: int) -> Response:
    """The de-identification report of an upload (JSON download; files referred to by hash).
    ---
    get:
      summary: Anonymizer and conversion report.
      security: [{bearer: []}]
      parameters: [{name: upload_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200: {description: The report as a JSON attachment.}
        404: {description: No such upload.}
    """
    require_user()
    upload = uploads.get_upload(db(), actor(), upload_id)
    return attachment_response(
        json.dumps(upload.report, indent=2, sort_keys=True),
        filename=f"upload-{upload.id}-report.json",
        mimetype="application/json",
    )


@api_bp.route("/uploads/<int:upload_id>/files/<int:file_id>", methods=["HEAD", "GET"])
def file_offset(upload_id: int, file_id: int) -> Response:
    """Where to resume a file.
    ---
    get:
      summary: The file's state; header Upload-Offset is the number of bytes received.
      security: [{bearer: []}]
      parameters:
        - {name: upload_id, in: path, required: true, schema: {type: integer}}
        - {name: file_id, in: path, required: true, schema: {type: integer}}
      responses:
        200: {description: The file (HEAD returns the headers only).}
        404: {description: No such file.}
    """
    require_user()
    item = uploads.get_file(db(), actor(), upload_id, file_id)
    return _offset_headers(jsonify(file=uploads.file_json(item)), item)


@api_bp.patch("/uploads/<int:upload_id>/files/<int:file_id>")
def put_chunk(upload_id: int, file_id: int) -> Response:
    """Send one chunk of a file (raw bytes, streamed to the encrypted quarantine).
    ---
    patch:
      summary: Append a chunk at Upload-Offset, checked against Upload-Checksum.
      security: [{bearer: []}]
      parameters:
        - {name: upload_id, in: path, required: true, schema: {type: integer}}
        - {name: file_id, in: path, required: true, schema: {type: integer}}
        - {name: Upload-Offset, in: header, required: true, schema: {type: integer}}
        - name: Upload-Checksum
          in: header
          required: true
          schema: {type: string}
          description: "'sha256 <hex digest of this chunk>'"
      requestBody:
        content:
          application/offset+octet-stream:
            schema: {type: string, format: binary}
      responses:
        200:
          description: >
            Stored; Upload-Offset is the new offset. A file whose last chunk arrived shows
            state received (or rejected with the reason).
        404: {description: No such file.}
        409: {description: Wrong offset (resume at the Upload-Offset returned) or file closed.}
        422: {description: Chunk checksum mismatch or bad headers; nothing was stored.}
    """
    require_user()
    item = uploads.get_file(db(), actor(), upload_id, file_id)
    try:
        offset = int(request.headers.get("Upload-Offset", ""))
    except ValueError:
        raise BadRequest("send the chunk's start as header Upload-Offset") from None
    algorithm, _, digest = request.headers.get("Upload-Checksum", "").partition(" ")
    if algorithm.lower() != "sha256" or not digest:
        raise BadRequest("send header 'Upload-Checksum: sha256 <hex digest of the chunk>'")
    length = request.content_length
    if length is None:
        raise BadRequest("send a Content-Length")
    try:
        uploads.put_chunk(
            db(),
            actor(),
            ext().store,
            item,
            offset=offset,
            stream=request.stream,
            length=length,
            sha256=digest.strip(),
        )
    except uploads.OffsetMismatch as exc:
        db().rollback()
        response = jsonify(error=exc.code, message=exc.message, offset=exc.expected)
        response.status_code = 409
        response.headers["Upload-Offset"] = str(exc.expected)
        return response
    db().commit()
    return _offset_headers(jsonify(file=uploads.file_json(item)), item)


@api_bp.post("/uploads/<int:upload_id>/complete")
def complete_upload(upload_id: int) -> tuple[Response, int]:
    """Close the upload and start the pipeline.
    ---
    post:
      summary: Start de-identification → verification → ORMIR-MIDS conversion.
      security: [{bearer: []}]
      parameters: [{name: upload_id, in: path, required: true, schema: {type: integer}}]
      responses:
        202: {description: "Accepted; poll GET /uploads/{upload_id}."}
        404: {description: No such upload.}
        409: {description: Some files are still incomplete.}
    """
    require_user()
    upload = uploads.get_upload(db(), actor(), upload_id)
    uploads.complete_upload(db(), actor(), upload, ext().dispatch)
    db().commit()
    return jsonify(upload=uploads.upload_json(db(), upload, with_files=False)), 202


@api_bp.post("/uploads/<int:upload_id>/retry")
def retry_upload(upload_id: int) -> tuple[Response, int]:
    """Queue the upload's failed pipeline jobs again (every stage is idempotent).
    ---
    post:
      summary: Retry failed pipeline stages.
      security: [{bearer: []}]
      parameters: [{name: upload_id, in: path, required: true, schema: {type: integer}}]
      responses:
        202: {description: The ids of the jobs queued again.}
        403: {description: You may not upload to this project.}
        404: {description: No such upload.}
    """
    require_user()
    upload = uploads.get_upload(db(), actor(), upload_id)
    queued = uploads.retry_failed(db(), actor(), upload, ext().dispatch)
    db().commit()
    return jsonify(jobs=queued), 202


@api_bp.delete("/uploads/<int:upload_id>")
def cancel_upload(upload_id: int) -> Response:
    """Cancel an open upload; its received bytes are deleted.
    ---
    delete:
      summary: Cancel an open upload.
      security: [{bearer: []}]
      parameters: [{name: upload_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200: {description: Cancelled.}
        404: {description: No such upload.}
        409: {description: The upload is no longer open.}
    """
    require_user()
    upload = uploads.get_upload(db(), actor(), upload_id)
    uploads.cancel_upload(db(), actor(), ext().store, upload)
    db().commit()
    return jsonify(upload=uploads.upload_json(db(), upload, with_files=False))
