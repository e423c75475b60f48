"""Corrected-label upload through the REST API and the portal (CSRF, JSON errors, history page)."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from repository.models import CorrectedCase, Job
from tests.app_fixtures import World, api_token, csrf_token, login
from tests.labels.labels_helpers import (
    add_consent,
    base_labels,
    grant_access,
    make_segmented_visit,
    nifti_bytes,
)


def _edited() -> np.ndarray:
    labels = base_labels()
    labels[6:10, 0:5, 0] = 1
    return labels


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}


def test_api_upload_history_and_download(app: Flask, client: FlaskClient, world: World) -> None:
    seg = make_segmented_visit(app)
    token = api_token(app, world.emails["investigator"])
    url = f"/api/v1/labels/{seg.labels_id}/versions"
    r = client.post(url, data=nifti_bytes(_edited()), headers=_bearer(token))
    assert r.status_code == 201, r.get_json()
    body = r.get_json()
    assert body["version"] == 2 and body["previous_version_id"] == seg.labels_id
    assert body["voxels_changed"] == 20
    assert body["diff"]["right_semitendinosus"] == {"added": 0, "removed": 20}
    with app.extensions["myovault"].db.transaction() as s:
        assert s.get(Job, body["job_id"]).kind == "labels.recompute_metrics"
        assert s.scalar(select(CorrectedCase.labels_derivative_id)) == body["labels_derivative_id"]
    r = client.get(url, headers=_bearer(token))
    assert r.status_code == 200 and "no-store" in r.headers["Cache-Control"]
    history = r.get_json()
    assert history["current_id"] == body["labels_derivative_id"]
    assert [v["version"] for v in history["versions"]] == [1, 2]
    r = client.get(f"/api/v1/labels/{body['labels_derivative_id']}/image", headers=_bearer(token))
    assert r.status_code == 200 and "no-store" in r.headers["Cache-Control"]
    image = nib.Nifti1Image.from_bytes(gzip.decompress(r.data))
    assert np.array_equal(np.asanyarray(image.dataobj), _edited())
    # correcting the old version again is a conflict; an edit on another grid is refused
    r = client.post(url, data=nifti_bytes(_edited()), headers=_bearer(token))
    assert r.status_code == 409 and r.get_json()["error"] == "conflict"
    r = client.post(
        f"/api/v1/labels/{body['labels_derivative_id']}/versions",
        data=nifti_bytes(_edited()[:, :, :2]),
        headers=_bearer(token),
    )
    assert r.status_code == 422 and "shape" in r.get_json()["message"]
    r = client.post(
        f"/api/v1/labels/{body['labels_derivative_id']}/versions", data=b"", headers=_bearer(token)
    )
    assert r.status_code == 400


def test_api_refuses_users_without_the_edit_role(
    app: Flask, client: FlaskClient, world: World
) -> None:
    seg = make_segmented_visit(app)
    url = f"/api/v1/labels/{seg.labels_id}/versions"
    r = client.post(url, data=nifti_bytes(_edited()))
    assert r.status_code == 401 and r.get_json()["error"] == "unauthenticated"
    researcher = api_token(app, world.emails["researcher"])
    r = client.post(url, data=nifti_bytes(_edited()), headers=_bearer(researcher))
    assert r.status_code == 403 and r.get_json()["error"] == "forbidden"
    r = client.get(url, headers=_bearer(researcher))  # no grant: cannot even list versions
    assert r.status_code == 403
    r = client.get(f"/api/v1/labels/{seg.labels_id}/image", headers=_bearer(researcher))
    assert r.status_code == 403
    add_consent(app)
    grant_access(app, world.emails["dac"], world.emails["researcher"])
    r = client.get(url, headers=_bearer(researcher))
    assert r.status_code == 200
    r = client.post(url, data=nifti_bytes(_edited()), headers=_bearer(researcher))
    assert r.status_code == 403
    r = client.post(
        "/api/v1/labels/987654/versions", data=nifti_bytes(_edited()), headers=_bearer(researcher)
    )
    assert r.status_code == 404
    with app.extensions["myovault"].db.transaction() as s:
        assert s.scalar(select(CorrectedCase)) is None


def test_api_is_documented_in_openapi(client: FlaskClient) -> None:
    paths = client.get("/api/v1/openapi.json").get_json()["paths"]
    assert "post" in paths["/api/v1/labels/{derivative_id}/versions"]
    assert "get" in paths["/api/v1/labels/{derivative_id}/versions"]
    assert "get" in paths["/api/v1/labels/{derivative_id}/image"]


def test_portal_save_needs_csrf_and_the_edit_role(
    app: Flask, client: FlaskClient, world: World
) -> None:
    seg = make_segmented_visit(app)
    url = f"/labels/{seg.labels_id}/versions"
    r = client.post(url, data=nifti_bytes(_edited()))
    assert r.status_code == 400  # anonymous: no session, no CSRF token
    assert client.get(url).status_code == 302  # and the history page asks to log in
    login(client, world.emails["investigator"])
    token = csrf_token(client, url)  # the history page carries the upload form
    r = client.post(url, data=nifti_bytes(_edited(), gz=False))  # no CSRF header
    assert r.status_code == 400
    r = client.post(
        url,
        data=nifti_bytes(_edited(), gz=False),
        headers={"X-CSRFToken": token, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.get_json()
    saved = r.get_json()
    assert saved["version"] == 2 and saved["voxelsChanged"] == 20
    # the same request again: the version is no longer current -> JSON 409 for edit.js
    r = client.post(
        url,
        data=nifti_bytes(_edited()),
        headers={"X-CSRFToken": token, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 409 and r.get_json()["error"] == "conflict"
    page = client.get(f"/labels/{saved['labelsDerivativeId']}/versions")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and "no-store" in page.headers["Cache-Control"]
    assert 'data-version="2"' in html and 'data-version="1"' in html
    assert 'data-muscle="right_semitendinosus"' in html and "−20" in html
    listing = client.get(f"/labels/{seg.labels_id}/versions.json").get_json()
    assert [v["version"] for v in listing["versions"]] == [1, 2]
    image = client.get(f"/labels/{seg.labels_id}.nii.gz")
    assert image.status_code == 200 and "no-store" in image.headers["Cache-Control"]
    assert np.array_equal(
        np.asanyarray(nib.Nifti1Image.from_bytes(gzip.decompress(image.data)).dataobj),
        base_labels(),
    )


def test_portal_upload_form_and_refusals(app: Flask, client: FlaskClient, world: World) -> None:
    seg = make_segmented_visit(app)
    login(client, world.emails["owner"])
    url = f"/labels/{seg.labels_id}/versions"
    token = csrf_token(client, url)
    r = client.post(
        url,
        data={
            "csrf_token": token,
            "comment": "semitendinosus leaked into biceps",
            "labels": (io.BytesIO(nifti_bytes(_edited())), "fixed.nii.gz"),
        },
        content_type="multipart/form-data",
    )
    assert r.status_code == 302, r.get_data(as_text=True)[:500]
    page = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "Saved version 2" in page and "(current)" in page
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    login(client, world.emails["researcher"])
    r = client.get(url)
    assert r.status_code == 403
    token = csrf_token(client, "/")
    r = client.post(
        url,
        data=nifti_bytes(_edited()),
        headers={"X-CSRFToken": token, "Content-Type": "application/octet-stream"},
    )
    assert r.status_code == 403 and r.get_json()["error"] == "forbidden"
    add_consent(app)
    grant_access(app, world.emails["dac"], world.emails["researcher"])
    r = client.get(url)
    assert r.status_code == 200 and "labels-upload-form" not in r.get_data(as_text=True)


def test_viewer_page_shows_the_edit_panel_to_editors_only(
    app: Flask, client: FlaskClient, world: World
) -> None:
    seg = make_segmented_visit(app)
    page = "/projects/alpha/subjects/sub-lbl01/visits/1/view"
    login(client, world.emails["investigator"])
    html = client.get(page).get_data(as_text=True)
    assert 'data-testid="edit-panel"' in html and "viewer/edit.js" in html
    assert f'href="/labels/{seg.labels_id}/versions"' in html  # version history link
    client.post("/logout", data={"csrf_token": csrf_token(client, "/")})
    add_consent(app)
    grant_access(app, world.emails["dac"], world.emails["researcher"])
    login(client, world.emails["researcher"])
    r = client.get(page)
    assert r.status_code == 200
    assert 'data-testid="edit-panel"' not in r.get_data(as_text=True)
