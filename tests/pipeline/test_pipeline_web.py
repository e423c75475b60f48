"""Upload pages over the Flask test client: access, CSRF, the chunk protocol with a session."""

from __future__ import annotations

import re

from flask import Flask
from flask.testing import FlaskClient

from repository.services.pipeline import run_local
from tests.app_fixtures import World, login
from tests.pipeline.pipeline_helpers import sha


def _csrf(client: FlaskClient, path: str) -> str:
    match = re.search(r'data-csrf="([^"]+)"', client.get(path).get_data(as_text=True))
    assert match, path
    return match.group(1)


def test_upload_page_is_for_uploaders_only(client: FlaskClient, world: World) -> None:
    assert client.get("/projects/alpha/upload").status_code == 302  # login first
    login(client, world.emails["researcher"])
    assert client.get("/projects/alpha/upload").status_code == 403
    assert client.get("/projects/beta/upload").status_code == 404
    client.post("/logout", data={"csrf_token": _csrf_from_dashboard(client)})
    login(client, world.emails["investigator"])
    page = client.get("/projects/alpha/upload").get_data(as_text=True)
    assert "uploads.js" in page and "<script>" not in page  # CSP: no inline script
    dashboard = client.get("/dashboard").get_data(as_text=True)
    assert "/projects/alpha/upload" in dashboard


def _csrf_from_dashboard(client: FlaskClient) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/dashboard").get_data(True))
    assert match
    return match.group(1)


def test_browser_protocol_needs_csrf_and_reaches_done(
    app: Flask, client: FlaskClient, world: World
) -> None:
    login(client, world.emails["investigator"])
    body = b"\0" * 128 + b"DICM" + b"z" * 64
    spec = {"files": [{"path": "x/IM1.dcm", "size": len(body), "sha256": sha(body)}]}
    assert client.post("/projects/alpha/uploads.json", json=spec).status_code == 400  # no CSRF
    token = _csrf(client, "/projects/alpha/upload")
    r = client.post("/projects/alpha/uploads.json", json=spec, headers={"X-CSRFToken": token})
    assert r.status_code == 201
    upload = r.get_json()["upload"]
    fid = upload["files"][0]["id"]
    headers = {
        "X-CSRFToken": token,
        "Upload-Offset": "0",
        "Upload-Checksum": f"sha256 {sha(body)}",
    }
    r = client.patch(f"/uploads/{upload['id']}/files/{fid}/chunk", data=body, headers=headers)
    assert r.status_code == 200 and r.get_json()["file"]["state"] == "received"
    r = client.post(f"/uploads/{upload['id']}/complete", headers={"X-CSRFToken": token})
    assert r.status_code == 202
    with app.app_context():
        run_local(app.extensions["myovault"], upload["id"])
    status = client.get(f"/uploads/{upload['id']}/status.json").get_json()["upload"]
    # a DICOM preamble without a dataset: quarantined with a reason, listed as needing attention
    assert status["state"] == "attention"
    assert status["needs_attention"][0]["path"] == "x/IM1.dcm"
    detail = client.get(f"/uploads/{upload['id']}").get_data(as_text=True)
    assert "Needs attention" in detail and "x/IM1.dcm" in detail
    report = client.get(f"/uploads/{upload['id']}/report.json")
    assert report.headers["Content-Disposition"].startswith("attachment")
    assert client.get("/uploads").status_code == 200
