"""REST API under ``/api/v1`` — bearer-token auth, JSON in and out, JSON errors.

Every view documents itself with an OpenAPI YAML block after ``---`` in its docstring;
``/api/v1/openapi.json`` is generated from the registered routes (apispec), never by hand.
"""

from __future__ import annotations

from flask import Blueprint, g, request

from repository.errors import AuthenticationRequired, InvalidCredentials
from repository.request_context import client_ip, db
from repository.services import accounts
from repository.services.context import Actor

api_bp = Blueprint("api", __name__, url_prefix="/api/v1")


@api_bp.before_request
def _authenticate() -> None:
    header = request.headers.get("Authorization", "")
    if not header:
        g.actor = Actor(user=None, ip=client_ip())
        return
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationRequired("use 'Authorization: Bearer <token>'")
    try:
        user = accounts.user_for_token(db(), token.strip())
    except InvalidCredentials:
        db().rollback()
        raise
    db().commit()  # records last_used_at
    g.actor = Actor(user=user, ip=client_ip())


# Route modules register themselves on api_bp when imported.
from repository.api import (  # noqa: E402
    consent,  # noqa: F401  (consent, access, grants; issue 7)
    labels,  # noqa: F401  (label versions, corrected-label upload; issues 6 and 9)
    search,  # noqa: F401  (search, snapshots, metadata; issue 8)
    uploads,  # noqa: F401  (upload routes, issue 4)
    views,  # noqa: F401  (foundation routes)
)
