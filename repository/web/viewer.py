"""The viewer (issue 9): subjects, visits with NiiVue, metrics, thumbnails, two-visit comparison.

Every route checks ``project.view_data`` (and the grant's subjects and data kinds) through
:mod:`repository.services.viewer`; images are decrypted from the store and streamed through
the app, never cached (``Cache-Control: private, no-store``) and audited per request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    jsonify,
    render_template,
    request,
    stream_with_context,
    url_for,
)

from repository.errors import NotFound
from repository.request_context import actor, db, ext
from repository.security import policy
from repository.services import viewer
from repository.web.guards import login_required

bp = Blueprint("viewer", __name__)

VISIT = "/projects/<slug>/subjects/<pseudonym>/visits/<label>"
VENDOR_BUNDLE = "vendor/niivue/niivue.js"  # built by `make install` (npm ci), not in git
NO_STORE = {"Cache-Control": "private, no-store", "Pragma": "no-cache", "Vary": "Cookie"}


def _viewer_installed() -> bool:
    return Path(current_app.static_folder or "", VENDOR_BUNDLE).is_file()


def _no_store(response: Response) -> Response:
    response.headers.update(NO_STORE)
    return response


@bp.get("/projects/<slug>/subjects")
@login_required
def subjects(slug: str) -> Response:
    session, current = db(), actor()
    project, rows = viewer.list_subjects(session, current, slug)
    visits = {s.id: sorted(s.visits, key=lambda v: v.label) for s in rows}
    html = render_template("viewer/subjects.html", project=project, subjects=rows, visits=visits)
    return _no_store(Response(html))


@bp.get("/projects/<slug>/subjects/<pseudonym>")
@login_required
def subject(slug: str, pseudonym: str) -> Response:
    session, current = db(), actor()
    subj, kinds = viewer.get_subject(session, current, slug, pseudonym)
    visits = []
    for visit in sorted(subj.visits, key=lambda v: v.label):
        scope = viewer.get_visit(session, current, slug, pseudonym, visit.label)
        contents = viewer.visit_contents(session, scope)
        visits.append((visit, contents, scope))
    html = render_template(
        "viewer/subject.html",
        project=visits[0][2].project if visits else viewer.get_project(session, current, slug),
        subject=subj,
        visits=visits,
        kinds=kinds,
    )
    return _no_store(Response(html))


def _page_data(scope: viewer.VisitScope, contents: viewer.VisitContents) -> dict[str, Any]:
    """What viewer.js needs: object URLs, map styles, label names and colours."""
    args: dict[str, Any] = {
        "slug": scope.project.slug,
        "pseudonym": scope.subject.pseudonym,
        "label": scope.visit.label,
    }
    labels = viewer.current_labels(contents)
    return {
        "visitId": scope.visit.id,
        "series": [
            {
                "id": s.id,
                "name": s.name,
                "url": url_for("viewer.series_image", series_id=s.id, **args),
            }
            for s in contents.series
        ],
        "maps": [
            {
                "id": m.id,
                "kind": m.kind,
                "name": m.name,
                "unit": m.unit,
                "colormap": m.colormap,
                "range": m.cal_range,
                "seriesId": m.series_id,
                "url": url_for("viewer.derivative_image", derivative_id=m.id, **args),
            }
            for m in contents.maps
        ],
        "labels": [
            {
                "id": x.id,
                "seriesId": x.series_id,
                "version": x.version,
                "name": f"{x.series_contrast.replace('_', ' ')} labels v{x.version}",
                "url": url_for("viewer.derivative_image", derivative_id=x.id, **args),
            }
            for x in contents.labels
            if "maps" in scope.kinds  # a metrics-only grant lists label versions, not voxels
        ],
        "labelsDerivativeId": labels.id if labels else None,
        "labelNames": viewer.label_names(),
        "palette": {k: list(v) for k, v in viewer.LABEL_PALETTE.items()},
        "metricsUrl": url_for("viewer.metrics", **args) if "metrics" in scope.kinds else None,
        "derivativeUrl": url_for("viewer.derivative_image", derivative_id=0, **args),
    }


@bp.get(f"{VISIT}/view")
@login_required
def visit(slug: str, pseudonym: str, label: str) -> Response:
    session, current = db(), actor()
    scope = viewer.get_visit(session, current, slug, pseudonym, label)
    contents = viewer.visit_contents(session, scope)
    labels = viewer.current_labels(contents)
    rows = (
        viewer.metrics_table(session, ext().store, scope, labels.id)
        if labels is not None and "metrics" in scope.kinds
        else []
    )
    session.commit()
    viewer.record(ext().db, current, "viewer.view", viewer.view_event(scope))
    others = [
        v for v in sorted(scope.subject.visits, key=lambda v: v.label) if v.id != scope.visit.id
    ]
    html = render_template(
        "viewer/visit.html",
        scope=scope,
        contents=contents,
        labels=labels,
        rows=rows,
        metrics=viewer.TABLE_METRICS,
        others=others,
        profile_points=viewer.profile_points,
        page_data=_page_data(scope, contents),
        may_edit=policy.can(session, current, "project.edit_labels", scope.project),
        viewer_installed=_viewer_installed(),
    )
    return _no_store(Response(html))


@bp.get(f"{VISIT}/metrics.json")
@login_required
def metrics(slug: str, pseudonym: str, label: str) -> Response:
    session, current = db(), actor()
    scope = viewer.get_visit(session, current, slug, pseudonym, label)
    labels_id = request.args.get("labels", type=int)
    if labels_id is None:
        found = viewer.current_labels(viewer.visit_contents(session, scope))
        if found is None:
            raise NotFound("this visit has no label image")
        labels_id = found.id
    rows = viewer.metrics_table(session, ext().store, scope, labels_id)
    return _no_store(jsonify(labelsDerivativeId=labels_id, rows=viewer.metrics_json(rows)))


def _stream(slug: str, pseudonym: str, label: str, what: str, object_id: int) -> Response:
    session, current = db(), actor()
    scope = viewer.get_visit(session, current, slug, pseudonym, label)
    item = viewer.open_object(session, current, scope, what, object_id)
    session.commit()  # end the read transaction; the audit event gets its own
    chunks = viewer.stream(ext().store, item)  # raises (nothing logged) if unreadable
    try:
        viewer.record(ext().db, current, "viewer.stream", item.event)  # before the first byte
    except BaseException:
        getattr(chunks, "close", lambda: None)()
        raise
    response = Response(
        stream_with_context(chunks),
        mimetype=item.content_type,
        headers={
            "Content-Length": str(item.size),
            "Content-Disposition": f'inline; filename="{item.filename}"',
        },
    )
    return _no_store(response)


@bp.get(f"{VISIT}/series/<int:series_id>.nii.gz")
@login_required
def series_image(slug: str, pseudonym: str, label: str, series_id: int) -> Response:
    return _stream(slug, pseudonym, label, "series", series_id)


@bp.get(f"{VISIT}/derivatives/<int:derivative_id>.nii.gz")
@login_required
def derivative_image(slug: str, pseudonym: str, label: str, derivative_id: int) -> Response:
    return _stream(slug, pseudonym, label, "derivative", derivative_id)


@bp.get(f"{VISIT}/thumbnails/<int:derivative_id>.png")
@login_required
def thumbnail(slug: str, pseudonym: str, label: str, derivative_id: int) -> Response:
    return _stream(slug, pseudonym, label, "thumbnail", derivative_id)


@bp.get(f"{VISIT}/thumbnail.png")
@login_required
def visit_thumbnail(slug: str, pseudonym: str, label: str) -> Response:
    """The visit's preferred thumbnail (Dixon water, else MESE, else any), for quick looks."""
    session, current = db(), actor()
    scope = viewer.get_visit(session, current, slug, pseudonym, label)
    contents = viewer.visit_contents(session, scope)
    preferred = viewer.current_labels(contents)
    series_id = preferred.series_id if preferred else None
    chosen = contents.thumbnails.get(series_id or 0) or next(
        iter(contents.thumbnails.values()), None
    )
    if chosen is None:
        scope.require("images")
        raise NotFound("this visit has no thumbnail yet")
    return _stream(slug, pseudonym, label, "thumbnail", chosen)


@bp.get("/projects/<slug>/subjects/<pseudonym>/compare")
@login_required
def compare(slug: str, pseudonym: str) -> Response:
    session, current = db(), actor()
    subj, _ = viewer.get_subject(session, current, slug, pseudonym)
    labels_sorted = [v.label for v in sorted(subj.visits, key=lambda v: v.label)]
    if len(labels_sorted) < 2:
        raise NotFound("this subject has only one visit")
    first = request.args.get("a", labels_sorted[0])
    second = request.args.get("b", labels_sorted[-1])
    sides = []
    for visit_label in (first, second):
        scope = viewer.get_visit(session, current, slug, pseudonym, visit_label)
        contents = viewer.visit_contents(session, scope)
        sides.append((scope, contents, viewer.current_labels(contents)))
    change = (
        viewer.ff_change(session, (sides[0][0], sides[0][2]), (sides[1][0], sides[1][2]))
        if all("metrics" in s[0].kinds for s in sides)
        else []
    )
    session.commit()
    for scope, _, _ in sides:
        viewer.record(ext().db, current, "viewer.compare", viewer.view_event(scope))
    html = render_template(
        "viewer/compare.html",
        project=sides[0][0].project,
        subject=subj,
        sides=sides,
        change=change,
        visit_labels=labels_sorted,
        page_data=[_page_data(s[0], s[1]) for s in sides],
        viewer_installed=_viewer_installed(),
    )
    return _no_store(Response(html))
