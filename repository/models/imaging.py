"""Pseudonymous imaging data: subjects, visits, series, stored objects, derivatives, metrics."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from repository.db import Base
from repository.models._types import JSONType, UTCDateTime, utcnow


class Subject(Base):
    """A participant, known only by the pseudonym derived from the project's keyed HMAC."""

    __tablename__ = "subjects"
    __table_args__ = (UniqueConstraint("project_id", "pseudonym"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    site_id: Mapped[int | None] = mapped_column(ForeignKey("sites.id"), nullable=True)
    pseudonym: Mapped[str] = mapped_column(String(64))
    sex: Mapped[str] = mapped_column(String(1), default="")  # M, F, O or ""
    disease: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    visits: Mapped[list[Visit]] = relationship(back_populates="subject")


class Visit(Base):
    """An imaging session (visit): age at scan and days since the subject's first visit."""

    __tablename__ = "visits"
    __table_args__ = (UniqueConstraint("subject_id", "label"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    label: Mapped[str] = mapped_column(String(32))  # ORMIR-MIDS ses-<label>
    study_uid: Mapped[str] = mapped_column(String(64), default="")  # remapped UID
    age_at_scan_years: Mapped[float | None] = mapped_column(Float, nullable=True)
    day_offset: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    subject: Mapped[Subject] = relationship(back_populates="visits")
    series: Mapped[list[Series]] = relationship(back_populates="visit")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id"), index=True)
    series_uid: Mapped[str] = mapped_column(String(64), index=True)  # remapped UID
    contrast: Mapped[str] = mapped_column(String(32), index=True)  # MESE, MEGRE, DIXON_WATER, …
    vendor: Mapped[str] = mapped_column(String(64), default="", index=True)
    model: Mapped[str] = mapped_column(String(64), default="")
    field_strength_t: Mapped[float | None] = mapped_column(Float, nullable=True, index=True)
    anatomy: Mapped[str] = mapped_column(String(32), default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    mids_path: Mapped[str] = mapped_column(String(500), default="")
    object_id: Mapped[int | None] = mapped_column(ForeignKey("stored_objects.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    visit: Mapped[Visit] = relationship(back_populates="series")


class StoredObject(Base):
    """One encrypted object in the store; the key never contains an identifier."""

    __tablename__ = "stored_objects"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(500), unique=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    subject_id: Mapped[int | None] = mapped_column(
        ForeignKey("subjects.id"), nullable=True, index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    verified_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Derivative(Base):
    """A map or label image computed by the pipeline, with the software that made it."""

    __tablename__ = "derivatives"

    id: Mapped[int] = mapped_column(primary_key=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id"), index=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True)
    kind: Mapped[str] = mapped_column(String(32))  # FF, T2, B1, B0, R2STAR, LABELS, METRICS_TSV
    object_id: Mapped[int] = mapped_column(ForeignKey("stored_objects.id"))
    software: Mapped[str] = mapped_column(String(100))
    software_version: Mapped[str] = mapped_column(String(50))
    model_version: Mapped[str] = mapped_column(String(100), default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    version: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)


class MuscleMetric(Base):
    """One per-muscle number, indexed for search (e.g. semimembranosus, L, ff_mean, 31.2, %)."""

    __tablename__ = "muscle_metrics"
    __table_args__ = (Index("ix_muscle_metrics_search", "muscle", "side", "metric", "value"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id"), index=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id"), index=True)
    derivative_id: Mapped[int | None] = mapped_column(ForeignKey("derivatives.id"), nullable=True)
    muscle: Mapped[str] = mapped_column(String(64))
    side: Mapped[str] = mapped_column(String(1))  # L or R
    metric: Mapped[str] = mapped_column(String(32))
    value: Mapped[float] = mapped_column(Float)
    unit: Mapped[str] = mapped_column(String(16))
    model_version: Mapped[str] = mapped_column(String(100), default="")
