"""The ethics approval uploaded with an access request: a page and an audited download for the
requester, the committee and the owners only; everyone else gets 403 or 404 (role matrix)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from sqlalchemy import select

from repository.models import AuditEvent, Project
from repository.services import access
from tests.app_fixtures import api_token, login
from tests.consent.consent_helpers import add_subject, give_consent, user

PDF = b"%PDF-1.4\n% ethics committee approval 2025-117\n" + b"x" * 2000 + b"\n%%EOF\n"
ROLES = ("anonymous", "researcher", "investigator", "dac", "owner", "admin", "other_owner")
# the requester, the committee and the owners; admin oversees grants (sees the request: 403)
ALLOWED = {"researcher": 200, "dac": 200, "owner": 200, "admin": 403}


@pytest.fixture
def requests_(app, world):
    ext = app.extensions["myovault"]
    add_subject(app, "alpha", "S1", image=b"image" * 40, t2map=b"map" * 40)
    give_consent(app, world.emails["investigator"], "alpha", "S1", "GRU")
    ids = {}
    with ext.db.transaction() as session:
        alpha = session.scalar(select(Project).where(Project.slug == "alpha"))
        for name, document, requester in (
            ("with", PDF, "researcher"),
            ("without", None, "other_owner"),
        ):
            req = access.create_request(
                session,
                user(session, world.emails[requester]),
                alpha,
                purpose="Fat fraction trajectories in limb-girdle muscular dystrophy.",
                use={"purpose": "HMB"},
                institution="Uni R",
                data_kinds=["metrics"],
                store=ext.store,
                ethics_document=document,
            )
            ids[name] = req.id
    return ids


def _expected(role: str, anonymous: int) -> int:
    return anonymous if role == "anonymous" else ALLOWED.get(role, 404)


def test_web_ethics_pages_role_matrix(app, world, requests_):
    wrong = {}
    for role in ROLES:
        client = app.test_client()
        if role != "anonymous":
            assert login(client, world.emails[role]).status_code == 302
        for path in (
            f"/requests/{requests_['with']}/ethics-approval",
            f"/requests/{requests_['with']}/ethics-approval/file",
        ):
            status = client.get(path).status_code
            if status != _expected(role, 302):
                wrong[(role, path)] = (status, _expected(role, 302))
        # a request without an approval, and a request that does not exist: 404 for all
        for path in (
            f"/requests/{requests_['without']}/ethics-approval",
            "/requests/999999/ethics-approval/file",
        ):
            status = client.get(path).status_code
            expected = 302 if role == "anonymous" else 404 if ALLOWED.get(role) == 200 else None
            if expected is not None and status != expected:
                wrong[(role, path)] = (status, expected)
    assert not wrong, wrong


def test_web_download_is_the_uploaded_file_and_audited(app, world, requests_):
    client = app.test_client()
    login(client, world.emails["dac"])
    detail = client.get(f"/requests/{requests_['with']}").get_data(as_text=True)
    assert f'href="/requests/{requests_["with"]}/ethics-approval"' in detail
    page = client.get(f"/requests/{requests_['with']}/ethics-approval").get_data(as_text=True)
    assert hashlib.sha256(PDF).hexdigest() in page
    r = client.get(f"/requests/{requests_['with']}/ethics-approval/file")
    assert r.status_code == 200 and r.data == PDF
    assert r.mimetype == "application/pdf"
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert "attachment" in r.headers["Content-Disposition"]
    with app.extensions["myovault"].db.transaction() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "access.ethics_download")
        ).all()
        assert len(events) == 1
        assert events[0].object_id == str(requests_["with"])
        assert events[0].details["sha256"] == hashlib.sha256(PDF).hexdigest()
    # the page itself is not a download (only the file read is recorded); outsiders get 404
    investigator = app.test_client()
    login(investigator, world.emails["investigator"])
    assert investigator.get(f"/requests/{requests_['with']}").status_code == 404


def test_api_ethics_download_role_matrix(app, world, requests_):
    client = app.test_client()
    url = f"/api/v1/access-requests/{requests_['with']}/ethics-approval"
    wrong = {}
    for role in ROLES:
        headers = (
            {}
            if role == "anonymous"
            else {"Authorization": f"Bearer {api_token(app, world.emails[role])}"}
        )
        r = client.get(url, headers=headers)
        if r.status_code != _expected(role, 401):
            wrong[role] = (r.status_code, _expected(role, 401))
        if r.status_code == 200:
            assert r.data == PDF
            digest = base64.b64encode(hashlib.sha256(PDF).digest()).decode()
            assert r.headers["Digest"] == f"sha-256={digest}"
        else:
            assert set(r.get_json()) == {"error", "message"}
    assert not wrong, wrong
    owner = {"Authorization": f"Bearer {api_token(app, world.emails['owner'])}"}
    missing = client.get(
        f"/api/v1/access-requests/{requests_['without']}/ethics-approval", headers=owner
    )
    assert missing.status_code == 404
    with app.extensions["myovault"].db.transaction() as session:
        actors = session.scalars(
            select(AuditEvent.actor_id).where(AuditEvent.action == "access.ethics_download")
        ).all()
    assert len(actors) == 3  # researcher, dac, owner
