"""Label correction in headless Chromium (software WebGL): an investigator paints a muscle on the
viewer page, saves, and the metrics table shows the recomputed volume of the new version."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from sqlalchemy import select

from repository.models import CorrectedCase, Derivative, MuscleMetric
from repository.services import jobs
from tests.app_fixtures import PASSWORD, World
from tests.browser.conftest import screenshot
from tests.labels.labels_helpers import make_segmented_visit

pytestmark = [pytest.mark.browser, pytest.mark.slow]
ROW = "[data-testid=metrics-table] tr[data-label='1']"  # right biceps femoris long head


def _volume_cell(page) -> float:
    text = page.locator(ROW).locator("td").nth(1).inner_text().strip()
    return float(text)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_investigator_paints_a_muscle_saves_and_the_metrics_change(
    app: Flask,
    world: World,
    live_server: str,  # noqa: F811
    webgl_browser,
) -> None:
    from playwright.sync_api import expect

    seg = make_segmented_visit(app)
    ext = app.extensions["myovault"]
    # the worker: run each queued job as soon as it is dispatched (after the request commits)
    ext.set_dispatcher(lambda job_id: jobs.run(ext.db, job_id, ext.services()))
    page = webgl_browser.new_page(viewport={"width": 1400, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"{exc}\n{exc.stack}"))
    page.goto(f"{live_server}/login")
    page.fill("input[name=email]", world.emails["investigator"])
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.goto(f"{live_server}/projects/alpha/subjects/sub-lbl01/visits/1/view")
    expect(page.locator("body[data-viewer-ready=true]")).to_have_count(1, timeout=60_000)
    panel = page.locator("[data-testid=edit-panel]")
    expect(panel).to_have_attribute("data-state", "ready", timeout=10_000)
    before = _volume_cell(page)  # what the pipeline indexed for version 1
    page.click("[data-testid=slice-axial]")
    page.click("[data-testid=edit-start]")
    expect(panel).to_have_attribute("data-state", "editing", timeout=10_000)
    page.select_option("[data-testid=edit-muscle]", "1")
    page.click("[data-testid=tool-paint]")
    page.fill("[data-testid=edit-pen-size]", "3")
    page.dispatch_event("[data-testid=edit-pen-size]", "change")
    count = "() => window.myovaultViewer.nv.drawBitmap.filter((v) => v === 1).length"
    assert page.evaluate(count) == 80  # the drawing starts as a copy of version 1

    def stroke(height: float = 0.5) -> None:  # across the slice (buttons may scroll the page)
        canvas = page.locator("[data-testid=viewer-canvas]")
        canvas.scroll_into_view_if_needed()
        box = canvas.bounding_box()
        assert box is not None
        y = box["y"] + box["height"] * height
        page.mouse.move(box["x"] + box["width"] * 0.2, y)
        page.mouse.down()
        for i in range(1, 31):
            page.mouse.move(box["x"] + box["width"] * (0.2 + 0.6 * i / 30), y)
        page.mouse.up()

    stroke()
    assert page.evaluate(count) > 80
    page.click("[data-testid=edit-undo]")
    assert page.evaluate(count) == 80
    stroke()
    painted = page.evaluate(count)
    assert painted > 80, painted
    labelled = "() => window.myovaultViewer.nv.drawBitmap.filter((v) => v > 0).length"
    before_erase = page.evaluate(labelled)
    page.click("[data-testid=tool-erase]")
    stroke(0.3)
    assert page.evaluate(labelled) < before_erase  # the eraser paints background
    page.click("[data-testid=edit-undo]")
    assert page.evaluate(labelled) == before_erase
    page.click("[data-testid=tool-paint]")
    assert page.locator("[data-testid=base-select]").is_disabled()  # locked while editing
    screenshot(page, "labels-painted")
    page.click("[data-testid=edit-save]")
    expect(panel).to_have_attribute("data-state", "saved", timeout=60_000)
    expect(page.locator("[data-testid=edit-status]")).to_contain_text("metrics are updated")
    new_id = int(panel.get_attribute("data-saved-id"))
    assert new_id != seg.labels_id
    # the viewer reloaded the overlay and the table: the volume is the new version's
    expect(page.locator(ROW).locator("td").nth(1)).not_to_have_text(
        re.compile(rf"^\s*{before:.1f}\s*$"), timeout=30_000
    )
    after = _volume_cell(page)
    screenshot(page, "labels-after-save")
    with ext.db.transaction() as s:
        new = s.get(Derivative, new_id)
        assert new is not None and new.version == 2
        assert new.parameters["diff"]["right_biceps_femoris_long_head"]["added"] > 0
        volume = s.scalar(
            select(MuscleMetric.value).where(
                MuscleMetric.derivative_id == new_id,
                MuscleMetric.muscle == "biceps_femoris_long_head",
                MuscleMetric.side == "R",
                MuscleMetric.metric == "volume_ml",
            )
        )
        assert volume is not None and volume > 80 * 0.02
        assert after == pytest.approx(volume, abs=0.05)
        assert s.scalar(select(CorrectedCase.labels_derivative_id)) == new_id
        assert not s.scalars(
            select(MuscleMetric).where(MuscleMetric.derivative_id == seg.labels_id)
        ).all()
    diff_items = page.locator("[data-testid=edit-diff] li")
    expect(diff_items.first).to_be_visible()
    # errors of the label editor itself (the viewer page's own code is tested by viewer tests)
    assert not [e for e in errors if "edit.js" in e], errors
