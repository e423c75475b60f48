"""The viewer in headless Chromium with software WebGL (SwiftShader): a researcher with a grant
walks from the project page to a visit, sees image, FF map and labels, hovers a muscle, clicks
the metrics table; the two-visit page renders both canvases and the FF change table."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from flask import Flask

from repository.services.viewer import LABEL_PALETTE
from tests.app_fixtures import PASSWORD, World
from tests.browser.conftest import screenshot
from tests.viewer.conftest import Cohort

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _pixels(page, selector: str = "[data-testid=viewer-canvas]", index: int = 0) -> np.ndarray:
    from PIL import Image

    png = page.locator(selector).nth(index).screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)


def _grey_detail(rgb: np.ndarray) -> int:
    """How many distinct grey levels (R = G = B, not black) the picture holds."""
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]) & (rgb[..., 0] > 8)
    return len(np.unique(rgb[grey][:, 0]))


def _grey_area(rgb: np.ndarray) -> int:
    """Pixels of the grey-scale image that are not dark."""
    grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2]) & (rgb[..., 0] > 40)
    return int(grey.sum())


def _palette_pixels(rgb: np.ndarray) -> int:
    """Pixels within a small distance of any label colour."""
    colours = np.asarray(list(LABEL_PALETTE.values()), dtype=np.int32)
    distance = np.abs(rgb[:, :, None, :] - colours[None, None, :, :]).sum(axis=3).min(axis=2)
    return int((distance < 30).sum())


def _eventually(page, script: str, timeout_s: float = 15.0) -> None:
    """Poll ``script`` (page.evaluate; wait_for_function needs eval, which the CSP forbids)."""
    import time

    deadline = time.monotonic() + timeout_s
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        page.wait_for_timeout(100)


def _wait_ready(page, count: int = 1) -> None:
    from playwright.sync_api import expect

    viewers = page.locator("[data-testid=viewer][data-state=ready]")
    expect(viewers).to_have_count(count, timeout=60_000)
    expect(page.locator("body[data-viewer-ready=true]")).to_have_count(1, timeout=60_000)
    page.wait_for_timeout(400)  # let NiiVue draw the last frame


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_grantee_sees_image_map_labels_and_muscle_names(
    webgl_browser: object, live_server: str, app: Flask, world: World, cohort: Cohort
) -> None:
    from playwright.sync_api import expect

    context = webgl_browser.new_context(viewport={"width": 1400, "height": 1000})  # type: ignore[attr-defined]
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"{e} {e.stack}"))
    page.goto(f"{live_server}/login")
    page.fill("#email", cohort.grantee)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server}/dashboard")
    # no dead ends: project page → subjects → subject (thumbnails) → viewer
    page.goto(f"{live_server}/projects/alpha")
    page.click("[data-testid=viewer-subjects-link]")
    page.click("[data-testid=subject-link]")
    thumbs = page.locator("img[data-testid=thumbnail]")
    expect(thumbs.first).to_be_visible()
    _eventually(page, "() => document.querySelector('img[data-testid=thumbnail]').naturalWidth > 0")
    page.locator("[data-testid=open-viewer]").first.click()
    page.wait_for_url(re.compile(r".*/visits/[^/]+/view$"))
    _wait_ready(page)
    state = page.evaluate(
        "() => ({visit: window.myovaultViewer.visitId, labels: window.myovaultViewer.labelsDerivativeId,"
        " names: Object.keys(window.myovaultViewer.labelNames).length,"
        " volumes: window.myovaultViewer.nv.volumes.length})"
    )
    assert state["labels"] in cohort.labels[cohort.visits[0]]
    assert state["names"] == 22 and state["volumes"] == 2

    # image alone (labels transparent), then with the labels
    page.locator("[data-testid=label-opacity]").fill("0")
    page.wait_for_timeout(300)
    image_only = _pixels(page)
    assert _grey_detail(image_only) > 20, "the image did not render"
    page.locator("[data-testid=label-opacity]").fill("100")
    page.wait_for_timeout(300)
    with_labels = _pixels(page)
    assert _palette_pixels(with_labels) > _palette_pixels(image_only) + 50, "no label overlay"
    screenshot(page, "viewer-image-labels")

    # window / level: a window above every voxel value turns the image black, Auto restores it
    page.locator("[data-testid=label-opacity]").fill("0")
    wmax = float(page.locator("[data-testid=wmax]").input_value())
    page.locator("[data-testid=wmin]").fill(str(wmax * 2))
    page.locator("[data-testid=wmax]").fill(str(wmax * 3))
    page.dispatch_event("[data-testid=wmax]", "change")
    page.wait_for_timeout(300)
    assert _grey_area(_pixels(page)) < _grey_area(image_only) / 5, "window/level had no effect"
    page.click("[data-role=wauto]")
    page.wait_for_timeout(300)
    assert _grey_area(_pixels(page)) > _grey_area(image_only) / 2

    # every echo of the multi-echo series: later echoes are darker (T2 decay)
    mese = page.locator("[data-testid=base-select] option", has_text="MESE").first.get_attribute(
        "value"
    )
    page.select_option("[data-testid=base-select]", value=mese)
    viewer = page.locator("[data-testid=viewer]")
    expect(viewer).to_have_attribute("data-base", mese, timeout=30_000)
    expect(page.locator("[data-testid=frame]")).to_be_enabled()
    page.wait_for_timeout(300)
    echo1 = page.evaluate("() => window.myovaultViewer.nv.volumes[0].getValue(8, 8, 1, 0)")
    page.locator("[data-testid=frame]").fill("3")
    page.dispatch_event("[data-testid=frame]", "change")
    page.wait_for_timeout(300)
    echo4 = page.evaluate("() => window.myovaultViewer.nv.volumes[0].getValue(8, 8, 1, 3)")
    assert page.evaluate("() => window.myovaultViewer.nv.volumes[0].nFrame4D") == 4
    assert echo4 < echo1
    page.locator("[data-testid=label-opacity]").fill("100")

    # the FF map as the image, with its colour bar in percent
    ff_option = page.locator("[data-testid=base-select] option", has_text="Fat fraction").first
    page.select_option("[data-testid=base-select]", value=ff_option.get_attribute("value"))
    expect(page.locator("[data-testid=viewer]")).to_have_attribute(
        "data-base", ff_option.get_attribute("value").replace("map:", "map:"), timeout=30_000
    )
    page.wait_for_timeout(400)
    ff_map = _pixels(page)
    coloured = (np.abs(ff_map[..., 0] - ff_map[..., 2]) > 40).sum()
    assert coloured > 200, "the FF map did not render in colour"
    assert not np.array_equal(ff_map, with_labels)
    expect(page.locator("[data-testid=colorbar-caption]")).to_contain_text("%")
    screenshot(page, "viewer-ff-map")

    # click a muscle in the table: it is highlighted and the crosshair moves onto it; then hover
    row = page.locator("[data-testid=metrics-table] tbody tr[data-label]").first
    label = int(row.get_attribute("data-label"))
    row.click()
    expect(page.locator("[data-testid=viewer]")).to_have_attribute("data-highlight", str(label))
    expect(row).to_have_class(re.compile("selected"))
    page.click("[data-testid=slice-axial]")
    page.wait_for_timeout(300)
    xy = page.evaluate(
        "() => { const nv = window.myovaultViewer.nv; const p = nv.frac2canvasPos(nv.scene.crosshairPos);"
        " const dpr = nv.uiData.dpr || 1; return [p[0] / dpr, p[1] / dpr]; }"
    )
    box = page.locator("[data-testid=viewer-canvas]").bounding_box()
    page.mouse.move(box["x"] + xy[0], box["y"] + xy[1])
    name = page.evaluate(f"() => window.myovaultViewer.labelNames[{label}]")
    expect(page.locator("[data-testid=hover-info]")).to_contain_text(name)
    expect(page.locator("[data-testid=hover-info]")).to_contain_text("%")  # value with its unit
    page.mouse.move(box["x"] + 3, box["y"] + 3)  # outside the image
    expect(page.locator("[data-testid=hover-info]")).not_to_contain_text(name)
    screenshot(page, "viewer-highlight")

    # the views switch without errors
    for view in ("coronal", "sagittal", "render", "multiplanar"):
        page.click(f"[data-testid=slice-{view}]")
        page.wait_for_timeout(200)
        assert (
            _grey_detail(_pixels(page))
            + (np.abs(_pixels(page)[..., 0] - _pixels(page)[..., 2]) > 40).sum()
            > 20
        )

    # viewer-B's contract: after a label save the overlay and the metrics follow the new version
    other = [i for i in cohort.labels[cohort.visits[0]] if i != state["labels"]][0]
    page.evaluate(
        "(id) => document.dispatchEvent(new CustomEvent('myovault:labels-saved',"
        " {detail: {labelsDerivativeId: id}}))",
        other,
    )
    viewer = page.locator("[data-testid=viewer]")
    expect(viewer).to_have_attribute("data-labels", str(other), timeout=30_000)
    expect(viewer).to_have_attribute("data-metrics-for", str(other), timeout=30_000)
    assert page.evaluate("() => window.myovaultViewer.labelsDerivativeId") == other
    expect(page.locator("[data-testid=metrics-table] tbody tr[data-label]").first).to_be_visible()

    # two visits side by side, synchronised, with the FF change table
    page.click("[data-testid=compare-link]")
    _wait_ready(page, count=2)
    for i in range(2):
        rgb = _pixels(page, index=i)
        assert _grey_detail(rgb) > 20, f"canvas {i} is blank"
    expect(page.locator("[data-testid=ff-change] tbody tr").first).to_be_visible()
    # the canvases are synchronised: a click in the first moves the crosshair of the second
    page.click("[data-sync-slice=axial]")
    page.wait_for_timeout(300)
    first = page.locator("[data-testid=viewer-canvas]").nth(0).bounding_box()
    page.mouse.click(first["x"] + first["width"] * 0.45, first["y"] + first["height"] * 0.4)
    page.wait_for_timeout(300)
    positions = page.evaluate(
        "() => window.myovaultCompare.map((nv) => Array.from(nv.scene.crosshairPos))"
    )
    assert positions[0] != [0.5, 0.5, 0.5] and np.allclose(positions[0], positions[1], atol=0.02)
    screenshot(page, "viewer-compare")
    assert not [p for p in problems if "Content Security Policy" in p or "Uncaught" in p], problems
    context.close()
