"""Cohort search page: facets, per-muscle conditions, heat map; save and freeze queries."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from repository.errors import ValidationError
from repository.request_context import actor, db
from repository.services import search, snapshots, viewer
from repository.services.pids import minter_from_config
from repository.web.guards import login_required

bp = Blueprint("search", __name__)

FF_SCALE_MAX = 60.0  # % FF drawn at full colour


def ff_colour(ff: float | None) -> str:
    """Colour of a heat-map cell: pale yellow (0 %) to dark red (≥ 60 %); grey when hidden."""
    if ff is None:
        return "#d9d9d9"
    t = max(0.0, min(1.0, ff / FF_SCALE_MAX))
    low, high = (255, 247, 188), (153, 0, 13)
    r, g, b = (round(a + (b_ - a) * t) for a, b_ in zip(low, high, strict=True))
    return f"#{r:02x}{g:02x}{b:02x}"


def heat_cells(heatmap: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SVG geometry for the bar-layout heat map (one row per muscle, right then left)."""
    cells = []
    for i, cell in enumerate(heatmap):
        row, col = divmod(i, 2)
        cells.append(
            {
                **cell,
                "x": 190 + col * 70,
                "y": 24 + row * 22,
                "fill": ff_colour(cell["median_ff"]),
                "label": "–" if cell["median_ff"] is None else f"{cell['median_ff']:g}",
                "row": row,
            }
        )
    return cells


@bp.app_template_filter("heat_cells")
def _heat_cells_filter(heatmap: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return heat_cells(heatmap)


def _form_values(args: Any) -> dict[str, Any]:
    return {key: args.getlist(key) for key in args}


@bp.get("/search")
def search_page() -> str | tuple[str, int]:
    session, current = db(), actor()
    params = _form_values(request.args)
    error = None
    try:
        query = search.parse_query(params)
        page, per_page = search.parse_page(params)
        after = search.parse_cursor(params)
    except ValidationError as exc:
        error = exc.message
        query, page, per_page, after = search.CohortQuery(), 1, 25, None
    result = search.search(session, current, query, page=page, per_page=per_page, after=after)
    looks = viewer.quick_looks(
        session, current, [(r["project"], r["pseudonym"]) for r in result.subjects]
    )
    return render_template(
        "search/search.html",
        result=result,
        looks=looks,
        query=query,
        query_json=json.dumps(query.to_dict(), sort_keys=True),
        error=error,
        metrics=search.METRICS,
        metric_labels=search.METRIC_LABELS,
        muscles=search.MUSCLES,
        saved=snapshots.saved_queries(session, current),
    ), (422 if error else 200)


def _posted_query() -> search.CohortQuery:
    try:
        raw = json.loads(request.form.get("query_json", "{}"))
    except json.JSONDecodeError:
        raise ValidationError("the query could not be read; search again") from None
    if not isinstance(raw, dict):
        raise ValidationError("the query could not be read; search again")
    return search.parse_query(raw)


def _search_url(query: search.CohortQuery) -> str:
    return url_for("search.search_page", **query.to_dict())


@bp.post("/search/save")
@login_required
def save() -> Response:
    session = db()
    query = _posted_query()
    try:
        snapshots.save_query(session, actor(), request.form.get("name", ""), query)
    except ValidationError as exc:
        flash(exc.message, "error")
        return redirect(_search_url(query))
    session.commit()
    flash("Query saved.", "success")
    return redirect(_search_url(query))


@bp.post("/search/freeze")
@login_required
def freeze() -> Response:
    session = db()
    query = _posted_query()
    try:
        snapshot = snapshots.freeze(
            session,
            actor(),
            query,
            project_slug=request.form.get("project", ""),
            title=request.form.get("title", ""),
            description=request.form.get("description", ""),
            minter=minter_from_config(current_app.config),
            base_url=request.host_url,
        )
    except ValidationError as exc:
        session.rollback()
        flash(exc.message, "error")
        return redirect(_search_url(query))
    session.commit()
    flash(f"Snapshot frozen: {snapshot.pid}", "success")
    return redirect(url_for("catalog.snapshot_page", snapshot_id=snapshot.id))
