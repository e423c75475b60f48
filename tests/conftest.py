"""Fixtures shared by every test package.

Services: on a developer's machine a missing service skips its tests with the reason; under CI
(``CI=true``) a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Skip the current test with ``reason``, or fail it under CI."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


def port_open(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real sample folder beside the project (``../shared/data``)."""
    if not SHARED_DATA.is_dir():
        missing(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


# --- real services ---------------------------------------------------------------------------

PG_ADMIN_URL = os.environ.get("MYOVAULT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("MYOVAULT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("MYOVAULT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The admin URL of the PostgreSQL test server (database ``test``)."""
    if not port_open("127.0.0.1", 5432):
        missing("PostgreSQL is not running on 127.0.0.1:5432")
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not port_open("127.0.0.1", 6379):
        missing("Redis is not running on 127.0.0.1:6379")
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    if not port_open("127.0.0.1", 5672):
        missing("RabbitMQ is not running on 127.0.0.1:5672")
    return AMQP_URL


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint():
    """An S3 endpoint: ``moto_server`` on a free 127.0.0.1 port, started for this test session."""
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        missing(f"moto_server not installed beside {sys.executable} (pip install 'moto[server]')")
    port = free_port()
    proc = subprocess.Popen(  # noqa: S603
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not port_open("127.0.0.1", port, 0.2):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("moto_server did not start")
        time.sleep(0.1)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


pytest_plugins = ["tests.app_fixtures"]
