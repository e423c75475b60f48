"""A researcher builds a per-muscle query, sees suppressed counts and the heat map, freezes it."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from repository.models import Project, User
from repository.services import metadata
from repository.services.context import Actor
from tests.app_fixtures import PASSWORD
from tests.browser.conftest import screenshot
from tests.search.search_data import populate

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_researcher_searches_sees_suppression_and_heatmap_and_freezes(
    browser, live_server, app, world
):
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        populate(session, world.projects["alpha"], 14, seed=11)
        owner = Actor(user=session.scalar(select(User).where(User.email == world.emails["owner"])))
        metadata.update_metadata(
            session,
            owner,
            session.get(Project, world.projects["alpha"]),
            {
                "title": "FSHD thigh cohort",
                "description": "Facioscapulohumeral dystrophy, thigh MRI",
                "licence": "CC-BY-NC-4.0",
            },
        )
    context = browser.new_context()
    page = context.new_page()
    # a public visitor finds the project and its landing page
    page.goto(f"{live_server}/search?q=dystrophy")
    page.click("text=FSHD thigh cohort")
    assert page.locator("[data-testid=landing-title]").inner_text() == "FSHD thigh cohort"
    assert page.locator("[data-testid=heatmap]").count() == 1
    # the researcher logs in and builds a query with two per-muscle conditions
    page.goto(f"{live_server}/login")
    page.fill("#email", world.emails["researcher"])
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/dashboard")
    page.click("[data-testid=nav-search]")
    rows = page.locator(".mc-row")
    rows.nth(0).locator("select[name=mc_muscle]").select_option("semimembranosus")
    rows.nth(0).locator("input[name=mc_min]").fill("20")
    page.click("[data-testid=mc-add]")
    assert page.locator(".mc-row").count() == 2
    rows.nth(1).locator("select[name=mc_muscle]").select_option("rectus_femoris")
    rows.nth(1).locator("input[name=mc_max]").fill("55")
    page.click("[data-testid=search-submit]")
    page.wait_for_selector("[data-testid=suppression-note]")
    assert "mc_muscle=semimembranosus" in page.url
    total = page.locator("[data-testid=total]").inner_text()
    assert total == "<5" or int(total) % 5 == 0
    assert page.locator("[data-testid=heatmap] rect").count() == 22
    # facet counts under 5 are shown as "<5" (two LGMD-free facets: vendor Philips is small)
    counts = page.locator(".facet .count").all_inner_texts()
    assert counts and all(c == "<5" or int(c) % 5 == 0 for c in counts)
    screenshot(page, "search-results")
    page.fill("[data-testid=freeze-title]", "SM involved, RF spared")
    page.click("[data-testid=freeze-submit]")
    page.wait_for_selector("[data-testid=snapshot-pid]")
    pid = page.locator("[data-testid=snapshot-pid]").inner_text()
    assert pid.startswith("myovault:")
    assert "SM involved, RF spared (v1)" in page.locator("[data-testid=landing-title]").inner_text()
    assert page.locator("[data-testid=how-to-access]").count() == 1
    screenshot(page, "snapshot-landing")
    # … and requests access to exactly that snapshot (the DAC workflow is issue 7's)
    snapshot_id = page.locator("[data-testid=snapshot-id]").inner_text()
    page.click("[data-testid=request-access]")
    page.fill("#r-snapshot", snapshot_id)
    page.fill("#r-purpose", "Natural history of semimembranosus involvement in FSHD")
    page.fill("#r-inst", "Example University")
    page.click("[data-testid=submit-request]")
    page.wait_for_selector(".flash-success")
    assert "sent to the data-access committee" in page.locator(".flash-success").inner_text()
    context.close()
