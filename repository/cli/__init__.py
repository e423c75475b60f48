"""The ``myovault`` command line: thin commands over the same services as the portal."""

from __future__ import annotations

import importlib
import os
import secrets
import signal
import subprocess  # noqa: S404  (the embedded worker is our own CLI)
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from flask import Flask

from repository.errors import ConfigError, MyoVaultError


@contextmanager
def _app(check: bool = True, **overrides: Any) -> Iterator[Flask]:
    """The app for one command; its database connections are closed when the command ends."""
    from repository import create_app

    try:
        app = create_app({"CHECK_SERVICES": check, **overrides})
    except ConfigError as exc:
        raise click.ClickException(f"configuration problem: {exc.message}") from exc
    try:
        yield app
    finally:
        app.extensions["myovault"].db.engine.dispose()


class LazyGroup(click.Group):
    """A group whose heavier commands (science libraries, torch) are imported only when used."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy  # command name -> "module:attribute"

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            module_name, attribute = self.lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            return command
        return super().get_command(ctx, cmd_name)


FEATURE_COMMANDS = {
    "anonymize": "repository.cli.anonymize:anonymize",
    "convert": "repository.cli.convert:convert",
    "fit": "repository.cli.fit:fit",
    "segment": "repository.cli.segment:segment",
    "train-segmentation": "repository.cli.segment:train_segmentation",
    "segment-corrections": "repository.cli.segment:segment_corrections",
    "access-reminders": "repository.cli.consent:access_reminders",
    "upload": "repository.cli.ingest:upload",
    "ingest": "repository.cli.ingest:ingest",
    "fixity": "repository.cli.ingest:fixity",
    "dicom-receiver": "repository.cli.ingest:dicom_receiver",
}


@click.group(cls=LazyGroup, lazy=FEATURE_COMMANDS)
@click.version_option(package_name="myovault")
def main() -> None:
    """MyoVault — secure repository for quantitative muscle MRI."""


# --- database ------------------------------------------------------------------------------
@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Apply all pending migrations (run by `init`)."""
    from repository import migrate

    with _app(check=False) as app:
        ext = app.extensions["myovault"]
        problem = ext.db.ping()
        if problem:
            raise click.ClickException(problem)
        migrate.upgrade(ext.db.engine)
        click.echo(f"database at revision {migrate.current_revision(ext.db.engine)}")


@db.command("current")
def db_current() -> None:
    """Show the database's schema revision."""
    from repository import migrate

    with _app(check=False) as app:
        engine = app.extensions["myovault"].db.engine
        click.echo(f"current: {migrate.current_revision(engine)}  head: {migrate.head_revision()}")


# --- set-up --------------------------------------------------------------------------------
def _ensure_private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def initialise(app: Flask) -> list[str]:
    """Create keys, schema and storage for a new embedded instance; return what was done."""
    from repository import migrate
    from repository.storage import generate_master_key_file

    cfg, done = app.config, []
    home = Path(cfg["HOME"])
    _ensure_private_dir(home)
    Path(cfg["DATA_DIR"]).mkdir(parents=True, exist_ok=True)
    if not cfg.get("MASTER_KEY"):
        key_file = Path(cfg["MASTER_KEY_FILE"])
        if not key_file.exists():
            _ensure_private_dir(key_file.parent)
            generate_master_key_file(key_file)
            done.append(f"master key written to {key_file} (back it up separately from the data)")
    if not cfg["SECRET_KEY_CONFIGURED"]:
        secret_file = home / "keys" / "flask-secret"
        if not secret_file.exists():
            _ensure_private_dir(secret_file.parent)
            secret_file.write_text(secrets.token_urlsafe(48))
            secret_file.chmod(0o600)
            done.append(f"session secret written to {secret_file}")
    if "://" not in cfg["STORAGE"]:
        Path(cfg["STORAGE"]).mkdir(parents=True, exist_ok=True)
    ext = app.extensions["myovault"]
    problem = ext.db.ping()
    if problem:
        raise click.ClickException(problem)
    migrate.upgrade(ext.db.engine)
    done.append(f"database schema at {migrate.current_revision(ext.db.engine)}")
    return done


@main.command()
@click.option("--admin-email", default="admin@myovault.local", show_default=True)
def init(admin_email: str) -> None:
    """Initialise the data directory, keys and database; create the first admin account."""
    from sqlalchemy import func, select

    from repository.models import User
    from repository.services import accounts
    from repository.services.context import SYSTEM

    with _app(check=False) as app:
        for line in initialise(app):
            click.echo(line)
    with _app() as app, app.extensions["myovault"].db.transaction() as session:
        if session.scalar(select(func.count(User.id))):
            click.echo("accounts exist already; no admin created")
            return
        password = secrets.token_urlsafe(12)
        accounts.create_user(
            session,
            SYSTEM,
            email=admin_email,
            name="Administrator",
            password=password,
            is_admin=True,
        )
    click.echo(f"admin account: {admin_email}  password: {password}  (shown once)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--threads", default=8, show_default=True, type=int)
def serve(host: str, port: int, threads: int) -> None:
    """Serve the portal (waitress) and, in embedded mode, a local worker process."""
    import waitress

    from repository.config import is_embedded_broker
    from repository.worker import EmbeddedScheduler

    with _app() as app:
        worker = scheduler = None
        if app.config["EMBEDDED_WORKER"] and is_embedded_broker(app.config):
            worker = subprocess.Popen(  # noqa: S603
                [sys.executable, "-m", "repository.cli", "worker", "--concurrency", "1"],
                env={**os.environ, "MYOVAULT_HOME": app.config["HOME"]},
            )
            click.echo(f"embedded worker started (pid {worker.pid})")
            scheduler = EmbeddedScheduler(app)  # periodic jobs (Celery beat's role)
            scheduler.start()
        click.echo(f"MyoVault portal on http://{host}:{port}/")
        try:
            waitress.serve(app, host=host, port=port, threads=threads, ident="MyoVault")
        finally:
            if scheduler is not None:
                scheduler.stop()
            if worker is not None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)


@main.command()
@click.option("--concurrency", default=2, show_default=True, type=int)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(concurrency: int, loglevel: str) -> None:
    """Run a Celery worker against the configured broker."""
    from repository.config import is_embedded_broker

    with _app() as app:
        celery = app.extensions["myovault.celery"]
        pool = "solo" if is_embedded_broker(app.config) or concurrency == 1 else "prefork"
        celery.worker_main(
            [
                "worker",
                f"--loglevel={loglevel}",
                f"--pool={pool}",
                f"--concurrency={concurrency}",
                "--without-gossip",
                "--without-mingle",
            ]
        )


@main.command()
@click.option("--loglevel", default="INFO", show_default=True)
@click.option(
    "--schedule-file",
    default=None,
    help="where beat keeps its last-run times (default: a file in the temporary directory)",
)
def beat(loglevel: str, schedule_file: str | None) -> None:
    """Run Celery beat: sends the periodic jobs (access reminders) to the workers. Run one."""
    import tempfile

    with _app() as app:
        celery = app.extensions["myovault.celery"]
        schedule = schedule_file or str(Path(tempfile.gettempdir()) / "myovault-beat-schedule")
        celery.start(["beat", f"--loglevel={loglevel}", f"--schedule={schedule}"])


# --- audit ---------------------------------------------------------------------------------
@main.group()
def audit() -> None:
    """The audit log."""


@audit.command("verify")
def audit_verify() -> None:
    """Check the audit log's hash chain; exit 1 if any event was modified or deleted."""
    from repository.services import audit as audit_service

    with _app() as app, app.extensions["myovault"].db.transaction() as session:
        report = audit_service.verify_chain(session)
    if report.ok:
        click.echo(f"audit chain OK: {report.events} events, head {report.head_hash}")
        return
    for problem in report.problems:
        click.echo(f"event {problem.seq}: {problem.problem}", err=True)
    raise SystemExit(1)


# --- accounts and projects -----------------------------------------------------------------
@main.group()
def user() -> None:
    """Accounts."""


@user.command("create")
@click.argument("email")
@click.option("--name", required=True)
@click.option("--admin", is_flag=True)
@click.password_option(
    prompt_required=False,
    default=None,
    help="initial password (default: a random one, printed once)",
)
def user_create(email: str, name: str, admin: bool, password: str | None) -> None:
    from repository.services import accounts
    from repository.services.context import SYSTEM

    password = password or secrets.token_urlsafe(12)
    try:
        with _app() as app, app.extensions["myovault"].db.transaction() as session:
            accounts.create_user(
                session, SYSTEM, email=email, name=name, password=password, is_admin=admin
            )
    except MyoVaultError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"created {email}  password: {password}  (shown once)")


@user.command("reset-password")
@click.argument("email")
def user_reset_password(email: str) -> None:
    """Set a new random password (printed once) and end the user's sessions."""
    from repository.services import accounts
    from repository.services.context import SYSTEM

    password = secrets.token_urlsafe(12)
    try:
        with _app() as app, app.extensions["myovault"].db.transaction() as session:
            accounts.reset_password(session, SYSTEM, email=email, password=password)
    except MyoVaultError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(f"new password for {email}: {password}  (shown once)")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="set up the demo and exit")
@click.pass_context
def demo(ctx: click.Context, host: str, port: int, no_serve: bool) -> None:
    """Initialise a demo instance with an account per role, then serve it."""
    from repository.demo import create_demo

    with _app(check=False) as app:
        for line in initialise(app):
            click.echo(line)
    with _app() as app:
        for line in create_demo(app):
            click.echo(line)
    if not no_serve:
        ctx.invoke(serve, host=host, port=port)


if __name__ == "__main__":
    main()
