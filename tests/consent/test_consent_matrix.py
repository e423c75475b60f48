"""Role-by-route security matrix for every consent / access / grant / download route.

Roles: anonymous, researcher (no grant), researcher with a grant on another project (beta),
grantee (active grant on alpha), site investigator, DAC member, owner, admin. Each gets exactly
the listed status; private things answer 404 (not 403) so IDs cannot be probed.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from repository.models import Grant, Project, User
from repository.models._types import utcnow
from repository.services import access, accounts
from repository.services.context import SYSTEM
from tests.app_fixtures import PASSWORD, api_token, login
from tests.consent.consent_helpers import add_subject, give_consent, user

ROLES = (
    "anonymous",
    "researcher",
    "beta_grantee",
    "grantee",
    "investigator",
    "dac",
    "owner",
    "admin",
)


@pytest.fixture
def scene(app, world):
    ext = app.extensions["myovault"]
    add_subject(app, "alpha", "S1", image=b"image-1" * 50, t2map=b"map-1" * 50)
    add_subject(app, "alpha", "S2", image=b"image-2" * 50, t2map=b"map-2" * 50)  # no consent
    add_subject(app, "beta", "B1", image=b"image-b" * 50, t2map=b"map-b" * 50)
    give_consent(app, world.emails["investigator"], "alpha", "S1", "HMB")
    give_consent(app, world.emails["other_owner"], "beta", "B1", "GRU")
    with ext.db.transaction() as session:
        for name in ("grantee", "beta_grantee"):
            accounts.create_user(
                session, SYSTEM, email=f"{name}@example.org", name=name, password=PASSWORD
            )
        alpha = session.scalar(select(Project).where(Project.slug == "alpha"))
        beta = session.scalar(select(Project).where(Project.slug == "beta"))
        req = access.create_request(
            session,
            user(session, "grantee@example.org"),
            alpha,
            purpose="Longitudinal fat fraction changes in FSHD thighs.",
            use={"purpose": "HMB"},
            institution="Uni G",
            data_kinds=["metrics"],
        )
        dac = user(session, world.emails["dac"])
        access.cast_vote(session, dac, req.id, "approve")
        access.decide(session, dac, req.id, "approved", "fine by the committee")
        grant = session.scalar(select(Grant).where(Grant.request_id == req.id))
        grant.conditions_accepted_at = utcnow()
        beta_user = session.scalar(select(User).where(User.email == "beta_grantee@example.org"))
        session.add(
            Grant(
                user_id=beta_user.id,
                project_id=beta.id,
                data_level="metrics",
                subject_ids=[],
                expires_at=utcnow() + timedelta(days=30),
                conditions_accepted_at=utcnow(),
            )
        )
        pending = access.create_request(
            session,
            user(session, world.emails["researcher"]),
            alpha,
            purpose="Muscle water T2 in Pompe disease as an outcome measure.",
            use={"purpose": "HMB"},
            institution="Uni R",
            data_kinds=["metrics"],
        )
        ids = {"grant": grant.id, "request": pending.id}
    emails = {
        **world.emails,
        "grantee": "grantee@example.org",
        "beta_grantee": "beta_grantee@example.org",
    }
    return ids, emails


def _expect(allowed: dict[str, int], default: int) -> dict[str, int]:
    return {role: allowed.get(role, default) for role in ROLES}


CONSENT_PAGE = {"investigator": 200, "owner": 200}
WEB_ROUTES = [
    ("/projects/alpha/consent", CONSENT_PAGE, 403),
    ("/projects/alpha/subjects/S1/consent", CONSENT_PAGE, 403),
    ("/projects/alpha/subjects/S1/access-report", CONSENT_PAGE, 403),
    (
        "/projects/alpha/subjects/S1/prov.json",
        {"investigator": 200, "owner": 200, "grantee": 200},
        403,
    ),
    # a grantee sees provenance only of subjects in their grant
    (
        "/projects/alpha/subjects/S2/prov.json",
        {"investigator": 200, "owner": 200, "grantee": 404},
        403,
    ),
    ("/projects/alpha/processing-record", {"owner": 200, "admin": 200}, 403),
    ("/projects/alpha/request-access", {}, 200),
    ("/projects/beta/request-access", {"admin": 200, "beta_grantee": 200}, 404),
    ("/projects/beta/consent", {"admin": 403, "beta_grantee": 403}, 404),
    ("/projects/alpha/dac", {"dac": 200, "owner": 200}, 403),
    ("/requests", {}, 200),
    ("/requests/{request}", {"researcher": 200, "dac": 200, "owner": 200, "admin": 200}, 404),
    ("/requests/999999", {}, 404),
    # this request has no ethics approval (see test_consent_ethics for one that has)
    ("/requests/{request}/ethics-approval", {"admin": 403}, 404),
    ("/grants/{grant}", {"grantee": 200, "dac": 200, "owner": 200, "admin": 200}, 404),
    ("/grants/999999", {}, 404),
]

API_ROUTES = [
    ("GET", "/api/v1/projects/alpha/consents", CONSENT_PAGE, 403),
    ("GET", "/api/v1/projects/alpha/subjects/S1/consents", CONSENT_PAGE, 403),
    ("GET", "/api/v1/projects/alpha/subjects/S1/access-report", CONSENT_PAGE, 403),
    (
        "GET",
        "/api/v1/projects/alpha/subjects/S1/prov",
        {"investigator": 200, "owner": 200, "grantee": 200},
        403,
    ),
    ("GET", "/api/v1/projects/alpha/prov", {"investigator": 200, "owner": 200}, 403),
    ("GET", "/api/v1/projects/alpha/processing-record", {"owner": 200, "admin": 200}, 403),
    ("GET", "/api/v1/projects/beta/consents", {"admin": 403, "beta_grantee": 403}, 404),
    ("GET", "/api/v1/access-requests", {}, 200),
    (
        "GET",
        "/api/v1/access-requests/{request}",
        {"researcher": 200, "dac": 200, "owner": 200, "admin": 200},
        404,
    ),
    ("GET", "/api/v1/grants", {}, 200),
    (
        "POST",
        "/api/v1/grants/{grant}/download-links",
        {"grantee": 201, "dac": 403, "owner": 403, "admin": 403},  # they oversee it, cannot use it
        404,
    ),
    (
        "POST",
        "/api/v1/access-requests/{request}/votes",
        {"dac": 201, "owner": 403, "admin": 403, "researcher": 403},
        404,
    ),
    ("POST", "/api/v1/projects/alpha/subjects/S1/erase", {"owner": 422}, 403),
    # register a participant not uploaded yet (the empty body is then invalid)
    ("POST", "/api/v1/projects/alpha/participants", {"investigator": 422, "owner": 422}, 403),
    ("POST", "/api/v1/projects/beta/participants", {"admin": 403, "beta_grantee": 403}, 404),
    ("GET", "/api/v1/access-requests/{request}/ethics-approval", {"admin": 403}, 404),
]


def _status_web(client, path):
    return client.get(path).status_code


def test_web_matrix(app, scene):
    ids, emails = scene
    results = {}
    for role in ROLES:
        client = app.test_client()
        if role != "anonymous":
            assert login(client, emails[role]).status_code == 302
        for path, allowed, default in WEB_ROUTES:
            url = path.format(**ids)
            expected = _expect(allowed, default)[role]
            if role == "anonymous":
                expected = 302  # every one of these pages needs a login first
            results[(role, url)] = (client.get(url).status_code, expected)
    wrong = {k: v for k, v in results.items() if v[0] != v[1]}
    assert not wrong, wrong


def test_api_matrix(app, scene):
    ids, emails = scene
    tokens = {role: api_token(app, emails[role]) for role in ROLES if role != "anonymous"}
    client = app.test_client()
    wrong = {}
    for role in ROLES:
        headers = {"Authorization": f"Bearer {tokens[role]}"} if role in tokens else {}
        for method, path, allowed, default in API_ROUTES:
            url = path.format(**ids)
            expected = 401 if role == "anonymous" else _expect(allowed, default)[role]
            body = {"vote": "abstain", "reason": ""} if "votes" in url else {}
            response = client.open(url, method=method, headers=headers, json=body)
            if response.status_code != expected:
                wrong[(role, method, url)] = (response.status_code, expected)
            if response.status_code >= 400:
                payload = response.get_json()
                assert set(payload) == {"error", "message"}, payload
                assert "S1" not in payload["message"] or role in ("investigator", "owner")
    assert not wrong, wrong


def test_requester_sees_suppressed_counts_and_no_identities(app, scene):
    ids, emails = scene
    client = app.test_client()
    token = api_token(app, emails["researcher"])
    data = client.get(
        f"/api/v1/access-requests/{ids['request']}", headers={"Authorization": f"Bearer {token}"}
    ).get_json()
    assert data["request"]["included"] == "<5"
    assert "votes" not in data and "comments" not in data
    assert "S1" not in str(data)
    preview = client.post(
        "/api/v1/projects/alpha/access-requests/preview",
        headers={"Authorization": f"Bearer {token}"},
        json={"intended_use": {"purpose": "POA"}},
    ).get_json()
    assert preview == {
        "candidates": "<5",
        "matched": 0,
        "excluded": "<5",
        "exclusions": {"consent (HMB) does not cover POA use": "<5", "no consent recorded": "<5"},
    }
