"""App fixtures (a pytest plugin loaded by tests/conftest.py): database tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text

from repository import create_app, migrate
from repository.db import Base, make_engine
from repository.models import Role
from repository.services import accounts, projects
from repository.services.context import SYSTEM
from repository.storage import generate_master_key_file

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.sqlite"
    engine = make_engine(f"sqlite:///{path}")
    migrate.upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def pg_database(postgres_server: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    admin = make_engine(postgres_server).execution_options(isolation_level="AUTOCOMMIT")
    name = f"myovault_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = postgres_server.rsplit("/", 1)[0] + f"/{name}"
    engine = make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "myovault.sqlite"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    _truncate_all(url)
    return url


def make_test_app(tmp_path: Path, database_url: str, **overrides: Any) -> Flask:
    home = tmp_path / "home"
    (home / "keys").mkdir(parents=True, exist_ok=True)
    key_file = home / "keys" / "master.key"
    if not key_file.exists():
        generate_master_key_file(key_file)
    (home / "data" / "objects").mkdir(parents=True, exist_ok=True)
    config = {
        "HOME": str(home),
        "DATABASE_URL": database_url,
        "SECRET_KEY": "test-secret-key-not-for-production",
        "TESTING": True,
        **overrides,
    }
    return create_app(config)


@pytest.fixture
def app(tmp_path: Path, database_url: str) -> Iterator[Flask]:
    application = make_test_app(tmp_path, database_url)
    dispatched: list[int] = []
    application.extensions["myovault"].set_dispatcher(dispatched.append)
    application.config["DISPATCHED"] = dispatched
    yield application
    application.extensions["myovault"].db.engine.dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class World:
    """Accounts with every role across two projects (alpha, beta)."""

    emails: dict[str, str]
    projects: dict[str, int]


ROLES = {
    "admin": (True, []),
    "owner": (False, [("alpha", Role.OWNER)]),
    "investigator": (False, [("alpha", Role.INVESTIGATOR)]),
    "dac": (False, [("alpha", Role.DAC_MEMBER)]),
    "researcher": (False, []),
    "other_owner": (False, [("beta", Role.OWNER)]),
}


@pytest.fixture(scope="session")
def password_hash() -> str:
    from repository.security.passwords import hash_password

    return hash_password(PASSWORD)


@pytest.fixture
def world(app: Flask, password_hash: str, monkeypatch: pytest.MonkeyPatch) -> World:
    """Hashing is real but done once per session: argon2 is slow on purpose."""
    real_hash = accounts.hash_password
    monkeypatch.setattr(
        accounts, "hash_password", lambda pw: password_hash if pw == PASSWORD else real_hash(pw)
    )
    ext = app.extensions["myovault"]
    emails, ids = {}, {}
    with ext.db.transaction() as session:
        for slug, public in (("alpha", True), ("beta", False)):
            p = projects.create_project(
                session,
                SYSTEM,
                slug=slug,
                title=f"Project {slug}",
                is_public=public,
                wrap_secret=ext.wrap_project_secret,
            )
            ids[slug] = p.id
        for role, (is_admin, memberships) in ROLES.items():
            email = f"{role}@example.org"
            accounts.create_user(
                session,
                SYSTEM,
                email=email,
                name=role.title(),
                password=PASSWORD,
                is_admin=is_admin,
            )
            for slug, project_role in memberships:
                project = session.get(projects.Project, ids[slug])
                projects.add_member(session, SYSTEM, project, email=email, role=project_role)
            emails[role] = email
    return World(emails=emails, projects=ids)


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(client: FlaskClient, path: str = "/login") -> str:
    html = client.get(path).get_data(as_text=True)
    match = CSRF_RE.search(html)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def login(client: FlaskClient, email: str, password: str = PASSWORD) -> Any:
    token = csrf_token(client)
    return client.post("/login", data={"email": email, "password": password, "csrf_token": token})


def api_token(app: Flask, email: str, days: int = 30) -> str:
    from sqlalchemy import select

    from repository.models import User
    from repository.services.context import Actor

    ext = app.extensions["myovault"]
    with ext.db.transaction() as session:
        user = session.scalar(select(User).where(User.email == email))
        _, plain = accounts.create_token(
            session, Actor(user=user), name="test", days=days, max_days=365
        )
    return plain
