"""Server-rendered portal: one blueprint per feature, thin views over services."""

from __future__ import annotations

from flask import Flask, Response, g, session

from repository.models import User
from repository.request_context import db
from repository.services.context import Actor


def _load_session_user() -> None:
    """Attach the logged-in user (web session cookie) to ``g.actor``; API requests skip this."""
    from flask import request

    from repository.request_context import client_ip

    if request.path.startswith("/api/"):
        return
    user_id = session.get("uid")
    if user_id is None:
        g.actor = Actor(user=None, ip=client_ip())
        return
    user = db().get(User, user_id)
    if user is None or not user.is_active or session.get("pwv") != user.password_hash[-16:]:
        session.clear()  # deactivated accounts and changed passwords end every session
        g.actor = Actor(user=None, ip=client_ip())
        return
    g.actor = Actor(user=user, ip=client_ip())


def _security_headers(response: Response) -> Response:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " frame-ancestors 'none'; form-action 'self'",
    )
    if g.get("actor") is not None and g.actor.user is not None:
        response.headers["Cache-Control"] = "no-store, private"
    return response


def register_web(app: Flask) -> None:
    from repository.web import account, admin, auth, errors, pages

    app.before_request(_load_session_user)
    app.after_request(_security_headers)
    for bp in (auth.bp, pages.bp, admin.bp, account.bp):
        app.register_blueprint(bp)
    from repository.web import catalog, oai, search  # cohort search and catalogue (issue 8)

    for bp in (search.bp, catalog.bp, oai.bp):
        app.register_blueprint(bp)
    from repository.web import access as access_web  # consent, DAC, grants (issue 7)
    from repository.web import consent as consent_web

    app.register_blueprint(consent_web.bp)
    app.register_blueprint(access_web.bp)
    from repository.web import uploads as uploads_web  # uploads and pipeline (issue 4)

    app.register_blueprint(uploads_web.bp)
    from repository.web import viewer as viewer_web  # viewer, thumbnails, longitudinal (issue 9)

    app.register_blueprint(viewer_web.bp)
    from repository.web import labels as labels_web  # label correction (issue 9 item 3)

    app.register_blueprint(labels_web.bp)
    from repository import csrf

    csrf.exempt(oai.bp)  # OAI-PMH harvesters may POST; it is read-only and cookie-free
    errors.register(app)

    @app.context_processor
    def _inject() -> dict[str, object]:
        from repository import __version__
        from repository.request_context import actor
        from repository.security import policy

        def can(action: str, project: object = None) -> bool:
            return policy.can(db(), actor(), action, project)  # type: ignore[arg-type]

        return {"actor": actor(), "can": can, "version": __version__}
