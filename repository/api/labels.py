"""Label versions over the REST API: download the current labels, upload a correction.

A client (e.g. a script around ITK-SNAP) downloads a segmentation with ``GET /labels/<id>/
image``, edits it and uploads the result with ``POST /labels/<id>/versions`` (the raw NIfTI,
``.nii`` or ``.nii.gz``, as the request body). ``<id>`` must be the current version; the answer
names the new version and the job recomputing the metrics.
"""

from __future__ import annotations

from flask import jsonify, request
from werkzeug.wrappers import Response

from repository.api import api_bp
from repository.api.requests import require_user
from repository.attachments import attachment_response
from repository.errors import BadRequest
from repository.request_context import actor, db, ext
from repository.services import labels


@api_bp.post("/labels/<int:derivative_id>/versions")
def save_label_version(derivative_id: int) -> tuple[Response, int]:
    """Upload a corrected label image as the segmentation's next version.
    ---
    post:
      summary: Save corrected labels (project owners and site investigators).
      description: >
        The body is a NIfTI-1 label image (raw or gzipped) on exactly the grid (shape and
        affine) of version `derivative_id`, which must be the current version, holding only the
        model's labels (0 background, 1-11 right and 12-22 left thigh muscles). The previous
        version is kept. The per-muscle metrics are recomputed by the returned job.
      security: [{bearer: []}]
      parameters:
        - {name: derivative_id, in: path, required: true, schema: {type: integer},
           description: Id of the current label version (a LABELS derivative).}
      requestBody:
        required: true
        content:
          application/octet-stream:
            schema: {type: string, format: binary}
          application/gzip:
            schema: {type: string, format: binary}
      responses:
        201:
          description: The new version.
          content:
            application/json:
              schema:
                type: object
                properties:
                  labels_derivative_id: {type: integer}
                  version: {type: integer}
                  previous_version_id: {type: integer}
                  voxels_changed: {type: integer}
                  diff: {type: object, description: "{muscle: {added, removed}} voxel counts"}
                  job_id: {type: integer}
        400: {description: No file in the body.}
        401: {description: No token.}
        403: {description: You may not edit labels in this project.}
        404: {description: No such label image (or not visible to you).}
        409: {description: Not the current version; download the current one and redo the edit.}
        413: {description: Larger than the request limit.}
        422: {description: Not a label image on the same grid, unknown labels, or no change.}
    """
    require_user()
    data = request.get_data(cache=False)
    if not data:
        raise BadRequest("send the corrected label NIfTI as the request body")
    saved = labels.save_label_version(
        db(), actor(), derivative_id, data, store=ext().store, dispatch=ext().dispatch
    )
    body = {
        "labels_derivative_id": saved.derivative.id,
        "version": saved.derivative.version,
        "previous_version_id": derivative_id,
        "voxels_changed": saved.voxels_changed,
        "diff": saved.diff,
        "job_id": saved.job.id,
    }
    db().commit()
    return jsonify(body), 201


@api_bp.get("/labels/<int:derivative_id>/versions")
def label_versions(derivative_id: int) -> Response:
    """Every version of a segmentation with who made it and what changed.
    ---
    get:
      summary: Label version history (users who may view the project's data).
      security: [{bearer: []}]
      parameters: [{name: derivative_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200: {description: "`current_id` and `versions` (oldest first) with per-muscle diffs."}
        401: {description: No token.}
        403: {description: You may not view this project's data.}
        404: {description: No such label image.}
    """
    require_user()
    hist = labels.history(db(), actor(), derivative_id)
    response = jsonify(current_id=hist.current.id, versions=[v.to_json() for v in hist.versions])
    response.headers["Cache-Control"] = "private, no-store"
    return response


@api_bp.get("/labels/<int:derivative_id>/image")
def label_image(derivative_id: int) -> Response:
    """Download one label version (gzipped NIfTI, decrypted from the store).
    ---
    get:
      summary: Label image of one version (users who may view the project's data).
      security: [{bearer: []}]
      parameters: [{name: derivative_id, in: path, required: true, schema: {type: integer}}]
      responses:
        200:
          description: The label NIfTI.
          content: {application/gzip: {schema: {type: string, format: binary}}}
        401: {description: No token.}
        403: {description: You may not view this project's data.}
        404: {description: No such label image.}
    """
    require_user()
    stream, size, name = labels.open_version(db(), actor(), derivative_id, store=ext().store)
    db().commit()  # the audit event
    return attachment_response(stream, filename=name, mimetype="application/gzip", size=size)
