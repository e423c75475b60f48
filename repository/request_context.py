"""Per-request database session and actor, shared by the web views and the REST API."""

from __future__ import annotations

from flask import current_app, g, request
from sqlalchemy.orm import Session

from repository.extension import MyoVault
from repository.services.context import ANONYMOUS, Actor


def ext() -> MyoVault:
    return current_app.extensions["myovault"]  # type: ignore[no-any-return]


def db() -> Session:
    """The request's session; committed explicitly by the view, rolled back at teardown."""
    if "db" not in g:
        g.db = ext().db.session_factory()
    return g.db  # type: ignore[no-any-return]


def actor() -> Actor:
    return g.get("actor", ANONYMOUS)  # type: ignore[no-any-return]


def client_ip() -> str:
    return request.remote_addr or ""


def close_db(_exc: BaseException | None = None) -> None:
    session = g.pop("db", None)
    if session is not None:
        session.rollback()
        session.close()
