"""MyoVault: a secure data-sharing repository for quantitative muscle MRI.

``create_app(config)`` is the one entry point of the web application (DESIGN §5).
"""

from __future__ import annotations

import secrets
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from repository.config import load_config
from repository.errors import ConfigError

__version__ = "0.1.0"

csrf = CSRFProtect()


def _secret_key(config: dict[str, Any]) -> str:
    if config.get("SECRET_KEY"):
        return str(config["SECRET_KEY"])
    path = Path(config["HOME"]) / "keys" / "flask-secret"
    if path.is_file():
        return path.read_text().strip()
    if config["CHECK_SERVICES"]:
        raise ConfigError(
            f"no session secret: set MYOVAULT_SECRET_KEY or run `myovault init` (expected {path})"
        )
    return secrets.token_urlsafe(32)  # only for `init` itself, which writes the file


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app; configuration problems raise :class:`ConfigError` with the fix."""
    from repository import models  # noqa: F401  (registers every table)
    from repository.api import api_bp
    from repository.extension import MyoVault
    from repository.request_context import close_db
    from repository.services import (
        access,  # noqa: F401  (access reminder job)
        maintenance,  # noqa: F401  (registers built-in jobs)
        pipeline,  # noqa: F401  (ingest pipeline jobs)
        pipeline_segment,  # noqa: F401  (segmentation + metrics stage)
    )
    from repository.web import register_web
    from repository.worker import make_celery

    cfg = load_config(config)
    app = Flask(__name__, template_folder="web/templates", static_folder="web/static")
    app.config.update(cfg)
    app.config["SECRET_KEY_CONFIGURED"] = bool(cfg.get("SECRET_KEY"))
    app.config.update(
        SECRET_KEY=_secret_key(cfg),
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(cfg["COOKIE_SECURE"]),
        SESSION_COOKIE_NAME="myovault_session",
        PERMANENT_SESSION_LIFETIME=timedelta(seconds=cfg["SESSION_LIFETIME_S"]),
        MAX_CONTENT_LENGTH=cfg["MAX_REQUEST_BYTES"],
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead
        JSON_SORT_KEYS=False,
    )
    MyoVault(app)
    csrf.init_app(app)
    csrf.exempt(api_bp)  # the API takes bearer tokens only, never cookies
    app.register_blueprint(api_bp)
    register_web(app)
    app.teardown_appcontext(close_db)
    make_celery(app)
    return app
