"""The MyoVault Flask extension: database, master key, key ring, object store, job dispatch.

Everything here is checked at start-up (unless ``CHECK_SERVICES`` is false, for ``init``):
a missing key file, an unreachable database or an absent bucket stops the app with a message
saying what to fix, instead of failing on the first request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from typing import Any

from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from repository.db import Database, make_engine
from repository.errors import ConfigError

log = logging.getLogger(__name__)
PROJECT_SECRET_CONTEXT = b"myovault:project-pseudonym-secret:v1"


class MyoVault:
    def __init__(self, app: Flask) -> None:
        self.app = app
        self.config = app.config
        self.db = Database(
            make_engine(
                app.config["DATABASE_URL"], connect_timeout_s=app.config["DB_CONNECT_TIMEOUT_S"]
            )
        )
        self._dispatch: Callable[[int], None] | None = None
        app.extensions["myovault"] = self
        if app.config["CHECK_SERVICES"]:
            try:
                self.check_startup()
            except ConfigError:
                self.db.engine.dispose()
                raise

    # --- start-up checks ---------------------------------------------------------------------
    def check_startup(self) -> None:
        problem = self.db.ping()
        if problem:
            raise ConfigError(
                f"{problem}\n  (MYOVAULT_DATABASE_URL={_redact(self.config['DATABASE_URL'])};"
                " is the server running and the database created? Then run `myovault db upgrade`.)"
            )
        try:
            _ = self.master_key
        except Exception as exc:  # MasterKeyError and OS errors, reported as configuration
            raise ConfigError(f"master key unusable: {exc}") from exc
        problem = self.storage_problem()
        if problem:
            raise ConfigError(f"object storage unusable: {problem}")

    # --- keys and storage --------------------------------------------------------------------
    @cached_property
    def master_key(self) -> Any:
        from repository.storage import MasterKey

        if self.config.get("MASTER_KEY"):
            return MasterKey.from_base64(self.config["MASTER_KEY"])
        return MasterKey.from_file(self.config["MASTER_KEY_FILE"])

    def wrap_project_secret(self, secret: bytes) -> bytes:
        """Wrap a project's pseudonym secret with the master key (never stored in clear)."""
        return bytes(self.master_key.wrap(secret, PROJECT_SECRET_CONTEXT))

    def unwrap_project_secret(self, blob: bytes) -> bytes:
        return bytes(self.master_key.unwrap(blob, PROJECT_SECRET_CONTEXT))

    @cached_property
    def keyring(self) -> Any:
        from repository.storage import KeyRing

        return KeyRing(self.db.session_factory, self.master_key)

    @cached_property
    def store(self) -> Any:
        from repository.storage import make_store

        return make_store(
            self.config["STORAGE"],
            endpoint_url=self.config["S3_ENDPOINT_URL"],
            keyring=self.keyring,
        )

    def storage_problem(self) -> str | None:
        from repository.storage.errors import StorageError

        try:
            self.store.check()
        except StorageError as exc:
            return str(exc)
        return None

    # --- jobs --------------------------------------------------------------------------------
    def dispatch(self, job_id: int) -> None:
        """Send a job to the worker (Celery), or to a test's replacement dispatcher."""
        if self._dispatch is not None:
            self._dispatch(job_id)
            return
        celery = self.app.extensions["myovault.celery"]
        celery.send_task("myovault.run_job", args=[job_id])

    def set_dispatcher(self, dispatch: Callable[[int], None] | None) -> None:
        self._dispatch = dispatch

    def broker_problem(self) -> str | None:
        celery = self.app.extensions["myovault.celery"]
        try:
            with celery.connection_for_write() as conn:
                conn.ensure_connection(max_retries=1, timeout=3)
        except Exception as exc:  # kombu raises many transport-specific errors
            return f"broker unreachable: {exc.__class__.__name__}: {exc}"
        return None

    def services(self) -> dict[str, Any]:
        """What job handlers may use."""
        return {"db": self.db, "store": self.store, "keyring": self.keyring, "config": self.config}

    def health(self) -> dict[str, Any]:
        checks = {
            "database": self.db.ping(),
            "storage": self._safe(self.storage_problem),
            "broker": self._safe(self.broker_problem),
        }
        return {
            "status": "ok" if not any(checks.values()) else "degraded",
            "checks": {
                k: {"ok": v is None, **({"error": v} if v else {})} for k, v in checks.items()
            },
        }

    @staticmethod
    def _safe(check: Callable[[], str | None]) -> str | None:
        try:
            return check()
        except (SQLAlchemyError, ConfigError, OSError) as exc:
            return str(exc)


def _redact(url: str) -> str:
    """Hide the password in a database URL."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url
