"""Label correction in the portal: save a corrected label image, version history with diffs.

``POST /labels/<id>/versions`` takes the corrected label NIfTI either as the raw request body
(``static/viewer/edit.js``, CSRF header ``X-CSRFToken``) or as the file field ``labels`` of the
upload form on the history page. ``<id>`` must be the current version of the segmentation.
"""

from __future__ import annotations

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from repository.attachments import attachment_response
from repository.errors import BadRequest, MyoVaultError
from repository.request_context import actor, db, ext
from repository.security import policy
from repository.services import labels
from repository.web.guards import login_required

bp = Blueprint("labels", __name__)


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "private, no-store"
    return response


def _wants_json() -> bool:
    return request.files.get("labels") is None


def _uploaded_bytes() -> bytes:
    upload = request.files.get("labels")
    data = upload.read() if upload is not None else request.get_data(cache=False)
    if not data:
        raise BadRequest("send the corrected label NIfTI (.nii or .nii.gz)")
    return data


def _saved_json(saved: labels.SavedVersion, derivative_id: int) -> dict[str, object]:
    return {
        "labelsDerivativeId": saved.derivative.id,
        "previousVersionId": derivative_id,
        "version": saved.derivative.version,
        "voxelsChanged": saved.voxels_changed,
        "diff": saved.diff,
        "jobId": saved.job.id,
        "historyUrl": url_for("labels.history_page", derivative_id=saved.derivative.id),
    }


@bp.post("/labels/<int:derivative_id>/versions")
@login_required
def save_version(derivative_id: int) -> Response | tuple[Response, int]:
    as_json = _wants_json()
    session = db()
    try:
        saved = labels.save_label_version(
            session,
            actor(),
            derivative_id,
            _uploaded_bytes(),
            store=ext().store,
            dispatch=ext().dispatch,
            comment=request.form.get("comment", ""),
        )
        body = _saved_json(saved, derivative_id)
        session.commit()
    except MyoVaultError as exc:
        session.rollback()
        if not as_json:
            raise
        return _no_store(jsonify(error=exc.code, message=exc.message)), exc.status
    if as_json:
        return _no_store(jsonify(body)), 201
    flash(
        f"Saved version {body['version']} ({body['voxelsChanged']} voxels changed);"
        " the metrics are being recomputed.",
        "success",
    )
    return redirect(str(body["historyUrl"]))


@bp.get("/labels/<int:derivative_id>/versions")
@login_required
def history_page(derivative_id: int) -> Response:
    session = db()
    hist = labels.history(session, actor(), derivative_id)
    may_edit = policy.can(session, actor(), "project.edit_labels", hist.project)
    html = render_template(
        "labels/history.html",
        hist=hist,
        may_edit=may_edit,
        versions=list(reversed(hist.versions)),
    )
    return _no_store(Response(html))


@bp.get("/labels/<int:derivative_id>/versions.json")
@login_required
def history_json(derivative_id: int) -> Response:
    hist = labels.history(db(), actor(), derivative_id)
    return _no_store(
        jsonify(
            currentId=hist.current.id,
            versions=[v.to_json() for v in hist.versions],
        )
    )


@bp.get("/labels/<int:derivative_id>.nii.gz")
@login_required
def version_image(derivative_id: int) -> Response:
    session = db()
    stream, size, name = labels.open_version(session, actor(), derivative_id, store=ext().store)
    session.commit()  # the audit event
    return attachment_response(stream, filename=name, mimetype="application/gzip", size=size)
