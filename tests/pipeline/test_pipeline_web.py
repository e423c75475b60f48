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


def test_retry_button_requeues_failed_stages_audited_and_permission_checked(
    app: Flask, client: FlaskClient, world: World
) -> None:
    from sqlalchemy import select

    from repository.models import AuditEvent, Job, JobStatus, Project, Upload, UploadState

    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        project = s.scalar(select(Project).where(Project.slug == "alpha"))
        assert project is not None
        upload = Upload(project_id=project.id, source="web", state=UploadState.ATTENTION)
        s.add(upload)
        s.flush()
        job = Job(
            kind="pipeline.convert",
            payload={"upload_id": upload.id},
            status=JobStatus.FAILED,
            error="disk full",
            project_id=project.id,
        )
        s.add(job)
        s.flush()
        upload_id, job_id = upload.id, job.id
    dispatched: list[int] = []
    ext.dispatch = dispatched.append  # type: ignore[method-assign]
    # a researcher of the project may not retry (and does not even see the upload)
    login(client, world.emails["researcher"])
    token = _csrf_from_dashboard(client)
    assert client.post(f"/uploads/{upload_id}/retry", data={"csrf_token": token}).status_code == 404
    client.post("/logout", data={"csrf_token": token})
    login(client, world.emails["investigator"])
    page = client.get(f"/uploads/{upload_id}").get_data(as_text=True)
    form = re.search(r'<form[^>]*data-testid="retry-form"[^>]*>', page)
    assert form and " hidden" not in form.group(0)  # a failed stage: the button shows
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    assert client.post(f"/uploads/{upload_id}/retry").status_code == 400  # no CSRF token
    r = client.post(f"/uploads/{upload_id}/retry", data={"csrf_token": token.group(1)})
    assert r.status_code == 302 and r.headers["Location"].endswith(f"/uploads/{upload_id}")
    assert dispatched == [job_id]
    with ext.db.transaction() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == JobStatus.QUEUED and job.error == ""
        assert s.get(Upload, upload_id).state == UploadState.PROCESSING  # type: ignore[union-attr]
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "upload.retry")).all()
        assert len(events) == 1 and events[0].details["jobs"] == [job_id]
    page = client.get(f"/uploads/{upload_id}").get_data(as_text=True)
    form = re.search(r'<form[^>]*data-testid="retry-form"[^>]*>', page)
    assert form and " hidden" in form.group(0)  # nothing failed any more
