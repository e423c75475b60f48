"""Consent records, access requests, committee work (votes, comments, settings), grants,
download links, downloads and the notification outbox."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from repository.db import Base
from repository.models._types import JSONType, UTCDateTime, utcnow


class Consent(Base):
    """One version of a participant's consent; versions are appended, never overwritten."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("subject_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    form: Mapped[str] = mapped_column(String(200))
    form_version: Mapped[str] = mapped_column(String(50))
    signed_on: Mapped[date] = mapped_column(Date)
    duo_terms: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    lawful_basis: Mapped[str] = mapped_column(String(100))  # GDPR Art. 6(1), e.g. "6(1)(e)"
    recontact_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    withdrawn_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    # added by 0003_consent
    special_category_basis: Mapped[str] = mapped_column(String(32), default="")  # Art. 9(2)
    source: Mapped[str] = mapped_column(String(16), default="ui")  # ui | csv | api
    withdrawal_reason: Mapped[str] = mapped_column(Text, default="")


class DacSettings(Base):
    """A project's data-access committee rules (absent row: the defaults of services.access)."""

    __tablename__ = "dac_settings"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), unique=True)
    rule: Mapped[str] = mapped_column(String(16), default="majority")  # majority|unanimity|quorum
    quorum: Mapped[int] = mapped_column(Integer, default=2)
    deadline_days: Mapped[int] = mapped_column(Integer, default=14)
    grant_days: Mapped[int] = mapped_column(Integer, default=365)
    conditions: Mapped[str] = mapped_column(Text, default="")
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class AccessRequest(Base):
    __tablename__ = "access_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    requester_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    duo_terms: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    institution: Mapped[str] = mapped_column(String(300), default="")
    data_level: Mapped[str] = mapped_column(String(32), default="metrics")  # e.g. "images,maps"
    query: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(32), default="pending", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # added by 0003_consent
    snapshot_id: Mapped[int | None] = mapped_column(Integer, nullable=True)  # CohortSnapshot id
    intended_use: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    matched_subject_ids: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    exclusions: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)  # reason -> n
    ethics_object_id: Mapped[int | None] = mapped_column(
        ForeignKey("stored_objects.id"), nullable=True
    )
    duration_days: Mapped[int] = mapped_column(Integer, default=365)
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    escalated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Vote(Base):
    """A committee member's current vote on a request (changes are audited)."""

    __tablename__ = "votes"
    __table_args__ = (UniqueConstraint("request_id", "user_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    vote: Mapped[str] = mapped_column(String(16))  # approve | refuse | abstain
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Comment(Base):
    """Committee discussion on a request (visible to the committee only)."""

    __tablename__ = "request_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    body: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Decision(Base):
    """The committee's recorded decision on a request, with its reason."""

    __tablename__ = "decisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(ForeignKey("access_requests.id"), index=True)
    decided_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    outcome: Mapped[str] = mapped_column(String(16))  # approved | refused
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Grant(Base):
    __tablename__ = "grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int | None] = mapped_column(ForeignKey("access_requests.id"), nullable=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    data_level: Mapped[str] = mapped_column(String(32), default="metrics")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    conditions_accepted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # added by 0003_consent
    snapshot_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    subject_ids: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    conditions: Mapped[str] = mapped_column(Text, default="")
    revoke_reason: Mapped[str] = mapped_column(Text, default="")


class DownloadLink(Base):
    """A short-lived, single-user link to a package; only the token's hash is stored."""

    __tablename__ = "download_links"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    subject_id: Mapped[int | None] = mapped_column(ForeignKey("subjects.id"), nullable=True)
    layout: Mapped[str] = mapped_column(String(16), default="bagit")  # bagit | zip
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Download(Base):
    __tablename__ = "downloads"

    id: Mapped[int] = mapped_column(primary_key=True)
    grant_id: Mapped[int] = mapped_column(ForeignKey("grants.id"), index=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    contents: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    bytes_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    # added by 0003_consent
    subject_ids: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    status: Mapped[str] = mapped_column(String(16), default="started")  # started|complete|failed


class Notification(Base):
    """The outbox: every message is stored, then handed to the configured sender after commit."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True, index=True)
    to_email: Mapped[str] = mapped_column(String(320))
    kind: Mapped[str] = mapped_column(String(48))
    subject: Mapped[str] = mapped_column(String(300))
    body: Mapped[str] = mapped_column(Text)
    project_id: Mapped[int | None] = mapped_column(ForeignKey("projects.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
