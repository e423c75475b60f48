"""Log in and out."""

from __future__ import annotations

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from repository.errors import InvalidCredentials, TooManyAttempts
from repository.request_context import actor, client_ip, db
from repository.services import accounts, audit
from repository.web.guards import safe_next

bp = Blueprint("auth", __name__)


@bp.route("/login", methods=["GET", "POST"])
def login() -> str | Response | tuple[str, int]:
    if request.method == "GET":
        if actor().user is not None:
            return redirect(url_for("pages.dashboard"))
        return render_template("login.html", next=request.args.get("next", ""))
    limits = accounts.LoginLimits(
        current_app.config["LOGIN_MAX_FAILURES"], current_app.config["LOGIN_WINDOW_S"]
    )
    email = request.form.get("email", "")
    try:
        user = accounts.authenticate(
            db(),
            email=email,
            password=request.form.get("password", ""),
            ip=client_ip(),
            limits=limits,
        )
    except (InvalidCredentials, TooManyAttempts) as exc:
        db().commit()  # failed attempts are recorded and audited
        flash(exc.message, "error")
        status = 429 if isinstance(exc, TooManyAttempts) else 401
        return render_template("login.html", next=request.form.get("next", ""), email=email), status
    db().commit()
    session.clear()
    session.permanent = True
    session["uid"] = user.id
    session["pwv"] = user.password_hash[-16:]
    flash(f"Welcome, {user.name}.", "success")
    return redirect(safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> Response:
    current = actor()
    if current.user is not None:
        audit.record(db(), current, "logout", object_type="user", object_id=current.user.id)
        db().commit()
    session.clear()
    flash("You are logged out.", "info")
    return redirect(url_for("pages.home"))
