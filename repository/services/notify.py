"""Notifications: an outbox table plus a pluggable sender that runs after commit.

Every message is first written to :class:`~repository.models.Notification` in the caller's
transaction (so it exists exactly when the change it announces exists). After commit the
configured :class:`Sender` delivers it and ``sent_at`` (or ``error``) is recorded.

Senders (``MAIL_SENDER`` setting): ``outbox`` (default: keep in the table only, for the
embedded mode and tests), ``smtp`` (``SMTP_HOST``, ``SMTP_PORT``, ``MAIL_FROM``,
``SMTP_STARTTLS``, ``SMTP_USERNAME``/``SMTP_PASSWORD``, ``SMTP_CA_FILE``), or any object with
``send(to, subject, body)`` installed with :func:`set_sender` (tests use
:class:`CapturingSender`). A misconfigured sender never blocks the change being announced:
the outbox row records the configuration problem instead.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from repository.errors import ConfigError
from repository.models import Membership, Notification, Role, User
from repository.models._types import utcnow
from repository.uow import after_commit

log = logging.getLogger(__name__)


class Sender(Protocol):
    def send(self, to: str, subject: str, body: str) -> None: ...


class OutboxSender:
    """Keeps messages in the outbox table only (nothing leaves the machine)."""

    delivers = False

    def send(self, to: str, subject: str, body: str) -> None:
        return None


@dataclass
class CapturingSender:
    """Records every message (tests)."""

    messages: list[tuple[str, str, str]] = field(default_factory=list)
    delivers = True

    def send(self, to: str, subject: str, body: str) -> None:
        self.messages.append((to, subject, body))


class MailError(Exception):
    """Delivery failed; the message says what to check (recorded on the outbox row)."""


@dataclass(frozen=True)
class SmtpSender:
    """Sends through an SMTP server (``smtplib``), optionally upgraded with STARTTLS and logged in.

    A password is never sent over a clear connection: ``username`` requires ``starttls``.
    ``ca_file`` adds a trusted CA for the server certificate (e.g. an internal relay); the
    certificate and host name are always verified.
    """

    host: str
    port: int
    sender: str
    starttls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout_s: float = 10.0
    ca_file: str | None = None
    delivers = True

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("MAIL_SENDER is smtp but SMTP_HOST is not set")
        if not 0 < self.port < 65536:
            raise ConfigError(f"SMTP_PORT must be between 1 and 65535, not {self.port}")
        if "@" not in self.sender:
            raise ConfigError(f"MAIL_FROM must be an e-mail address, not {self.sender!r}")
        if self.username and not self.starttls:
            raise ConfigError(
                "SMTP_USERNAME is set but SMTP_STARTTLS is false: the password would cross the"
                " network in clear; set MYOVAULT_SMTP_STARTTLS=true"
            )
        if self.username and not self.password:
            raise ConfigError("SMTP_USERNAME is set but SMTP_PASSWORD is empty")
        if self.password and not self.username:
            raise ConfigError("SMTP_PASSWORD is set but SMTP_USERNAME is empty")
        if self.ca_file and not Path(self.ca_file).is_file():
            raise ConfigError(f"SMTP_CA_FILE {self.ca_file} does not exist")

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(cafile=self.ca_file)
        return context

    def send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(body)
        where = f"{self.host}:{self.port}"
        try:
            with smtplib.SMTP(self.host, self.port, timeout=self.timeout_s) as smtp:
                smtp.ehlo()
                if self.starttls:
                    if not smtp.has_extn("starttls"):
                        raise MailError(
                            f"the SMTP server {where} does not offer STARTTLS"
                            " (SMTP_STARTTLS is true): refusing to continue in clear"
                        )
                    smtp.starttls(context=self._tls_context())
                    smtp.ehlo()
                if self.username:
                    if not smtp.has_extn("auth"):
                        raise MailError(
                            f"the SMTP server {where} does not offer AUTH but SMTP_USERNAME is set"
                        )
                    smtp.login(self.username, self.password or "")
                smtp.send_message(message)
        except MailError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(
                f"the SMTP server {where} refused the login of {self.username!r}"
                f" ({exc.smtp_code} {_text(exc.smtp_error)}): check SMTP_USERNAME/SMTP_PASSWORD"
            ) from exc
        except smtplib.SMTPRecipientsRefused as exc:
            code, reason = next(iter(exc.recipients.values()))
            raise MailError(
                f"the SMTP server {where} refused the recipient ({code} {_text(reason)})"
            ) from exc
        except ssl.SSLError as exc:
            raise MailError(
                f"TLS with the SMTP server {where} failed ({exc.reason or exc}):"
                " is its certificate valid for this host name (or set SMTP_CA_FILE)?"
            ) from exc
        except smtplib.SMTPResponseException as exc:
            if exc.smtp_code == 530:  # "530 Must issue a STARTTLS command first" / auth required
                raise MailError(
                    f"the SMTP server {where} answered 530 {_text(exc.smtp_error)}: it requires"
                    " STARTTLS or a login first; set SMTP_STARTTLS=true (and SMTP_USERNAME/"
                    "SMTP_PASSWORD if it asks for a login)"
                ) from exc
            if not isinstance(exc, smtplib.SMTPSenderRefused):
                raise MailError(
                    f"the SMTP server {where} answered {exc.smtp_code} {_text(exc.smtp_error)}"
                ) from exc
            raise MailError(
                f"the SMTP server {where} refused the sender {self.sender!r}"
                f" ({exc.smtp_code} {_text(exc.smtp_error)}): check MAIL_FROM"
            ) from exc
        except (OSError, smtplib.SMTPException) as exc:
            raise MailError(
                f"cannot reach the SMTP server {where}"
                f" ({exc.__class__.__name__}: {exc}): check SMTP_HOST/SMTP_PORT"
            ) from exc


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


_OVERRIDE: dict[str, Sender] = {}


def set_sender(sender: Sender | None) -> None:
    """Install ``sender`` for this process (tests); ``None`` restores the configured one."""
    _OVERRIDE.clear()
    if sender is not None:
        _OVERRIDE["sender"] = sender


def sender_from_config(config: Any) -> Sender:
    """The sender named by ``MAIL_SENDER``; unknown names and unusable SMTP settings raise
    :class:`~repository.errors.ConfigError` saying what to fix (never a silent default)."""
    if "sender" in _OVERRIDE:
        return _OVERRIDE["sender"]
    name = str(config.get("MAIL_SENDER", "outbox"))
    if name == "outbox":
        return OutboxSender()
    if name == "smtp":
        try:
            port, timeout = (
                int(config.get("SMTP_PORT", 25)),
                float(config.get("SMTP_TIMEOUT_S", 10)),
            )
        except (TypeError, ValueError):
            raise ConfigError("SMTP_PORT and SMTP_TIMEOUT_S must be numbers") from None
        return SmtpSender(
            str(config.get("SMTP_HOST") or ""),
            port,
            str(config.get("MAIL_FROM", "myovault@localhost")),
            starttls=bool(config.get("SMTP_STARTTLS", False)),
            username=config.get("SMTP_USERNAME") or None,
            password=config.get("SMTP_PASSWORD") or None,
            timeout_s=timeout,
            ca_file=config.get("SMTP_CA_FILE") or None,
        )
    raise ConfigError(f"unknown MAIL_SENDER {name!r} (outbox or smtp)")


@dataclass(frozen=True)
class UnusableSender:
    """Stands in for a misconfigured sender: every delivery fails with the configuration problem,
    recorded on the outbox row, while the change that triggered the message still commits."""

    problem: str
    delivers = True

    def send(self, to: str, subject: str, body: str) -> None:
        raise MailError(f"mail is misconfigured: {self.problem}")


def _current_sender() -> Sender:
    if "sender" in _OVERRIDE:
        return _OVERRIDE["sender"]
    try:
        from flask import current_app

        config = current_app.config
    except RuntimeError:  # no app context (CLI without app, plain scripts): keep in the outbox
        return OutboxSender()
    try:
        return sender_from_config(config)
    except ConfigError as exc:
        log.error("notifications cannot be delivered: %s", exc.message)
        return UnusableSender(exc.message)


def notify(
    session: Session,
    recipients: Iterable[User],
    *,
    kind: str,
    subject: str,
    body: str,
    project_id: int | None = None,
) -> list[Notification]:
    """Queue one message per distinct recipient; delivered after the transaction commits."""
    rows: list[Notification] = []
    seen: set[int] = set()
    for user in recipients:
        if user.id in seen or not user.is_active:
            continue
        seen.add(user.id)
        row = Notification(
            user_id=user.id,
            to_email=user.email,
            kind=kind,
            subject=subject,
            body=body,
            project_id=project_id,
        )
        session.add(row)
        rows.append(row)
    if not rows:
        return rows
    session.flush()
    messages = [(r.id, r.to_email, r.subject, r.body) for r in rows]
    bind = session.get_bind()
    sender = _current_sender()

    def deliver() -> None:
        if not getattr(sender, "delivers", True):
            return
        results: dict[int, str] = {}
        for message_id, to, subj, text in messages:
            try:
                sender.send(to, subj, text)
                results[message_id] = ""
            except Exception as exc:  # delivery problems are recorded, never lose the change
                log.warning("notification %s to %s failed: %s", message_id, to, exc)
                results[message_id] = f"{exc.__class__.__name__}: {exc}"
        with Session(bind=bind) as s, s.begin():
            for message_id, error in results.items():
                row = s.get(Notification, message_id)
                if row is not None:
                    row.sent_at, row.error = (utcnow(), "") if not error else (None, error)

    after_commit(session, deliver)
    return rows


def project_members(session: Session, project_id: int, role: Role) -> list[User]:
    return list(
        session.scalars(
            select(User)
            .join(Membership, Membership.user_id == User.id)
            .where(Membership.project_id == project_id, Membership.role == role)
            .order_by(User.id)
        )
    )


def inbox(session: Session, user: User, limit: int = 50) -> list[Notification]:
    return list(
        session.scalars(
            select(Notification)
            .where(Notification.user_id == user.id)
            .order_by(Notification.id.desc())
            .limit(limit)
        )
    )
