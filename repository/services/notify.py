"""Notifications: an outbox table plus a pluggable sender that runs after commit.

Every message is first written to :class:`~repository.models.Notification` in the caller's
transaction (so it exists exactly when the change it announces exists). After commit the
configured :class:`Sender` delivers it and ``sent_at`` (or ``error``) is recorded.

Senders (``MAIL_SENDER`` setting): ``outbox`` (default: keep in the table only, for the
embedded mode and tests), ``smtp`` (``SMTP_HOST``, ``SMTP_PORT``, ``MAIL_FROM``), or any
object with ``send(to, subject, body)`` installed with :func:`set_sender` (tests use
:class:`CapturingSender`).
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

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


@dataclass(frozen=True)
class SmtpSender:
    host: str
    port: int
    sender: str
    delivers = True

    def send(self, to: str, subject: str, body: str) -> None:
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = self.sender, to, subject
        message.set_content(body)
        with smtplib.SMTP(self.host, self.port, timeout=10) as smtp:
            smtp.send_message(message)


_OVERRIDE: dict[str, Sender] = {}


def set_sender(sender: Sender | None) -> None:
    """Install ``sender`` for this process (tests); ``None`` restores the configured one."""
    _OVERRIDE.clear()
    if sender is not None:
        _OVERRIDE["sender"] = sender


def sender_from_config(config: Any) -> Sender:
    """The sender named by ``MAIL_SENDER``; unknown names are an error, not a silent default."""
    if "sender" in _OVERRIDE:
        return _OVERRIDE["sender"]
    name = str(config.get("MAIL_SENDER", "outbox"))
    if name == "outbox":
        return OutboxSender()
    if name == "smtp":
        return SmtpSender(
            str(config.get("SMTP_HOST", "localhost")),
            int(config.get("SMTP_PORT", 25)),
            str(config.get("MAIL_FROM", "myovault@localhost")),
        )
    raise ValueError(f"unknown MAIL_SENDER {name!r} (outbox or smtp)")


def _current_sender() -> Sender:
    if "sender" in _OVERRIDE:
        return _OVERRIDE["sender"]
    try:
        from flask import current_app

        return sender_from_config(current_app.config)
    except RuntimeError:  # no app context (CLI without app, plain scripts): keep in the outbox
        return OutboxSender()


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
