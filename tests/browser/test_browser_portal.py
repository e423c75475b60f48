"""Each role logs in through a real browser and sees its own dashboard."""

from __future__ import annotations

import pytest

from tests.app_fixtures import PASSWORD
from tests.browser.conftest import screenshot

pytestmark = pytest.mark.browser

SECTIONS = {
    "admin": ["dash-admin", "dash-researcher"],
    "owner": ["dash-owner", "dash-researcher"],
    "investigator": ["dash-investigator", "dash-researcher"],
    "dac": ["dash-dac", "dash-researcher"],
    "researcher": ["dash-researcher"],
}
ALL_SECTIONS = {s for v in SECTIONS.values() for s in v}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_role_logs_in_and_sees_its_dashboard(browser, live_server, world):
    for role, expected in SECTIONS.items():
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{live_server}/")
        page.click("[data-testid=login-link]")
        page.fill("#email", world.emails[role])
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_url(f"{live_server}/dashboard")
        assert page.locator("h1").inner_text() == "Dashboard"
        for section in ALL_SECTIONS:
            visible = page.locator(f"[data-testid={section}]").count() == 1
            assert visible == (section in expected), (role, section)
        screenshot(page, f"dashboard-{role}")
        page.click("[data-testid=logout]")
        page.wait_for_url(f"{live_server}/")
        assert page.locator("[data-testid=login-link]").count() == 1
        context.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_wrong_password_shows_an_error_and_admin_creates_a_project(browser, live_server, world):
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{live_server}/login")
    page.fill("#email", world.emails["admin"])
    page.fill("#password", "definitely wrong")
    page.click("button[type=submit]")
    assert "wrong email or password" in page.locator(".flash-error").inner_text()
    page.fill("#email", world.emails["admin"])
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/dashboard")
    page.goto(f"{live_server}/admin/projects")
    page.fill("#np-slug", "fshd-cohort")
    page.fill("#np-title", "FSHD natural history")
    page.click("text=Create project")
    page.wait_for_url(f"{live_server}/projects/fshd-cohort")
    assert "FSHD natural history" in page.locator("h1").inner_text()
    page.fill("input[name=email]", world.emails["researcher"])
    page.select_option("select[name=role]", "dac_member")
    page.click("text=Add member")
    assert "Member added." in page.locator(".flash-success").inner_text()
    screenshot(page, "admin-project")
    page.goto(f"{live_server}/admin/audit?verify=1")
    assert page.locator("[data-testid=audit-ok]").count() == 1
    context.close()
