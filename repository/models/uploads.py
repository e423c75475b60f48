"""Uploads: resumable upload sessions, their files and chunks in the encrypted quarantine.

An :class:`Upload` is one push of data into a project (web, CLI, C-STORE or local ingest). Each
:class:`UploadFile` is one file as sent (a DICOM file or a zip archive; zip members become files
of their own with ``parent_id`` set). Bytes arrive as :class:`UploadChunk` rows, each an encrypted
object under ``quarantine/…`` whose sha256 was checked on arrival. Nothing is processed before a
file is complete and its whole-file sha256 verified.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Enum, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repository.db import Base
from repository.models._types import JSONType, UTCDateTime, utcnow


def _enum(cls: type[enum.Enum], length: int = 24) -> Enum:
    return Enum(
        cls, native_enum=False, length=length, values_callable=lambda e: [m.value for m in e]
    )


class UploadState(enum.StrEnum):
    OPEN = "open"  # receiving bytes
    PROCESSING = "processing"  # complete; pipeline running
    DONE = "done"  # every file processed, nothing needs attention
    ATTENTION = "attention"  # processed, some files need attention
    CANCELLED = "cancelled"


class FileState(enum.StrEnum):
    UPLOADING = "uploading"
    RECEIVED = "received"  # complete, whole-file sha256 verified, in quarantine
    UNPACKED = "unpacked"  # a zip archive whose members became files of their own
    DEIDENTIFIED = "deidentified"  # de-identified and verified; original deleted
    CONVERTED = "converted"  # part of an ORMIR-MIDS series
    NOT_CONVERTED = "not_converted"  # de-identified, but no ORMIR-MIDS output (with reason)
    DUPLICATE = "duplicate"  # identical content already received in this project
    QUARANTINED = "quarantined"  # kept in quarantine with a reason (needs attention)
    REJECTED = "rejected"  # not stored at all (non-DICOM, bad archive member), with reason


ATTENTION_STATES = frozenset({FileState.QUARANTINED, FileState.REJECTED, FileState.NOT_CONVERTED})


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="web")  # web, cli, cstore, local
    label: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[UploadState] = mapped_column(_enum(UploadState), default=UploadState.OPEN)
    message: Mapped[str] = mapped_column(Text, default="")
    # anonymizer report (no file names: files are referred to by hash) and conversion summary
    report: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    files: Mapped[list[UploadFile]] = relationship(
        back_populates="upload", order_by="UploadFile.id"
    )


class UploadFile(Base):
    __tablename__ = "upload_files"
    __table_args__ = (UniqueConstraint("upload_id", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id"), index=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("upload_files.id"), nullable=True)
    # path as sent (may carry identifiers: visible only to the upload's project members)
    path: Mapped[str] = mapped_column(String(1000))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64), index=True)  # declared by the client
    received_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[FileState] = mapped_column(_enum(FileState), default=FileState.UPLOADING)
    reason: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    duplicate_of_id: Mapped[int | None] = mapped_column(
        ForeignKey("upload_files.id"), nullable=True
    )
    # after de-identification: the de-identified object and where it went
    subject_pseudonym: Mapped[str] = mapped_column(String(64), default="")
    deid_object_id: Mapped[int | None] = mapped_column(
        ForeignKey("stored_objects.id"), nullable=True
    )
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True)
    # the anonymizer's result for this file (reason codes, action counts; no identifiers)
    deid_result: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    upload: Mapped[Upload] = relationship(back_populates="files")
    chunks: Mapped[list[UploadChunk]] = relationship(order_by="UploadChunk.offset")


class UploadChunk(Base):
    """One received chunk: an encrypted quarantine object covering [offset, offset + size)."""

    __tablename__ = "upload_chunks"
    __table_args__ = (UniqueConstraint("file_id", "offset"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    file_id: Mapped[int] = mapped_column(ForeignKey("upload_files.id"), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(500), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
