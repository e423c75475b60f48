"""The policy table: object checks and search filters agree; restricted projects never leak."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from repository.models import Project, User
from repository.security import policy
from repository.services.context import ANONYMOUS, Actor
from tests.app_fixtures import ROLES, api_token, login

PROJECT_ACTIONS = sorted(policy.PROJECT_ACTIONS)


def _actors(session, world):
    users = {
        role: session.scalar(select(User).where(User.email == email))
        for role, email in world.emails.items()
    }
    return {"anonymous": ANONYMOUS, **{r: Actor(user=u) for r, u in users.items()}}


def test_unknown_actions_are_denied_loudly(app, world):
    with (
        app.extensions["myovault"].db.transaction() as session,
        pytest.raises(KeyError, match="denied by default"),
    ):
        policy.can(session, ANONYMOUS, "project.delete_everything")


def test_filter_agrees_with_object_check_for_every_role_and_action(app, world):
    """The search filter selects exactly the projects the single-object check allows."""
    with app.extensions["myovault"].db.transaction() as session:
        all_projects = session.scalars(select(Project)).all()
        for name, actor in _actors(session, world).items():
            for action in PROJECT_ACTIONS:
                by_filter = set(
                    session.scalars(select(Project.id).where(policy.project_filter(actor, action)))
                )
                by_check = {p.id for p in all_projects if policy.can(session, actor, action, p)}
                assert by_filter == by_check, (name, action)


EXPECTED = {  # role -> actions allowed on project alpha (public)
    "anonymous": {"project.view_metadata"},
    "researcher": {"project.view_metadata"},
    "admin": {
        "project.view_metadata",
        "project.edit",
        "project.manage_members",
        "project.view_jobs",
        "project.view_audit",
    },
    "owner": {
        "project.view_metadata",
        "project.edit",
        "project.manage_members",
        "project.upload",
        "project.view_data",
        "project.view_jobs",
        "project.view_audit",
    },
    "investigator": {
        "project.view_metadata",
        "project.upload",
        "project.view_data",
        "project.view_jobs",
    },
    "dac": {"project.view_metadata", "project.review_requests"},
    "other_owner": {"project.view_metadata"},
}

# consent, access requests, DAC, grants, downloads, erasure (issue 7)
for _role in ("researcher", "admin", "owner", "investigator", "dac", "other_owner"):
    EXPECTED[_role] |= {"project.request_access"}
EXPECTED["admin"] |= {"project.manage_grants", "project.view_processing_record"}
EXPECTED["owner"] |= {
    "project.manage_consent",
    "project.erase_subject",
    "project.manage_dac",
    "project.manage_grants",
    "project.view_processing_record",
    "project.view_ethics_approval",
}
EXPECTED["investigator"] |= {"project.manage_consent"}
EXPECTED["dac"] |= {
    "project.decide_requests",
    "project.manage_grants",
    "project.view_ethics_approval",
}
# label correction in the viewer (issue 9)
EXPECTED["owner"] |= {"project.edit_labels"}
EXPECTED["investigator"] |= {"project.edit_labels"}


def test_role_matrix_on_a_public_project(app, world):
    with app.extensions["myovault"].db.transaction() as session:
        alpha = session.get(Project, world.projects["alpha"])
        for name, actor in _actors(session, world).items():
            allowed = {a for a in PROJECT_ACTIONS if policy.can(session, actor, a, alpha)}
            assert allowed == EXPECTED[name], name


def test_private_project_is_invisible_to_outsiders(app, client, world):
    assert client.get("/projects/beta").status_code == 404  # anonymous
    assert client.get("/projects/alpha").status_code == 200
    for role in ROLES:
        token = api_token(app, world.emails[role])
        response = client.get("/api/v1/projects/beta", headers={"Authorization": f"Bearer {token}"})
        expected = 200 if role in {"admin", "other_owner"} else 404
        assert response.status_code == expected, role
        listing = client.get("/api/v1/projects", headers={"Authorization": f"Bearer {token}"})
        slugs = {p["slug"] for p in listing.get_json()["projects"]}
        assert ("beta" in slugs) == (expected == 200), role
        if expected == 404:  # same answer as a project that does not exist
            assert (
                response.get_json()
                == client.get(
                    "/api/v1/projects/does-not-exist", headers={"Authorization": f"Bearer {token}"}
                ).get_json()
            )


def test_member_management_is_limited_to_owners_and_admins(app, client, world):
    for role, expected in (
        ("investigator", 403),
        ("dac", 403),
        ("researcher", 403),
        ("other_owner", 403),
        ("owner", 201),
    ):
        token = api_token(app, world.emails[role])
        response = client.post(
            "/api/v1/projects/alpha/members",
            json={"email": world.emails["researcher"], "role": "dac_member"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == expected, role


def test_admin_pages_need_admin(client, world):
    login(client, world.emails["owner"])
    for path in ("/admin/users", "/admin/audit", "/admin/projects"):
        assert client.get(path).status_code == 403, path
    client.get("/login")
    other = client.application.test_client()
    login(other, world.emails["admin"])
    for path in ("/admin/users", "/admin/audit", "/admin/projects"):
        assert other.get(path).status_code == 200, path


def test_jobs_of_another_project_cannot_be_reached_by_id(app, client, world):
    from repository.services import jobs as job_service
    from repository.services.context import SYSTEM

    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        job = job_service.enqueue(
            session, SYSTEM, ext.dispatch, kind="audit.verify", project_id=world.projects["beta"]
        ).job
        job_id = job.id
    for role, expected in (
        ("other_owner", 200),
        ("admin", 200),
        ("owner", 404),
        ("investigator", 404),
        ("researcher", 404),
    ):
        token = api_token(app, world.emails[role])
        response = client.get(
            f"/api/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == expected, role
        assert (
            client.get(
                f"/api/v1/jobs/{job_id + 1000}", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 404
        )


def test_project_page_links_only_to_pages_the_role_may_open(app, client, world):
    """No dead ends: every link on the project page opens for the user who sees it."""
    import re

    for role in ("owner", "investigator", "dac", "researcher", "admin"):
        user = app.test_client()
        login(user, world.emails[role])
        html = user.get("/projects/alpha").get_data(as_text=True)
        nav = html.split('data-testid="project-links"', 1)[1].split("</nav>", 1)[0]
        links = re.findall(r'href="([^"]+)"', nav)
        assert links, role
        for link in links:
            assert user.get(link).status_code == 200, (role, link)
    anonymous = client.get("/projects/alpha").get_data(as_text=True)
    assert "Log in to request access" in anonymous
