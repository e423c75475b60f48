"""A tiny processed cohort (1 subject x 2 visits through the real pipeline) and a grantee."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import select

from repository.models import Derivative, Grant, Project, Series, Subject, Visit
from repository.models._types import utcnow
from repository.services import access, accounts
from repository.services import consent as consent_service
from repository.services.context import SYSTEM
from repository.services.pipeline import ingest_directory
from tests.app_fixtures import PASSWORD, World
from tests.browser.conftest import browser, chromium_path, live_server  # noqa: F401
from tests.conftest import missing
from tests.consent.consent_helpers import BASE_CONSENT, user
from tests.pipeline.pipeline_helpers import tiny_cohort

#: The NiiVue bundle `make install` copies from npm; without it the viewer cannot draw.
VENDOR = Path(__file__).resolve().parents[2] / "repository/web/static/vendor/niivue/niivue.js"
WEBGL_ARGS = [
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def webgl_browser(chromium_path: str) -> Iterator[object]:  # noqa: F811
    """Headless Chromium with software WebGL (SwiftShader), for NiiVue pages."""
    if not VENDOR.is_file():
        missing(f"NiiVue is not installed at {VENDOR}: run `make install` (needs npm)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        instance = pw.chromium.launch(executable_path=chromium_path, args=WEBGL_ARGS)
        yield instance
        instance.close()


@dataclass
class Cohort:
    pseudonym: str
    visits: list[str]
    #: per visit label: series ids, map derivative ids, label ids, thumbnail ids
    series: dict[str, list[int]]
    maps: dict[str, list[int]]
    labels: dict[str, list[int]]
    thumbnails: dict[str, list[int]]
    grantee: str  # images, maps, metrics
    metrics_grantee: str  # metrics only


def _grant(app: Flask, world: World, email: str, kinds: list[str]) -> None:
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        accounts.create_user(session, SYSTEM, email=email, name=email, password=PASSWORD)
        alpha = session.scalar(select(Project).where(Project.slug == "alpha"))
        req = access.create_request(
            session,
            user(session, email),
            alpha,
            purpose="Fat fraction progression in the thigh muscles, viewed per visit.",
            use={"purpose": "HMB"},
            institution="Uni V",
            data_kinds=kinds,
        )
        dac = user(session, world.emails["dac"])
        access.cast_vote(session, dac, req.id, "approve")
        access.decide(session, dac, req.id, "approved", "fine by the committee")
        grant = session.scalar(select(Grant).where(Grant.request_id == req.id))
        assert grant is not None and grant.subject_ids
        grant.conditions_accepted_at = utcnow()


@pytest.fixture
def cohort(app: Flask, world: World, tmp_path: Path) -> Cohort:
    tiny_cohort(tmp_path / "in")
    ext = app.extensions["myovault"]
    with app.app_context():
        summary = ingest_directory(ext, SYSTEM, tmp_path / "in", "alpha")
    assert summary["state"] == "done", summary
    with ext.db.transaction() as session:
        subject = session.scalars(select(Subject)).one()
        pseudonym = subject.pseudonym
        alpha = session.scalar(select(Project).where(Project.slug == "alpha"))
        consent_service.record_consent(
            session,
            user(session, world.emails["investigator"]),
            alpha,
            {**BASE_CONSENT, "pseudonym": pseudonym, "duo_terms": "HMB"},
        )
        visits = session.scalars(
            select(Visit).where(Visit.subject_id == subject.id).order_by(Visit.label)
        ).all()
        series, maps, labels, thumbs = {}, {}, {}, {}
        for visit in visits:
            series[visit.label] = list(
                session.scalars(select(Series.id).where(Series.visit_id == visit.id))
            )
            ders = session.scalars(select(Derivative).where(Derivative.visit_id == visit.id)).all()
            maps[visit.label] = [d.id for d in ders if d.kind in ("FF", "T2", "B1")]
            labels[visit.label] = [d.id for d in ders if d.kind == "LABELS"]
            thumbs[visit.label] = [d.id for d in ders if d.kind == "THUMBNAIL"]
        labels_ = [v.label for v in visits]
    _grant(app, world, "grantee@example.org", ["images", "maps", "metrics"])
    _grant(app, world, "metrics-grantee@example.org", ["metrics"])
    return Cohort(
        pseudonym,
        labels_,
        series,
        maps,
        labels,
        thumbs,
        "grantee@example.org",
        "metrics-grantee@example.org",
    )
