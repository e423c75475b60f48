"""Request helpers shared by every API module."""

from __future__ import annotations

from typing import Any

from flask import request

from repository.errors import AuthenticationRequired, BadRequest
from repository.request_context import actor


def json_body() -> dict[str, Any]:
    """The request's JSON object, or a 400 saying how to send one."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object with Content-Type: application/json")
    return body


def require_user() -> None:
    """401 unless the request carries a valid API token."""
    if actor().user is None:
        raise AuthenticationRequired("this endpoint needs an API token")
