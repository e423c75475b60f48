"""Label corrections collected for fine-tuning the segmentation model (issue 9 item 3, issue 6).

A :class:`CorrectedCase` is written every time a user saves a corrected label image: it names
the image the labels belong to (series + its stored object), the corrected labels (a LABELS
:class:`~repository.models.imaging.Derivative`), the version it corrected and who did it. The
training export (``myovault segment-corrections export``) reads these rows.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from repository.db import Base
from repository.models._types import UTCDateTime, utcnow


class CorrectedCase(Base):
    """One corrected segmentation: image + corrected labels + provenance."""

    __tablename__ = "corrected_cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id"), index=True)
    visit_id: Mapped[int] = mapped_column(ForeignKey("visits.id"), index=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True)
    #: the image the labels were drawn on (the series' ORMIR-MIDS NIfTI)
    image_object_id: Mapped[int | None] = mapped_column(
        ForeignKey("stored_objects.id"), nullable=True
    )
    #: the corrected label image (a new LABELS derivative version)
    labels_derivative_id: Mapped[int] = mapped_column(ForeignKey("derivatives.id"), unique=True)
    #: the version it replaced (each version is corrected at most once: versions form a line)
    previous_derivative_id: Mapped[int] = mapped_column(ForeignKey("derivatives.id"), unique=True)
    version: Mapped[int] = mapped_column(Integer)
    previous_version: Mapped[int] = mapped_column(Integer)
    #: the model that produced the first (automatic) version of this segmentation
    base_model_version: Mapped[str] = mapped_column(String(100), default="")
    voxels_changed: Mapped[int] = mapped_column(Integer, default=0)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
