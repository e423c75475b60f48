"""Projects (cohorts), sites and per-project roles."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Enum,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repository.db import Base
from repository.models._types import JSONType, UTCDateTime, utcnow

if TYPE_CHECKING:
    from repository.models.accounts import User


class Role(enum.StrEnum):
    """Roles a user holds in one project (admin and researcher are global, see policy)."""

    OWNER = "owner"
    INVESTIGATOR = "investigator"
    DAC_MEMBER = "dac_member"


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    diseases: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    licence: Mapped[str] = mapped_column(String(100), default="")
    data_use_conditions: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    is_public: Mapped[bool] = mapped_column(Boolean, default=True)
    # FAIR metadata (validated and versioned by repository/services/metadata.py)
    keywords: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    contact: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    funding: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    publications: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    site_names: Mapped[list[Any]] = mapped_column(JSONType, default=list)
    metadata_version: Mapped[int] = mapped_column(Integer, default=0)
    metadata_updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Per-project secret keying the subject pseudonyms, wrapped by the master key.
    pseudonym_secret_wrapped: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)

    memberships: Mapped[list[Membership]] = relationship(
        back_populates="project", cascade="all, delete-orphan"
    )
    sites: Mapped[list[Site]] = relationship(back_populates="project", cascade="all, delete-orphan")


class Site(Base):
    __tablename__ = "sites"
    __table_args__ = (UniqueConstraint("project_id", "code"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    code: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(300))
    country: Mapped[str] = mapped_column(String(2), default="")

    project: Mapped[Project] = relationship(back_populates="sites")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("user_id", "project_id", "role"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    project_id: Mapped[int] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[Role] = mapped_column(
        Enum(Role, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])
    )
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    user: Mapped[User] = relationship(back_populates="memberships")
    project: Mapped[Project] = relationship(back_populates="memberships")
    site: Mapped[Site | None] = relationship()
