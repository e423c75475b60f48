"""Configuration: defaults, overrides, and clear failures at start-up."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from repository.config import load_config
from repository.errors import ConfigError
from repository.models import Project
from tests.app_fixtures import api_token, make_test_app
from tests.conftest import free_port


def test_embedded_defaults_live_under_home(tmp_path):
    cfg = load_config({"HOME": str(tmp_path)}, environ={})
    assert cfg["DATABASE_URL"] == f"sqlite:///{tmp_path}/data/myovault.sqlite"
    assert cfg["STORAGE"] == f"{tmp_path}/data/objects"
    assert cfg["BROKER_URL"] == "filesystem://"
    assert cfg["MASTER_KEY_FILE"] == f"{tmp_path}/keys/master.key"


def test_environment_and_instance_file_override_defaults(tmp_path):
    (tmp_path / "myovault.toml").write_text('login_max_failures = 3\nstorage = "s3://b/p"\n')
    env = {
        "MYOVAULT_HOME": str(tmp_path),
        "MYOVAULT_LOGIN_MAX_FAILURES": "7",
        "MYOVAULT_BROKER_URL": "redis://127.0.0.1:6379/0",
        "MYOVAULT_COOKIE_SECURE": "true",
    }
    cfg = load_config(environ=env)
    assert cfg["LOGIN_MAX_FAILURES"] == 7  # environment beats the instance file
    assert cfg["STORAGE"] == "s3://b/p"
    assert cfg["BROKER_URL"] == "redis://127.0.0.1:6379/0"
    assert cfg["COOKIE_SECURE"] is True


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MYOVAULT_COOKIE_SECURE": "maybe"}, "must be true or false"),
        ({"MYOVAULT_LOGIN_MAX_FAILURES": "many"}, "must be an integer"),
    ],
)
def test_bad_values_are_named(tmp_path, env, message):
    with pytest.raises(ConfigError, match=message):
        load_config({"HOME": str(tmp_path)}, environ=env)


def test_unknown_instance_setting_is_an_error(tmp_path):
    (tmp_path / "myovault.toml").write_text("databse_url = 'x'\n")
    with pytest.raises(ConfigError, match="unknown setting 'DATABSE_URL'"):
        load_config(environ={"MYOVAULT_HOME": str(tmp_path)})


def test_master_key_inside_the_data_directory_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="outside the data directory"):
        load_config(
            {"HOME": str(tmp_path), "MASTER_KEY_FILE": str(tmp_path / "data" / "master.key")},
            environ={},
        )


def test_missing_key_file_fails_at_start(tmp_path, database_url):
    with pytest.raises(ConfigError, match="master key"):
        make_test_app(tmp_path, database_url, MASTER_KEY_FILE=str(tmp_path / "nope.key"))


def test_unreachable_database_fails_at_start(tmp_path):
    url = f"postgresql://nobody:pw@127.0.0.1:{free_port()}/none"
    with pytest.raises(ConfigError, match="database unreachable") as info:
        make_test_app(tmp_path, url)
    assert "pw" not in str(info.value)  # the password is never echoed


@pytest.mark.integration
def test_absent_bucket_fails_at_start(tmp_path, database_url, moto_endpoint):
    with pytest.raises(ConfigError, match="object storage"):
        make_test_app(
            tmp_path,
            database_url,
            STORAGE="s3://no-such-bucket/prefix",
            S3_ENDPOINT_URL=moto_endpoint,
        )


@pytest.mark.integration
def test_s3_endpoint_down_fails_at_start_and_health_says_so(tmp_path, database_url):
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigError, match="object storage"):
        make_test_app(tmp_path, database_url, STORAGE="s3://bucket/p", S3_ENDPOINT_URL=endpoint)
    app = make_test_app(
        tmp_path,
        database_url,
        STORAGE="s3://bucket/p",
        S3_ENDPOINT_URL=endpoint,
        CHECK_SERVICES=False,
    )
    response = app.test_client().get("/api/v1/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["storage"]["ok"] is False and body["checks"]["database"]["ok"] is True
    app.extensions["myovault"].db.engine.dispose()


def test_broker_down_is_reported_by_health(tmp_path, database_url):
    app = make_test_app(tmp_path, database_url, BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    response = app.test_client().get("/api/v1/health")
    assert response.status_code == 503
    assert response.get_json()["checks"]["broker"]["ok"] is False
    app.extensions["myovault"].db.engine.dispose()


def test_database_failing_mid_request_writes_nothing(app, client, world, monkeypatch):
    from repository.services import projects

    def connection_lost(*args, **kwargs):
        raise OperationalError(
            "INSERT INTO audit_events", {}, Exception("server closed the connection")
        )

    token = api_token(app, world.emails["admin"])
    monkeypatch.setattr(projects.audit, "record", connection_lost)
    response = client.post(
        "/api/v1/projects",
        json={"slug": "gamma", "title": "Gamma"},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 503
    assert response.get_json()["error"] == "database_unavailable"
    with app.extensions["myovault"].db.transaction() as session:
        assert session.scalar(select(Project).where(Project.slug == "gamma")) is None
