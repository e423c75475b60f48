"""The search index: a narrow row per subject, its facet profile, and FF per visit.

Maintained by :mod:`repository.services.search_index` (``refresh_subject`` and the session
hooks there); never edited by hand.

* ``search_profiles``: each distinct combination of facet values (disease, sex, age decade,
  number of visits, vendors, field strengths, sequences, anatomies, muscles segmented) once.
  Multi-valued facets are stored as sorted ``|a|b|`` strings. Facet filters select profiles;
  facet counts group subjects by ``(project_id, profile_id)`` — two integers — and the few
  hundred resulting groups are split into per-value counts in Python, exactly.
* ``search_subjects``: one row per subject with its profile, consent state and age range.
* ``search_visit_ff``: the fat fraction of every muscle-side of one visit in one row, so the
  heat map reads one row per visit instead of 22 metric rows.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from qmri.muscles import THIGH_MUSCLES
from repository.db import Base
from repository.models.imaging import MuscleMetric, Subject

#: The 11 thigh muscles (:data:`qmri.muscles.THIGH_MUSCLES`, which segmentation uses too): the
#: position of a muscle is its bit in ``search_profiles.muscle_mask`` and its columns in
#: ``search_visit_ff`` are ``ff_<position>_<side>``.
MUSCLES: tuple[str, ...] = THIGH_MUSCLES


def ff_column(muscle: str, side: str) -> str:
    """Column of ``search_visit_ff`` holding the FF of ``muscle`` on ``side`` (L or R)."""
    return f"ff_{MUSCLES.index(muscle)}_{side}"


class SearchProfile(Base):
    """One distinct combination of facet values (shared by many subjects; never deleted)."""

    __tablename__ = "search_profiles"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: canonical JSON of the other columns (unique)
    key: Mapped[str] = mapped_column(Text, unique=True)
    disease: Mapped[str] = mapped_column(String(100), default="")
    sex: Mapped[str] = mapped_column(String(1), default="")
    #: decade of the youngest age at scan (30 for 30–39; None: no age recorded)
    age_decade: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_visits: Mapped[int] = mapped_column(Integer, default=0)
    vendors: Mapped[str] = mapped_column(Text, default="")
    #: field strengths in millitesla (``|1500|3000|``), exact in SQL and Python alike
    field_strengths: Mapped[str] = mapped_column(Text, default="")
    sequences: Mapped[str] = mapped_column(Text, default="")
    anatomies: Mapped[str] = mapped_column(Text, default="")
    #: muscles with at least one metric (muscles segmented): bit i for ``MUSCLES[i]``
    muscle_mask: Mapped[int] = mapped_column(Integer, default=0)


class SearchSubject(Base):
    """Search row of one subject (``shareable`` ignores expiry: compared at query time)."""

    __tablename__ = "search_subjects"
    __table_args__ = (
        # the rows search may ever return, in listing order (keyset pagination)
        Index(
            "ix_search_subjects_listing",
            "project_id",
            "pseudonym",
            sqlite_where=text("shareable"),
            postgresql_where=text("shareable"),
        ),
    )

    subject_id: Mapped[int] = mapped_column(
        ForeignKey("subjects.id", ondelete="CASCADE"), primary_key=True
    )
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    profile_id: Mapped[int] = mapped_column(ForeignKey("search_profiles.id"), index=True)
    pseudonym: Mapped[str] = mapped_column(String(64))
    #: not erased, and the latest consent version exists and is not withdrawn
    shareable: Mapped[bool] = mapped_column(Boolean)
    #: expiry of the latest consent version (None: does not expire)
    consent_expires_on: Mapped[date | None] = mapped_column(Date, nullable=True)
    #: youngest and oldest age at scan over the visits (None: no age recorded)
    age_lo: Mapped[float | None] = mapped_column(Float, nullable=True)
    age_hi: Mapped[float | None] = mapped_column(Float, nullable=True)


#: Fat fraction (%) of each muscle-side at one visit (None: not measured); a Core table
#: because its 22 value columns are generated from :data:`MUSCLES`.
search_visit_ff = Table(
    "search_visit_ff",
    Base.metadata,
    Column("visit_id", ForeignKey("visits.id", ondelete="CASCADE"), primary_key=True),
    Column("subject_id", ForeignKey("subjects.id", ondelete="CASCADE"), nullable=False, index=True),
    *(Column(ff_column(m, side), Float, nullable=True) for m in MUSCLES for side in ("L", "R")),
)


# Indexes on imaging tables that search relies on, created by migration 0004 (declared here so
# the models match the schema). Per-muscle conditions (metric, muscle, side, value range) are
# answered from the first alone: an index-only scan yields the matching subject ids (see
# search._condition_clause); the second serves reading a subject's metrics (index refresh).
Index(
    "ix_muscle_metrics_metric_muscle_side_value_subject",
    MuscleMetric.metric,
    MuscleMetric.muscle,
    MuscleMetric.side,
    MuscleMetric.value,
    MuscleMetric.subject_id,
)
Index(
    "ix_muscle_metrics_subject_metric_muscle_side_value",
    MuscleMetric.subject_id,
    MuscleMetric.metric,
    MuscleMetric.muscle,
    MuscleMetric.side,
    MuscleMetric.value,
)
Index("ix_subjects_disease", Subject.disease)
