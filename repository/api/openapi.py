"""Generate the OpenAPI document from every ``/api/v1`` route's docstring (apispec)."""

from __future__ import annotations

from typing import Any

from apispec import APISpec
from apispec.yaml_utils import load_operations_from_docstring
from flask import Flask


def _openapi_path(rule: str) -> str:
    """Flask ``/jobs/<int:job_id>`` → OpenAPI ``/jobs/{job_id}``."""
    out, i = [], 0
    while i < len(rule):
        if rule[i] == "<":
            end = rule.index(">", i)
            out.append("{" + rule[i + 1 : end].split(":")[-1] + "}")
            i = end + 1
        else:
            out.append(rule[i])
            i += 1
    return "".join(out)


def build_openapi(app: Flask) -> dict[str, Any]:
    from repository import __version__

    spec = APISpec(
        title="MyoVault API",
        version=__version__,
        openapi_version="3.0.3",
        info={"description": "Quantitative muscle MRI repository — REST API."},
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: r.rule):
        if not rule.endpoint.startswith("api."):
            continue
        view = app.view_functions[rule.endpoint]
        operations = load_operations_from_docstring(view.__doc__ or "")
        methods = {m.lower() for m in (rule.methods or set())} - {"head", "options"}
        missing = methods - set(operations)
        if missing:
            raise RuntimeError(f"{rule.rule} lacks OpenAPI docs for {sorted(missing)}")
        spec.path(path=_openapi_path(rule.rule), operations=operations)
    return spec.to_dict()
