"""FAIR catalogue: project metadata versions, saved queries and frozen cohort snapshots."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, event
from sqlalchemy.orm import Mapped, mapped_column

from repository.db import Base
from repository.models._types import JSONType, UTCDateTime, utcnow


class ProjectMetadataVersion(Base):
    """One saved version of a project's public metadata (append-only)."""

    __tablename__ = "project_metadata_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    record: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)


class SavedQuery(Base):
    """A search a user named and kept; snapshots freeze its results."""

    __tablename__ = "saved_queries"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    query: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class CohortSnapshot(Base):
    """An immutable, versioned cohort: the exact subjects, visits and file hashes of a query.

    ``lineage`` is the hash of (project, canonical query); freezing the same query again gives
    the next ``version`` of that lineage. Rows are never updated (see the listener below).
    """

    __tablename__ = "cohort_snapshots"
    __table_args__ = (UniqueConstraint("lineage", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    pid: Mapped[str] = mapped_column(String(200), unique=True)
    pid_kind: Mapped[str] = mapped_column(String(16))  # local | doi
    lineage: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[int] = mapped_column(Integer)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    saved_query_id: Mapped[int | None] = mapped_column(
        ForeignKey("saved_queries.id", ondelete="SET NULL"), nullable=True
    )
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    query: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    subject_ids: Mapped[list[int]] = mapped_column(JSONType, default=list)
    visit_ids: Mapped[list[int]] = mapped_column(JSONType, default=list)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    manifest_sha256: Mapped[str] = mapped_column(String(64))
    n_subjects: Mapped[int] = mapped_column(Integer)
    n_visits: Mapped[int] = mapped_column(Integer)
    licence: Mapped[str] = mapped_column(String(100), default="")
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


@event.listens_for(CohortSnapshot, "before_update")
def _snapshots_are_immutable(_mapper: Any, _connection: Any, target: CohortSnapshot) -> None:
    raise ValueError(f"cohort snapshot {target.pid} is immutable")
