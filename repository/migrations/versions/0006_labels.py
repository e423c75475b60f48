"""labels: corrected segmentation cases collected for fine-tuning (issue 9 item 3)

Revision ID: 0006_labels
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import repository.models._types

revision = "0006_labels"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corrected_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("visit_id", sa.Integer(), nullable=False),
        sa.Column("series_id", sa.Integer(), nullable=True),
        sa.Column("image_object_id", sa.Integer(), nullable=True),
        sa.Column("labels_derivative_id", sa.Integer(), nullable=False),
        sa.Column("previous_derivative_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=False),
        sa.Column("base_model_version", sa.String(length=100), nullable=False),
        sa.Column("voxels_changed", sa.Integer(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", repository.models._types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(["project_id"], ["projects.id"]),
        sa.ForeignKeyConstraint(["visit_id"], ["visits.id"]),
        sa.ForeignKeyConstraint(["series_id"], ["series.id"]),
        sa.ForeignKeyConstraint(["image_object_id"], ["stored_objects.id"]),
        sa.ForeignKeyConstraint(["labels_derivative_id"], ["derivatives.id"]),
        sa.ForeignKeyConstraint(["previous_derivative_id"], ["derivatives.id"]),
        sa.ForeignKeyConstraint(["created_by_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("labels_derivative_id"),
        sa.UniqueConstraint("previous_derivative_id"),
    )
    op.create_index("ix_corrected_cases_project_id", "corrected_cases", ["project_id"])
    op.create_index("ix_corrected_cases_visit_id", "corrected_cases", ["visit_id"])


def downgrade() -> None:
    op.drop_index("ix_corrected_cases_visit_id", table_name="corrected_cases")
    op.drop_index("ix_corrected_cases_project_id", table_name="corrected_cases")
    op.drop_table("corrected_cases")
