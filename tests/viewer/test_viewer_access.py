"""Viewer pages and every image / thumbnail endpoint, per role, on SQLite and PostgreSQL."""

from __future__ import annotations

import gzip
import io
import re

import numpy as np
from flask import Flask
from PIL import Image
from sqlalchemy import func, select

from repository.models import AuditEvent, Grant, MuscleMetric, Subject, Visit
from repository.models._types import utcnow
from tests.app_fixtures import World, login
from tests.viewer.conftest import Cohort

ALLOWED = ("owner", "investigator", "grantee")
DENIED = ("researcher", "dac", "admin", "other_owner")


def _base(c: Cohort, visit: str) -> str:
    return f"/projects/alpha/subjects/{c.pseudonym}/visits/{visit}"


def _pages(c: Cohort) -> list[str]:
    first = c.visits[0]
    return [
        "/projects/alpha/subjects",
        f"/projects/alpha/subjects/{c.pseudonym}",
        f"{_base(c, first)}/view",
        f"{_base(c, first)}/metrics.json",
        f"/projects/alpha/subjects/{c.pseudonym}/compare",
    ]


def _objects(c: Cohort) -> dict[str, list[str]]:
    """Every byte endpoint of both visits, by the data kind a grant must list."""
    out: dict[str, list[str]] = {"images": [], "maps": []}
    for visit in c.visits:
        base = _base(c, visit)
        out["images"] += [f"{base}/series/{i}.nii.gz" for i in c.series[visit]]
        out["images"] += [f"{base}/thumbnails/{i}.png" for i in c.thumbnails[visit]]
        out["images"].append(f"{base}/thumbnail.png")
        out["maps"] += [f"{base}/derivatives/{i}.nii.gz" for i in c.maps[visit] + c.labels[visit]]
    return out


def _check_body(url: str, body: bytes) -> None:
    if url.endswith(".png"):
        assert body.startswith(b"\x89PNG\r\n\x1a\n"), url
    else:
        header = gzip.decompress(body)[:348]
        assert int.from_bytes(header[:4], "little") == 348, url  # a NIfTI-1 header


def test_every_endpoint_answers_by_role(app: Flask, world: World, cohort: Cohort) -> None:
    objects = _objects(cohort)
    all_objects = objects["images"] + objects["maps"]
    assert all(cohort.thumbnails[v] for v in cohort.visits)  # the pipeline made thumbnails
    assert len(all_objects) >= 20
    ext = app.extensions["myovault"]

    anonymous = app.test_client()
    for url in _pages(cohort) + all_objects:
        response = anonymous.get(url)
        assert response.status_code == 302 and "/login" in response.location, url

    for who in DENIED:
        client = app.test_client()
        login(client, world.emails[who])
        for url in _pages(cohort) + all_objects:
            response = client.get(url)
            assert response.status_code == 403, (who, url, response.status_code)
            assert b"\x1f\x8b" not in response.data[:2] and b"PNG" not in response.data[:8]

    for who in ALLOWED:
        client = app.test_client()
        login(client, cohort.grantee if who == "grantee" else world.emails[who])
        with ext.db.transaction() as s:
            before = s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "viewer.stream")
            )
        for url in _pages(cohort):
            response = client.get(url)
            assert response.status_code == 200, (who, url)
            assert "no-store" in response.headers["Cache-Control"]
        for url in all_objects:
            response = client.get(url)
            assert response.status_code == 200, (who, url, response.status_code)
            cache = response.headers["Cache-Control"]
            assert "no-store" in cache and "private" in cache, url
            _check_body(url, response.data)
        with ext.db.transaction() as s:
            after = s.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.action == "viewer.stream")
            )
        assert after - before == len(all_objects)  # every byte request is audited

    # a grant listing only metrics: the table yes, pixels no
    client = app.test_client()
    login(client, cohort.metrics_grantee)
    assert client.get(f"{_base(cohort, cohort.visits[0])}/view").status_code == 200
    assert client.get(f"{_base(cohort, cohort.visits[0])}/metrics.json").status_code == 200
    for url in all_objects:
        assert client.get(url).status_code == 403, url

    # ids cannot be walked across visits, kinds or projects
    client = app.test_client()
    login(client, world.emails["owner"])
    first, second = cohort.visits
    assert (
        client.get(f"{_base(cohort, first)}/series/{cohort.series[second][0]}.nii.gz").status_code
        == 404
    )
    assert (
        client.get(
            f"{_base(cohort, first)}/derivatives/{cohort.maps[second][0]}.nii.gz"
        ).status_code
        == 404
    )
    thumb = cohort.thumbnails[first][0]
    assert client.get(f"{_base(cohort, first)}/derivatives/{thumb}.nii.gz").status_code == 404
    label = cohort.labels[first][0]
    assert client.get(f"{_base(cohort, first)}/thumbnails/{label}.png").status_code == 404
    assert client.get(f"/projects/alpha/subjects/SUB-NOPE/visits/{first}/view").status_code == 404
    assert client.get(f"/projects/beta/subjects/{cohort.pseudonym}").status_code == 404
    assert client.get("/projects/beta/subjects").status_code == 404

    # a revoked grant closes every door at once; an erased subject is gone for everyone
    grantee = app.test_client()
    login(grantee, cohort.grantee)
    series_url = f"{_base(cohort, first)}/series/{cohort.series[first][0]}.nii.gz"
    assert grantee.get(series_url).status_code == 200
    with ext.db.transaction() as s:
        for grant in s.scalars(select(Grant)):
            grant.revoked_at = utcnow()
    assert grantee.get(series_url).status_code == 403  # no active grant left on the project
    assert grantee.get(f"{_base(cohort, first)}/view").status_code == 403
    with ext.db.transaction() as s:
        s.scalars(select(Subject)).one().erased_at = utcnow()
    assert client.get(series_url).status_code == 404
    assert client.get(f"/projects/alpha/subjects/{cohort.pseudonym}").status_code == 404
    assert cohort.pseudonym not in client.get("/projects/alpha/subjects").get_data(as_text=True)


def test_pages_show_metrics_thumbnails_links_and_ff_change(
    app: Flask, world: World, cohort: Cohort
) -> None:
    client = app.test_client()
    login(client, world.emails["researcher"])
    assert "viewer-subjects-link" not in client.get("/projects/alpha").get_data(as_text=True)
    client = app.test_client()
    login(client, cohort.grantee)
    project = client.get("/projects/alpha").get_data(as_text=True)
    assert 'data-testid="viewer-subjects-link"' in project
    listing = client.get("/projects/alpha/subjects").get_data(as_text=True)
    assert cohort.pseudonym in listing and listing.count('data-testid="visit-link"') == 2
    subject = client.get(f"/projects/alpha/subjects/{cohort.pseudonym}").get_data(as_text=True)
    assert subject.count('data-testid="thumbnail"') >= 2 and "compare-link" in subject
    first, second = cohort.visits
    png = client.get(f"{_base(cohort, first)}/thumbnail.png").data
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int32)
    assert rgb.shape[0] >= 96 and rgb.std() > 10  # an image, not a blank square
    assert (np.abs(rgb[..., 0] - rgb[..., 2]) > 30).sum() > 0  # with coloured labels
    page = client.get(f"{_base(cohort, first)}/view").get_data(as_text=True)
    assert "<script>" not in page and 'type="module"' in page  # CSP: no inline script
    assert 'data-testid="metrics-table"' in page and "<polyline" in page
    assert 'data-testid="qc-flags"' in page
    assert page.count('<tr data-label="') >= 2
    assert "_edit_panel" not in page  # grantees may not edit labels
    metrics = client.get(f"{_base(cohort, first)}/metrics.json").get_json()
    assert metrics["rows"] and all("values" in r and "profile" in r for r in metrics["rows"])
    assert any(r["values"].get("ff_mean") is not None for r in metrics["rows"])

    compare = client.get(f"/projects/alpha/subjects/{cohort.pseudonym}/compare")
    html = compare.get_data(as_text=True)
    assert compare.status_code == 200 and html.count('data-testid="viewer"') == 2
    match = re.search(r'data-testid="ff-change".*?</table>', html, re.S)
    assert match, "no FF change table"
    # the change column is visit 2 - visit 1 of the indexed FF values of the chosen labels
    ext = app.extensions["myovault"]
    with ext.db.transaction() as s:
        visits = {v.label: v.id for v in s.scalars(select(Visit))}
        ff = {
            (m.visit_id, m.derivative_id, m.muscle, m.side): m.value
            for m in s.scalars(select(MuscleMetric).where(MuscleMetric.metric == "ff_mean"))
        }
    deltas = [float(x) for x in re.findall(r"<td>([+-]\d+\.\d)</td></tr>", match.group(0))]
    assert deltas
    possible = {
        round(b - a, 1)
        for (va, da, ma, sa), a in ff.items()
        for (vb, db, mb, sb), b in ff.items()
        if va == visits[first] and vb == visits[second] and (ma, sa) == (mb, sb)
    }
    assert set(deltas) <= possible | {0.0}
