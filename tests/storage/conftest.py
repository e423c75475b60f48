"""Fixtures of the storage tests: SQLite keyring, local store, moto S3 server over HTTP."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from repository.db import Base, make_engine
from repository.models.keys import SubjectKey
from repository.storage import (
    EncryptedObjectStore,
    KeyRing,
    LocalBackend,
    MasterKey,
    S3Backend,
)

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def missing(reason: str) -> None:
    """Skip with ``reason`` locally; fail under CI (same rule as the root conftest)."""
    if IN_CI:
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


S3_PART_BYTES = 5 << 20


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = make_engine(f"sqlite:///{tmp_path / 'keys.sqlite3'}")  # production settings (WAL)
    Base.metadata.create_all(eng, tables=[SubjectKey.__table__])  # type: ignore[list-item]
    yield eng
    eng.dispose()


@pytest.fixture
def session_factory(engine: Engine) -> Callable[[], Session]:
    return sessionmaker(engine, expire_on_commit=False)


@pytest.fixture
def master_key() -> MasterKey:
    return MasterKey(secrets.token_bytes(32), source="test")


@pytest.fixture
def keyring(session_factory: Callable[[], Session], master_key: MasterKey) -> KeyRing:
    return KeyRing(session_factory, master_key)


@pytest.fixture
def local_backend(tmp_path: Path) -> LocalBackend:
    return LocalBackend(tmp_path / "objects", create=True)


@pytest.fixture
def local_store(local_backend: LocalBackend, keyring: KeyRing) -> EncryptedObjectStore:
    return EncryptedObjectStore(local_backend, keyring)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real ``moto_server`` on 127.0.0.1 (HTTP), started for this session and killed after."""
    if not MOTO_SERVER.exists():
        missing(f"moto_server not installed at {MOTO_SERVER} (pip install 'moto[server]')")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(  # noqa: S603 - fixed executable from the venv
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    missing(f"moto_server did not start on {endpoint}")
                time.sleep(0.3)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials so boto3 never looks for real ones."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)


def make_client(endpoint: str) -> object:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(
            connect_timeout=2, retries={"max_attempts": 1}, s3={"addressing_style": "path"}
        ),
    )


@pytest.fixture
def s3_client_factory(aws_env: None) -> Callable[[str], object]:
    """Builds a boto3 S3 client for an endpoint (dummy credentials, one attempt)."""
    return make_client


@pytest.fixture
def dead_endpoint() -> str:
    """An HTTP endpoint on 127.0.0.1 where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def s3_client(moto_endpoint: str, aws_env: None) -> object:
    return make_client(moto_endpoint)


@pytest.fixture
def s3_bucket(s3_client: object) -> str:
    name = f"test-{secrets.token_hex(6)}"
    s3_client.create_bucket(Bucket=name)  # type: ignore[attr-defined]
    return name


@pytest.fixture
def s3_backend(s3_client: object, s3_bucket: str, moto_endpoint: str) -> S3Backend:
    return S3Backend(
        s3_bucket,
        "vault/v1",
        endpoint_url=moto_endpoint,
        client=s3_client,  # type: ignore[arg-type]
        part_bytes=S3_PART_BYTES,
    )


@pytest.fixture
def s3_store(s3_backend: S3Backend, keyring: KeyRing) -> EncryptedObjectStore:
    return EncryptedObjectStore(s3_backend, keyring)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.integration)])
def store(request: pytest.FixtureRequest, keyring: KeyRing) -> EncryptedObjectStore:
    """The encrypted store on each backend in turn."""
    if request.param == "local":
        backend: LocalBackend | S3Backend = request.getfixturevalue("local_backend")
    else:
        backend = request.getfixturevalue("s3_backend")
    return EncryptedObjectStore(backend, keyring)
