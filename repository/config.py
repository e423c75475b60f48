"""Configuration: every default in one place, overridable by an instance file and ``MYOVAULT_*``.

Order of precedence (last wins): :data:`DEFAULTS` → ``<home>/myovault.toml`` → environment
variables ``MYOVAULT_<NAME>`` → the dict given to :func:`repository.create_app`.

Embedded default: SQLite + local encrypted store + local worker, all under ``MYOVAULT_HOME``
(default ``./instance``): ``data/`` holds the database, objects and the local broker queue;
``keys/master.key`` holds the master key, outside the data directory.
Production: ``MYOVAULT_DATABASE_URL=postgresql+psycopg://…``, ``MYOVAULT_STORAGE=s3://bucket/prefix``
(+ ``MYOVAULT_S3_ENDPOINT_URL``), ``MYOVAULT_BROKER_URL=redis://…`` or ``amqp://…``,
``MYOVAULT_MASTER_KEY`` (base64) or ``MYOVAULT_MASTER_KEY_FILE``, ``MYOVAULT_SECRET_KEY``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from repository.errors import ConfigError

PREFIX = "MYOVAULT_"

DEFAULTS: dict[str, Any] = {
    "HOME": "instance",
    "DATA_DIR": None,  # default: <HOME>/data
    "DATABASE_URL": None,  # default: sqlite:///<DATA_DIR>/myovault.sqlite
    "STORAGE": None,  # default: <DATA_DIR>/objects ; or s3://bucket/prefix
    "S3_ENDPOINT_URL": None,
    "BROKER_URL": None,  # default: embedded filesystem queue under <DATA_DIR>/queue
    "EMBEDDED_WORKER": True,
    "MASTER_KEY": None,  # base64, production (from a secret manager / KMS)
    "MASTER_KEY_FILE": None,  # default: <HOME>/keys/master.key
    "SECRET_KEY": None,  # default: <HOME>/keys/flask-secret
    "COOKIE_SECURE": False,  # set true behind HTTPS (production)
    "SESSION_LIFETIME_S": 8 * 3600,
    "LOGIN_MAX_FAILURES": 5,
    "LOGIN_WINDOW_S": 15 * 60,
    "TOKEN_DEFAULT_DAYS": 90,
    "TOKEN_MAX_DAYS": 365,
    "MAX_UPLOAD_BYTES": 20 * 1024**3,
    "MAX_REQUEST_BYTES": 64 * 1024**2,
    "CHECK_SERVICES": True,  # fail at start when database / storage / key are unusable
    "DB_CONNECT_TIMEOUT_S": 5,
    # pipeline (issue 4): seconds identifiable originals stay in quarantine after verification
    "QUARANTINE_RETENTION_S": 0,
    "DEIDENTIFY_WORKERS": 0,  # processes de-identifying one upload; 0 = one per CPU (issue 3)
    "PIPELINE_FIT": True,
    "PIPELINE_SEGMENT": True,
    "DEMO_COHORT": "synthetic",  # synthetic | fast | none
    # notifications (issue 7): "outbox" keeps mail in the database; "smtp" sends it
    "MAIL_SENDER": "outbox",
    "SMTP_HOST": None,
    "SMTP_PORT": 25,
    "MAIL_FROM": "myovault@localhost",
    "SMTP_STARTTLS": False,  # upgrade the connection with STARTTLS (required if SMTP_USERNAME)
    "SMTP_USERNAME": None,
    "SMTP_PASSWORD": None,
    "SMTP_TIMEOUT_S": 10,
    "SMTP_CA_FILE": None,  # extra CA for the relay's certificate (always verified)
    # periodic jobs (issue 7): Celery beat (`myovault beat`) or the embedded scheduler
    "ACCESS_REMINDERS_INTERVAL_S": 24 * 3600,
    # every stored object re-read and its sha256 checked (issue 4, fixity); weekly
    "FIXITY_INTERVAL_S": 7 * 24 * 3600,
    # quarantine originals past QUARANTINE_RETENTION_S deleted
    "QUARANTINE_PURGE_INTERVAL_S": 3600,
    "ADMIN_EMAIL": None,  # shown to harvesters (OAI-PMH Identify)
    # DataCite DOI minting (issue 8); without it, snapshots get local persistent identifiers
    "DATACITE_API_URL": None,
    "DATACITE_REPOSITORY_ID": None,
    "DATACITE_PASSWORD": None,
    "DATACITE_PREFIX": None,
}

_BOOL = {
    "true": True,
    "1": True,
    "yes": True,
    "on": True,
    "false": False,
    "0": False,
    "no": False,
    "off": False,
}


def _coerce(name: str, raw: str) -> Any:
    """Convert an environment string to the type of the default it overrides."""
    default = DEFAULTS.get(name)
    if isinstance(default, bool):
        try:
            return _BOOL[raw.strip().lower()]
        except KeyError:
            raise ConfigError(f"{PREFIX}{name} must be true or false, not {raw!r}") from None
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{PREFIX}{name} must be an integer, not {raw!r}") from None
    return raw


def load_config(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Merge defaults, instance file, environment and ``overrides``; derive the embedded paths."""
    env = os.environ if environ is None else environ
    config: dict[str, Any] = dict(DEFAULTS)
    home = Path((overrides or {}).get("HOME") or env.get(PREFIX + "HOME") or DEFAULTS["HOME"])
    instance_file = home / "myovault.toml"
    if instance_file.is_file():
        try:
            from_file = tomllib.loads(instance_file.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{instance_file} is not valid TOML: {exc}") from exc
        for key, value in from_file.items():
            _check_known(key.upper(), str(instance_file))
            config[key.upper()] = value
    for key, raw in env.items():
        if key.startswith(PREFIX):
            name = key[len(PREFIX) :]
            if name in DEFAULTS:
                config[name] = _coerce(name, raw)
    for key, value in (overrides or {}).items():
        config[key] = value
    return derive_paths(config)


def _check_known(name: str, where: str) -> None:
    if name not in DEFAULTS:
        raise ConfigError(
            f"unknown setting {name!r} in {where}; known: {', '.join(sorted(DEFAULTS))}"
        )


def derive_paths(config: dict[str, Any]) -> dict[str, Any]:
    """Fill the embedded defaults that depend on ``HOME`` / ``DATA_DIR``."""
    home = Path(config["HOME"]).expanduser().resolve()
    config["HOME"] = str(home)
    data_dir = Path(config["DATA_DIR"] or home / "data").expanduser().resolve()
    config["DATA_DIR"] = str(data_dir)
    if not config["DATABASE_URL"]:
        config["DATABASE_URL"] = f"sqlite:///{data_dir / 'myovault.sqlite'}"
    if not config["STORAGE"]:
        config["STORAGE"] = str(data_dir / "objects")
    if not config["BROKER_URL"]:
        config["BROKER_URL"] = "filesystem://"
    config.setdefault("QUEUE_DIR", str(data_dir / "queue"))
    if not config["MASTER_KEY"] and not config["MASTER_KEY_FILE"]:
        config["MASTER_KEY_FILE"] = str(home / "keys" / "master.key")
    if config["MASTER_KEY_FILE"]:
        key_path = Path(config["MASTER_KEY_FILE"]).expanduser().resolve()
        config["MASTER_KEY_FILE"] = str(key_path)
        if key_path.is_relative_to(data_dir):
            raise ConfigError(
                f"the master key file {key_path} must live outside the data directory {data_dir}"
                " (a copy of the data must never carry the key that decrypts it)"
            )
    return config


def is_embedded_broker(config: Mapping[str, Any]) -> bool:
    return str(config["BROKER_URL"]).startswith("filesystem://")
