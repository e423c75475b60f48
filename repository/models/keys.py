"""Wrapped per-subject data keys (table ``subject_keys``).

A row holds one AES-256 data key, wrapped (AES-256-GCM) by the master key, which itself never
sits in the database. ``subject`` is the subject's pseudonym, or ``"*system*"`` for objects that
belong to no subject. At most one non-destroyed key exists per subject (partial unique index).
Destroying a key overwrites ``wrapped_key`` and sets ``destroyed_at``; rows are never deleted so
that reads of shredded objects report "destroyed" rather than "unknown key".
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from repository.db import Base


class SubjectKey(Base):
    """One wrapped data key of a subject (or of the system scope)."""

    __tablename__ = "subject_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Public identifier of the data key, written into every object header (32 hex chars).
    key_id: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    #: Subject pseudonym, or ``"*system*"`` for the non-subject scope.
    subject: Mapped[str] = mapped_column(String(128), nullable=False, index=True)
    #: Wrapping algorithm of ``wrapped_key`` (versioned; unknown values fail closed).
    algorithm: Mapped[str] = mapped_column(String(32), nullable=False)
    #: Fingerprint of the master key that wrapped this key (not secret).
    master_key_id: Mapped[str] = mapped_column(String(32), nullable=False)
    #: nonce | ciphertext | tag; overwritten with zero bytes when the key is destroyed.
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    __table_args__ = (
        Index(
            "uq_subject_keys_active_subject",
            "subject",
            unique=True,
            sqlite_where=text("destroyed_at IS NULL"),
            postgresql_where=text("destroyed_at IS NULL"),
        ),
    )

    def __repr__(self) -> str:
        state = "destroyed" if self.destroyed_at else "active"
        return f"<SubjectKey {self.key_id} subject={self.subject!r} {state}>"
