"""The demo instance: one account per role and a demo cohort project.

Passwords are random and printed once, on the run that creates the accounts.
"""

from __future__ import annotations

import secrets

from flask import Flask
from sqlalchemy import select

from repository.errors import MyoVaultError
from repository.models import Project, User
from repository.services import accounts, projects
from repository.services.context import SYSTEM

DEMO_PROJECT = "demo-nmd-thigh"
DEMO_ACCOUNTS = [
    # email, name, is_admin, project role
    ("admin@demo.myovault.org", "Ada Admin", True, None),
    ("owner@demo.myovault.org", "Olga Owner", False, "owner"),
    ("investigator@demo.myovault.org", "Ivan Investigator", False, "investigator"),
    ("dac@demo.myovault.org", "Dana DAC", False, "dac_member"),
    ("researcher@demo.myovault.org", "Rita Researcher", False, None),
    # a researcher whose access request went through the committee (images, maps, metrics)
    ("grantee@demo.myovault.org", "Greta Grantee", False, None),
]
DEMO_GRANTEE = "grantee@demo.myovault.org"


def create_demo(app: Flask) -> list[str]:
    ext = app.extensions["myovault"]
    lines: list[str] = []
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == DEMO_PROJECT))
        if project is None:
            project = projects.create_project(
                session,
                SYSTEM,
                slug=DEMO_PROJECT,
                title="Demo cohort: thigh muscle MRI in neuromuscular disease",
                description=(
                    "Synthetic demonstration cohort (no real participants): Dixon and "
                    "multi-echo spin-echo thigh MRI across several diseases, two visits each."
                ),
                is_public=True,
                wrap_secret=ext.wrap_project_secret,
            )
            projects.add_site(session, SYSTEM, project, code="DEMO-1", name="Demo Site One")
            lines.append(f"demo project {DEMO_PROJECT} created")
        created = []
        for email, name, is_admin, role in DEMO_ACCOUNTS:
            if session.scalar(select(User.id).where(User.email == email)) is not None:
                continue
            password = secrets.token_urlsafe(12)
            accounts.create_user(
                session, SYSTEM, email=email, name=name, password=password, is_admin=is_admin
            )
            if role:
                projects.add_member(
                    session,
                    SYSTEM,
                    project,
                    email=email,
                    role=role,
                    site_code="DEMO-1" if role == "investigator" else None,
                )
            created.append((email, password, "admin" if is_admin else role or _plain_role(email)))
    if created:
        lines.append(
            "demo accounts (passwords shown once; reset with `myovault user reset-password EMAIL`):"
        )
        lines.extend(f"  {role:<13} {email:<34} {password}" for email, password, role in created)
    else:
        lines.append(
            "demo accounts exist already (passwords were shown when they were created;"
            " `myovault user reset-password EMAIL` sets a new one)"
        )
    from repository.demo_cohort import ingest_demo_cohort  # issue 4: the synthetic cohort

    lines.extend(ingest_demo_cohort(app, DEMO_PROJECT))
    lines.extend(grant_demo_access(app))
    return lines


def _plain_role(email: str) -> str:
    return "grantee" if email == DEMO_GRANTEE else "researcher"


def grant_demo_access(app: Flask) -> list[str]:
    """The grantee's request → committee vote → decision → data-use agreement, through the same
    services (and audit trail) a real request takes; skipped when the grant exists."""
    from repository.models import Grant
    from repository.services import access
    from repository.services.context import Actor

    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        project = session.scalar(select(Project).where(Project.slug == DEMO_PROJECT))
        grantee = session.scalar(select(User).where(User.email == DEMO_GRANTEE))
        dac = session.scalar(select(User).where(User.email == "dac@demo.myovault.org"))
        if project is None or grantee is None or dac is None:
            return []
        if session.scalar(select(Grant.id).where(Grant.user_id == grantee.id)) is not None:
            return []
        try:
            request = access.create_request(
                session,
                Actor(user=grantee),
                project,
                purpose="Demo: fat-fraction involvement patterns of thigh muscles across diseases.",
                use={"purpose": "HMB"},
                institution="Demo University",
                data_kinds=["images", "maps", "metrics"],
                store=ext.store,
            )
            access.cast_vote(session, Actor(user=dac), request.id, "approve", "demo approval")
            access.decide(session, Actor(user=dac), request.id, "approved", "demo approval")
            grant = session.scalar(select(Grant).where(Grant.request_id == request.id))
            if grant is None:
                return ["demo grant: the committee's rule did not approve the request"]
            access.accept_conditions(session, Actor(user=grantee), grant.id)
        except MyoVaultError as exc:  # e.g. no cohort ingested (MYOVAULT_DEMO_COHORT=none)
            session.rollback()
            return [f"demo grant not created: {exc.message}"]
        return [f"demo grant: {DEMO_GRANTEE} may view and download the demo cohort"]
