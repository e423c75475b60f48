"""The issue's "done when" journey in headless Chromium: a researcher finds the cohort and
requests access, the committee votes, the researcher downloads, a participant withdraws (the
next search and a new snapshot exclude them), erasure makes their objects unreadable, and the
audit log shows all of it and verifies."""

from __future__ import annotations

import zipfile

import pytest
from sqlalchemy import select

from repository.models import AuditEvent, CohortSnapshot, StoredObject, Subject
from repository.services import audit
from repository.storage.errors import StorageError
from tests.app_fixtures import PASSWORD
from tests.browser.conftest import browser, chromium_path, live_server, screenshot  # noqa: F401
from tests.consent.consent_helpers import add_subject, give_consent

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _login(browser, base, email):  # noqa: F811
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    page.goto(f"{base}/login")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/dashboard")
    return context, page


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_request_vote_download_withdraw_erase(app, browser, live_server, world, tmp_path):  # noqa: F811
    ext = app.extensions["myovault"]
    for name in ("S1", "S2", "S3"):
        add_subject(
            app,
            "alpha",
            name,
            image=b"nifti" * 80 + name.encode(),
            t2map=b"t2" * 80 + name.encode(),
        )
        give_consent(app, world.emails["investigator"], "alpha", name, "HMB")
    base = live_server

    # the researcher finds the cohort and requests access
    ctx_r, page = _login(browser, base, world.emails["researcher"])
    page.goto(f"{base}/search?project=alpha")
    assert page.locator("[data-testid=project-count-alpha]").inner_text() == "<5"
    page.click("[data-testid=nav-access]")
    page.click("[data-testid=request-alpha]")
    page.fill("#r-purpose", "Quantitative MRI of thigh muscles as an outcome in FSHD trials.")
    page.select_option("#r-use", "HMB")
    page.fill("#r-inst", "University of Example")
    page.check("input[name=data][value=images]")
    page.click("[data-testid=preview-button]")
    assert page.locator("[data-testid=preview-matched]").inner_text() == "<5"
    page.click("[data-testid=submit-request]")
    page.wait_for_url(f"{base}/requests/*")
    request_url = page.url
    screenshot(page, "consent-request")

    # the committee votes and decides
    ctx_d, dac = _login(browser, base, world.emails["dac"])
    dac.goto(request_url)
    dac.select_option("select[name=vote]", "approve")
    dac.click("[data-testid=vote]")
    dac.fill("#d-reason", "Use is covered by every included consent.")
    dac.click("[data-testid=decide]")
    assert "approved" in dac.locator("[data-testid=request-status]").inner_text()
    ctx_d.close()

    # the researcher accepts the agreement and downloads the package
    page.goto(request_url)
    page.click("[data-testid=grant-link]")
    page.check("[data-testid=agree]")
    page.click("[data-testid=accept]")
    assert page.locator("[data-testid=grant-state]").inner_text() == "active"
    with page.expect_download() as info:
        page.click("[data-testid=download]")
    path = tmp_path / "package.zip"
    info.value.save_as(path)
    names = zipfile.ZipFile(path).namelist()
    assert any(n.endswith("/bagit.txt") for n in names)
    assert any("sub-S1_ses-01_mese.nii.gz" in n for n in names)
    page.goto(f"{base}/search?project=alpha")
    assert "S1" in page.locator("[data-testid=subject-results]").inner_text()

    # the participant withdraws (recorded by the site investigator)
    ctx_i, inv = _login(browser, base, world.emails["investigator"])
    inv.goto(f"{base}/projects/alpha/subjects/S1/consent")
    inv.click("[data-testid=withdraw]")
    assert inv.locator("[data-testid=subject-status]").inner_text() == "withdrawn"
    ctx_i.close()
    page.goto(f"{base}/search?project=alpha")
    results = page.locator("[data-testid=subject-results]").inner_text()
    assert "S1" not in results and "S2" in results
    page.fill("[data-testid=freeze-title]", "Thigh cohort")
    page.click("[data-testid=freeze-submit]")
    page.wait_for_load_state()
    with ext.db.transaction() as session:
        s1 = session.scalar(select(Subject).where(Subject.pseudonym == "S1"))
        snapshot = session.scalars(
            select(CohortSnapshot).order_by(CohortSnapshot.id.desc())
        ).first()
        assert snapshot is not None and s1.id not in snapshot.subject_ids and snapshot.subject_ids
        keys = list(
            session.scalars(select(StoredObject.key).where(StoredObject.subject_id == s1.id))
        )
    ctx_r.close()

    # erasure by the owner makes the objects unreadable
    ctx_o, owner = _login(browser, base, world.emails["owner"])
    owner.goto(f"{base}/projects/alpha/subjects/S1/consent")
    owner.fill("#e-reason", "Participant asked for erasure (Art. 17)")
    owner.fill("#e-confirm", "S1")
    owner.click("[data-testid=erase]")
    assert owner.locator("[data-testid=subject-status]").inner_text() == "erased"
    ctx_o.close()
    for key in keys:
        with pytest.raises(StorageError):
            ext.store.read_bytes(key)

    # the audit log shows all of it and verifies
    ctx_a, admin = _login(browser, base, world.emails["admin"])
    admin.goto(f"{base}/admin/audit")
    text = admin.content()
    for action in (
        "access.request",
        "access.vote",
        "access.decide",
        "download",
        "consent.withdraw",
        "subject.erase",
    ):
        assert action in text, action
    screenshot(admin, "consent-audit")
    ctx_a.close()
    with ext.db.transaction() as session:
        assert audit.verify_chain(session).ok
        assert (
            session.scalar(select(AuditEvent).where(AuditEvent.action == "subject.erase")).details[
                "pseudonym"
            ]
            == "S1"
        )
