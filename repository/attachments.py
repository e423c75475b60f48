"""One way to send a private file download (portal and API alike)."""

from __future__ import annotations

import base64
from collections.abc import Iterable

from flask import Response


def attachment_response(
    body: str | bytes | Iterable[bytes],
    *,
    filename: str,
    mimetype: str,
    size: int | None = None,
    sha256_hex: str | None = None,
) -> Response:
    """A download of individual-level data: saved as ``filename``, never sniffed, never cached
    (not even privately by the browser for another user of the machine)."""
    response = Response(body, mimetype=mimetype)
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    if size is not None:
        response.headers["Content-Length"] = str(size)
    if sha256_hex is not None:
        response.headers["Digest"] = (
            "sha-256=" + base64.b64encode(bytes.fromhex(sha256_hex)).decode()
        )
    return response
