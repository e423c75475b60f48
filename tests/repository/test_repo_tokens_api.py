"""API tokens and the REST API's errors and OpenAPI document."""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy import select

from repository.models import ApiToken
from repository.models._types import utcnow
from tests.app_fixtures import api_token, csrf_token, login


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_created_in_the_portal_works_in_the_api(app, client, world):
    login(client, world.emails["researcher"])
    page = client.post(
        "/account/tokens",
        data={"name": "laptop", "days": "7", "csrf_token": csrf_token(client, "/account/tokens")},
    )
    html = page.get_data(as_text=True)
    plain = html.split('data-testid="new-token">')[1].split("<")[0]
    me = client.get("/api/v1/me", headers=_auth(plain))
    assert me.status_code == 200
    assert me.get_json()["user"]["email"] == world.emails["researcher"]
    with app.extensions["myovault"].db.transaction() as session:
        stored = session.scalars(select(ApiToken.token_hash)).all()
    assert hashlib.sha256(plain.encode()).hexdigest() in stored
    assert plain not in stored


def test_expired_and_revoked_tokens_are_refused(app, client, world):
    plain = api_token(app, world.emails["owner"])
    assert client.get("/api/v1/me", headers=_auth(plain)).status_code == 200
    with app.extensions["myovault"].db.transaction() as session:
        token = session.scalar(select(ApiToken))
        token.expires_at = utcnow() - timedelta(seconds=1)
    expired = client.get("/api/v1/me", headers=_auth(plain))
    assert expired.status_code == 401
    assert expired.get_json() == {
        "error": "invalid_credentials",
        "message": "this API token has expired",
    }
    second = api_token(app, world.emails["owner"])
    with app.extensions["myovault"].db.transaction() as session:
        token_id = session.scalar(select(ApiToken.id).order_by(ApiToken.id.desc()))
    assert client.delete(f"/api/v1/tokens/{token_id}", headers=_auth(second)).status_code == 204
    revoked = client.get("/api/v1/me", headers=_auth(second))
    assert revoked.status_code == 401
    assert "revoked" in revoked.get_json()["message"]


def test_malformed_authorization_header(client, world):
    response = client.get("/api/v1/me", headers={"Authorization": "Basic abc"})
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthenticated"
    assert client.get("/api/v1/me", headers=_auth("mvt_unknown")).status_code == 401


def test_api_errors_are_json_with_the_right_status(app, client, world):
    admin = _auth(api_token(app, world.emails["admin"]))
    researcher = _auth(api_token(app, world.emails["researcher"]))
    assert client.get("/api/v1/nope").get_json()["error"] == "not_found"
    assert client.put("/api/v1/projects").status_code == 405
    assert client.post("/api/v1/projects", json={"slug": "x"}).status_code == 401
    forbidden = client.post(
        "/api/v1/projects", json={"slug": "gamma", "title": "G"}, headers=researcher
    )
    assert forbidden.status_code == 403
    bad = client.post("/api/v1/projects", data="not json", headers=admin)
    assert bad.status_code == 400 and bad.get_json()["error"] == "bad_request"
    invalid = client.post("/api/v1/projects", json={"slug": "A B", "title": "t"}, headers=admin)
    assert invalid.status_code == 422
    created = client.post("/api/v1/projects", json={"slug": "gamma", "title": "G"}, headers=admin)
    assert created.status_code == 201
    again = client.post("/api/v1/projects", json={"slug": "gamma", "title": "G"}, headers=admin)
    assert again.status_code == 409


def test_unexpected_errors_never_show_a_stack_trace(app, client, world, monkeypatch):
    from repository.services import projects

    def boom(*args, **kwargs):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(projects, "list_projects", boom)
    response = client.get("/api/v1/projects")
    assert response.status_code == 500
    body = response.get_json()
    assert body == {
        "error": "internal_error",
        "message": "Something went wrong; the error was logged.",
    }
    html = client.get("/").get_data(as_text=True)
    assert "Traceback" not in html and "secret internal detail" not in html


def test_openapi_lists_every_api_route(app, client):
    doc = client.get("/api/v1/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    rules = [r for r in app.url_map.iter_rules() if r.endpoint.startswith("api.")]
    assert rules
    for rule in rules:
        path = rule.rule.replace("<int:", "{").replace("<", "{").replace(">", "}")
        assert path in doc["paths"], path
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert method.lower() in doc["paths"][path]


def test_health_reports_each_dependency(client):
    response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert set(response.get_json()["checks"]) == {"database", "storage", "broker"}
