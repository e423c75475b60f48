"""An investigator uploads the real Siemens MESE sample folder in headless Chromium and watches
the upload go through quarantine, de-identification and ORMIR-MIDS conversion."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
from flask import Flask

from repository.services.pipeline import run_local
from tests.app_fixtures import PASSWORD, World
from tests.browser.conftest import screenshot

pytestmark = [pytest.mark.browser, pytest.mark.realdata, pytest.mark.slow]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_investigator_uploads_real_folder_and_watches_progress(
    browser: object, live_server: str, world: World, app: Flask, shared_data: Path
) -> None:
    files = sorted(str(p) for p in (shared_data / "real" / "siemens_mese_thigh").glob("*.dcm"))
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", world.emails["investigator"])
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/dashboard")
    page.click("[data-testid=upload-link-alpha]")
    page.wait_for_url(f"{live_server}/projects/alpha/upload")
    page.set_input_files("#pick-files", files)
    assert f"{len(files)} files" in page.locator("[data-testid=overall-text]").inner_text()
    page.click("[data-testid=start-upload]")
    page.wait_for_url(re.compile(r".*/uploads/\d+$"), timeout=120_000)
    upload_id = int(page.url.rsplit("/", 1)[1])
    screenshot(page, "upload-processing")
    # the test app captures job dispatch: run the pipeline as the worker would, meanwhile the
    # page polls the status
    worker = threading.Thread(
        target=lambda: _run(app, upload_id), name="pipeline-worker", daemon=True
    )
    worker.start()
    from playwright.sync_api import expect

    # CSP forbids eval, so wait with a locator assertion rather than wait_for_function
    expect(page.locator("[data-testid=upload-state]")).to_have_text("done", timeout=240_000)
    worker.join(timeout=10)
    expect(page.locator("#file-rows")).not_to_contain_text("received")  # per-file states live
    counts = page.locator("[data-testid=upload-counts]").inner_text()
    assert f"converted: {len(files)}" in counts
    assert "pipeline.convert: done" in page.locator("[data-testid=upload-jobs]").inner_text()
    assert "Nothing needs attention" in page.locator("[data-testid=needs-attention]").inner_text()
    screenshot(page, "upload-done")
    assert list(app.extensions["myovault"].store.iter_keys("quarantine/")) == []
    mids = list(app.extensions["myovault"].store.iter_keys("mids/"))
    assert any(k.endswith("_MESE.nii.gz") for k in mids)
    context.close()


def _run(app: Flask, upload_id: int) -> None:
    with app.app_context():
        run_local(app.extensions["myovault"], upload_id)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_interrupted_upload_resumes_after_reload_without_choosing_files(
    browser: object, live_server: str, world: World, app: Flask, shared_data: Path
) -> None:
    """The connection drops mid-upload and the page is reloaded: the browser kept the File
    objects in IndexedDB, offers Resume, and sends only what the server does not have."""
    from playwright.sync_api import expect
    from sqlalchemy import select

    from repository.models import FileState, Upload, UploadFile

    files = sorted(str(p) for p in (shared_data / "real" / "siemens_mese_thigh").glob("*.dcm"))
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", world.emails["investigator"])
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/dashboard")
    page.goto(f"{live_server}/projects/alpha/upload")
    expect(page.locator("[data-testid=resume-box]")).to_be_hidden()
    sent: list[str] = []
    cut_after = 40

    def network(route: object) -> None:
        if len(sent) >= cut_after:
            route.abort()  # type: ignore[attr-defined]  # the connection drops
            return
        sent.append(route.request.url)  # type: ignore[attr-defined]
        route.continue_()  # type: ignore[attr-defined]

    page.route("**/chunk", network)
    page.set_input_files("#pick-files", files)
    page.click("[data-testid=start-upload]")
    expect(page.locator("#upload-error")).to_be_visible(timeout=60_000)
    page.unroute("**/chunk")
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        (upload,) = s.scalars(select(Upload)).all()
        upload_id = upload.id
        states = [f.state for f in s.scalars(select(UploadFile))]
    assert states.count(FileState.RECEIVED) == cut_after
    assert states.count(FileState.UPLOADING) == len(files) - cut_after
    # the laptop lid closes; later the page is opened again: no file chooser is touched
    resent: list[str] = []
    page.on(
        "request",
        lambda request: resent.append(request.url) if request.url.endswith("/chunk") else None,
    )
    page.reload()
    expect(page.locator("[data-testid=resume-box]")).to_be_visible(timeout=10_000)
    assert f"Upload {upload_id} ({len(files)} files)" in page.locator("#resume-text").inner_text()
    screenshot(page, "upload-resume-offered")
    page.click("[data-testid=resume-upload]")
    page.wait_for_url(re.compile(rf".*/uploads/{upload_id}$"), timeout=120_000)
    assert len(resent) == len(files) - cut_after  # only what the server did not have
    with ext.db.transaction() as s:
        upload = s.get(Upload, upload_id)
        assert upload is not None and upload.state.value != "open"  # completed
        states = [f.state for f in s.scalars(select(UploadFile))]
    assert FileState.UPLOADING not in states and len(states) == len(files)
    # the finished upload is forgotten: no Resume offered any more
    page.goto(f"{live_server}/projects/alpha/upload")
    page.wait_for_timeout(500)
    expect(page.locator("[data-testid=resume-box]")).to_be_hidden()
    context.close()
