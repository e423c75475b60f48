"""A user's own account: API tokens."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from werkzeug.wrappers import Response

from repository.errors import MyoVaultError
from repository.request_context import actor, db
from repository.services import accounts
from repository.web.guards import login_required

bp = Blueprint("account", __name__, url_prefix="/account")


@bp.get("/tokens")
@login_required
def tokens() -> str:
    return render_template(
        "tokens.html",
        tokens=accounts.list_tokens(db(), actor()),
        max_days=current_app.config["TOKEN_MAX_DAYS"],
        default_days=current_app.config["TOKEN_DEFAULT_DAYS"],
    )


@bp.post("/tokens")
@login_required
def create_token() -> str | Response:
    try:
        days = int(request.form.get("days") or current_app.config["TOKEN_DEFAULT_DAYS"])
    except ValueError:
        flash("The lifetime must be a whole number of days.", "error")
        return redirect(url_for("account.tokens"))
    try:
        token, plain = accounts.create_token(
            db(),
            actor(),
            name=request.form.get("name", ""),
            days=days,
            max_days=current_app.config["TOKEN_MAX_DAYS"],
        )
    except MyoVaultError as exc:
        db().rollback()
        flash(exc.message, "error")
        return redirect(url_for("account.tokens"))
    db().commit()
    return render_template(
        "tokens.html",
        tokens=accounts.list_tokens(db(), actor()),
        new_token=plain,
        max_days=current_app.config["TOKEN_MAX_DAYS"],
        default_days=current_app.config["TOKEN_DEFAULT_DAYS"],
    )


@bp.post("/tokens/<int:token_id>/revoke")
@login_required
def revoke_token(token_id: int) -> Response:
    accounts.revoke_token(db(), actor(), token_id)
    db().commit()
    flash("Token revoked.", "success")
    return redirect(url_for("account.tokens"))
