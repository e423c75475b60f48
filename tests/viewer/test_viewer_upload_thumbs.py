"""Quick looks on the upload page: the visits an upload produced, with thumbnails, for users who
may see the images — and nothing for the others."""

from __future__ import annotations

from flask import Flask
from sqlalchemy import select

from repository.models import Upload
from repository.services import uploads
from tests.app_fixtures import World, login
from tests.consent.consent_helpers import user
from tests.viewer.conftest import Cohort


def test_upload_page_lists_its_visits_with_thumbnails(
    app: Flask, world: World, cohort: Cohort
) -> None:
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        upload = session.scalars(select(Upload)).one()
        upload_id = upload.id
        seen = uploads.upload_visits(session, user(session, world.emails["investigator"]), upload)
        assert [(v["pseudonym"], v["label"]) for v in seen] == [
            (cohort.pseudonym, label) for label in cohort.visits
        ]
        assert all(v["thumbnail"] for v in seen)
        assert uploads.upload_visits(session, user(session, world.emails["dac"]), upload) == []
    client = app.test_client()
    login(client, world.emails["investigator"])
    page = client.get(f"/uploads/{upload_id}").get_data(as_text=True)
    assert 'data-testid="upload-visits"' in page and 'data-testid="thumbnail"' in page
    thumb = f"/projects/alpha/subjects/{cohort.pseudonym}/visits/{cohort.visits[0]}/thumbnail.png"
    assert thumb in page
    response = client.get(thumb)
    assert response.status_code == 200 and response.data.startswith(b"\x89PNG")


def test_search_results_show_quick_looks_only_where_images_may_be_seen(
    app: Flask, world: World, cohort: Cohort
) -> None:
    subject_url = f"/projects/alpha/subjects/{cohort.pseudonym}"
    client = app.test_client()
    login(client, world.emails["investigator"])
    page = client.get("/search").get_data(as_text=True)
    assert cohort.pseudonym in page
    assert f'href="{subject_url}"' in page and f"{subject_url}/visits/" in page
    client = app.test_client()
    login(client, cohort.metrics_grantee)  # a grant without images: the row, no picture
    page = client.get("/search").get_data(as_text=True)
    assert cohort.pseudonym in page and 'data-testid="thumbnail"' not in page
