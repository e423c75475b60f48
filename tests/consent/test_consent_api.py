"""The REST API of consent, access requests, decisions, grants and downloads; the mail sender."""

from __future__ import annotations

import base64
import io
import zipfile

import pytest
from sqlalchemy import select

from repository.errors import ConfigError
from repository.models import Notification
from repository.services import notify
from tests.app_fixtures import api_token
from tests.consent.consent_helpers import BASE_CONSENT, add_subject


def _h(token):
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def captured():
    sender = notify.CapturingSender()
    notify.set_sender(sender)
    yield sender
    notify.set_sender(None)


def test_api_journey(app, world, captured):
    ext = app.extensions["myovault"]
    add_subject(app, "alpha", "S1", image=b"img" * 100, t2map=b"map" * 100)
    add_subject(app, "alpha", "S2", image=b"im2" * 100, t2map=b"ma2" * 100)
    client = app.test_client()
    inv, res, dac, owner = (
        _h(api_token(app, world.emails[r])) for r in ("investigator", "researcher", "dac", "owner")
    )

    r = client.post(
        "/api/v1/projects/alpha/consents",
        headers=inv,
        json={**BASE_CONSENT, "pseudonym": "S1", "duo_terms": ["HMB", "IRB"]},
    )
    assert r.status_code == 201 and r.get_json()["consent"]["duo_terms"] == ["HMB", "IRB"]
    r = client.post(
        "/api/v1/projects/alpha/consents",
        headers=inv,
        json={**BASE_CONSENT, "pseudonym": "S1", "duo_terms": ["IRB"], "lawful_basis": "x"},
    )
    assert r.status_code == 422 and "exactly one" in r.get_json()["message"]
    table = (
        "pseudonym\tform\tform_version\tsigned_on\tduo_terms\tlawful_basis\tspecial_category_basis\n"
        "S2\tF\t1\t2024-01-01\tGRU\t6(1)(e)\t9(2)(j)\nS3\tF\t1\t2024-01-01\tGRU\t6(1)(e)\t9(2)(j)\n"
    )
    r = client.post("/api/v1/projects/alpha/consents/import", headers=inv, data=table)
    assert r.status_code == 422 and r.get_json()["rows"] == [
        {"line": 3, "problems": ["no subject 'S3' in this project"]}
    ]
    r = client.post(
        "/api/v1/projects/alpha/consents/import", headers=inv, data=table.rsplit("S3", 1)[0]
    )
    assert r.status_code == 201 and r.get_json() == {"imported": 1, "registered": 0}

    body = {
        "purpose": "Fat fraction in FSHD thighs as a trial endpoint.",
        "institution": "Uni R",
        "intended_use": {"purpose": "HMB"},
        "data": ["maps", "metrics"],
        "ethics_approval_base64": base64.b64encode(b"%PDF ethics").decode(),
    }
    r = client.post("/api/v1/projects/alpha/access-requests", headers=res, json=body)
    assert r.status_code == 201, r.get_json()
    req = r.get_json()["request"]
    assert req["included"] == "<5" and req["ethics_approval"] is True
    rid = req["id"]
    assert (
        client.post(
            f"/api/v1/access-requests/{rid}/comments", headers=dac, json={"body": "ok"}
        ).status_code
        == 201
    )
    r = client.post(
        f"/api/v1/access-requests/{rid}/decision",
        headers=dac,
        json={"outcome": "approved", "reason": "votes first"},
    )
    assert r.status_code == 409
    assert (
        client.post(
            f"/api/v1/access-requests/{rid}/votes", headers=dac, json={"vote": "approve"}
        ).status_code
        == 201
    )
    r = client.post(
        f"/api/v1/access-requests/{rid}/decision",
        headers=dac,
        json={"outcome": "approved", "reason": "Consent covers the use."},
    )
    assert r.status_code == 201
    gid = r.get_json()["grant"]
    view = client.get(f"/api/v1/access-requests/{rid}", headers=dac).get_json()
    assert view["tally"]["outcome"] == "approved" and view["comments"][0]["body"] == "ok"

    assert (
        client.post(f"/api/v1/grants/{gid}/download-links", headers=res, json={}).status_code == 403
    )
    r = client.post(f"/api/v1/grants/{gid}/accept", headers=res, json={"accept": True})
    assert r.get_json()["grant"]["state"] == "active"
    r = client.post(
        f"/api/v1/grants/{gid}/download-links", headers=res, json={"layout": "zip", "subject": "S2"}
    )
    assert r.status_code == 201
    url = r.get_json()["url"]
    assert client.get(url, headers=owner).status_code == 404
    r = client.get(url, headers=res)
    assert r.status_code == 200
    names = zipfile.ZipFile(io.BytesIO(r.get_data())).namelist()
    assert any("sub-S2" in n for n in names) and not any("sub-S1" in n for n in names)
    assert not any(n.endswith("bagit.txt") for n in names)  # plain zip layout

    r = client.post(
        "/api/v1/projects/alpha/subjects/S2/withdraw", headers=inv, json={"reason": "asked"}
    )
    assert r.get_json()["consent"]["withdrawn_on"] is not None
    r = client.post(f"/api/v1/grants/{gid}/revoke", headers=owner, json={"reason": "study closed"})
    assert r.get_json()["grant"]["state"] == "revoked"
    assert client.get("/api/v1/grants", headers=res).get_json()["grants"][0]["state"] == "revoked"

    # every message went through the sender after commit and was marked sent
    sent_to = [m[0] for m in captured.messages]
    assert world.emails["dac"] in sent_to and sent_to.count(world.emails["researcher"]) == 3
    with ext.db.transaction() as session:
        rows = session.scalars(select(Notification)).all()
        assert rows and all(n.sent_at is not None and n.error == "" for n in rows)


def test_unknown_sender_is_an_error():
    with pytest.raises(ConfigError, match="unknown MAIL_SENDER"):
        notify.sender_from_config({"MAIL_SENDER": "pigeon"})
    assert isinstance(notify.sender_from_config({}), notify.OutboxSender)


def test_reminders_cli(app, world, monkeypatch):
    from contextlib import contextmanager

    from click.testing import CliRunner

    from repository.cli import consent as consent_cli

    @contextmanager
    def the_app(**_: object):
        yield app

    from datetime import timedelta

    from repository.models import AccessRequest, Project
    from repository.models._types import utcnow
    from repository.services import access
    from tests.consent.consent_helpers import give_consent, user

    add_subject(app, "alpha", "S1", image=b"img" * 10, t2map=b"map" * 10)
    give_consent(app, world.emails["investigator"], "alpha", "S1", "GRU")
    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        req = access.create_request(
            session,
            user(session, world.emails["researcher"]),
            session.scalar(select(Project).where(Project.slug == "alpha")),
            purpose="Any research use of thigh muscle MRI metrics.",
            use={"purpose": "GRU"},
            institution="Uni",
            data_kinds=["metrics"],
        )
        req.deadline_at = utcnow() - timedelta(days=1)
    monkeypatch.setattr(consent_cli, "_app", the_app)
    result = CliRunner().invoke(consent_cli.access_reminders)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "reminded: 1, escalated: 0"
    again = CliRunner().invoke(consent_cli.access_reminders)
    assert again.output.strip() == "reminded: 0, escalated: 0"  # idempotent
    with ext.db.transaction() as session:
        assert session.scalar(select(AccessRequest)).reminded_at is not None
