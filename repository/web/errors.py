"""Errors → HTML pages for the portal and JSON for the API, in one place. No stack traces."""

from __future__ import annotations

import logging

from flask import Flask, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response

from repository.errors import MyoVaultError
from repository.request_context import close_db

log = logging.getLogger(__name__)


def _respond(status: int, code: str, message: str) -> tuple[Response | str, int]:
    """Render first (the page shows who is logged in), then drop the request's transaction."""
    body: Response | str
    if request.path.startswith("/api/"):
        body = jsonify(error=code, message=message)
    else:
        body = render_template("error.html", status=status, code=code, message=message)
    close_db()
    return body, status


def register(app: Flask) -> None:
    from repository.storage.errors import StorageError, StorageUnavailable

    @app.errorhandler(MyoVaultError)
    def _domain(exc: MyoVaultError) -> tuple[Response | str, int]:
        return _respond(exc.status, exc.code, exc.message)

    @app.errorhandler(CSRFError)
    def _csrf(exc: CSRFError) -> tuple[Response | str, int]:
        return _respond(
            400,
            "csrf_failed",
            "The form expired or was not sent from this site. Reload the page and try again.",
        )

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> tuple[Response | str, int]:
        code = (exc.name or "error").lower().replace(" ", "_")
        return _respond(exc.code or 500, code, exc.description or exc.name)

    @app.errorhandler(OperationalError)
    def _db_down(exc: OperationalError) -> tuple[Response | str, int]:
        log.error("database error: %s", exc)
        return _respond(
            503,
            "database_unavailable",
            "The database is not reachable right now; nothing was changed. Try again shortly.",
        )

    @app.errorhandler(StorageUnavailable)
    def _storage_down(exc: StorageUnavailable) -> tuple[Response | str, int]:
        log.error("storage error: %s", exc)
        return _respond(
            503,
            "storage_unavailable",
            "The object store is not reachable right now; nothing was changed. Try again shortly.",
        )

    @app.errorhandler(StorageError)
    def _storage(exc: StorageError) -> tuple[Response | str, int]:
        log.error("storage error: %s", exc)
        return _respond(500, "storage_error", "A stored object could not be read safely.")

    @app.errorhandler(SQLAlchemyError)
    def _db(exc: SQLAlchemyError) -> tuple[Response | str, int]:
        log.exception("database error")
        return _respond(500, "internal_error", "Something went wrong; nothing was changed.")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> tuple[Response | str, int]:
        log.exception("unhandled error")
        return _respond(500, "internal_error", "Something went wrong; the error was logged.")
