"""The demo instance: one account per role and a demo cohort project.

Passwords are random and printed once, on the run that creates the accounts.
"""

from __future__ import annotations

import secrets

from flask import Flask
from sqlalchemy import select

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
]


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
            created.append((email, password, "admin" if is_admin else role or "researcher"))
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
    return lines
