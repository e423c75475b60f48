"""search: the search index (facet profiles, one row per subject, FF per visit)

Revision ID: 0006_search
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0006_search"
down_revision = "0005"
branch_labels = None
depends_on = None

# search_visit_ff has ff_<i>_<side> for the 11 muscles of
# repository.models.search_index.MUSCLES (i = 0..10) and sides L, R.
FF_COLUMNS = [f"ff_{i}_{side}" for i in range(11) for side in ("L", "R")]


def upgrade() -> None:
    op.create_table(
        "search_profiles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("disease", sa.String(length=100), nullable=False),
        sa.Column("sex", sa.String(length=1), nullable=False),
        sa.Column("age_decade", sa.Integer(), nullable=True),
        sa.Column("n_visits", sa.Integer(), nullable=False),
        sa.Column("vendors", sa.Text(), nullable=False),
        sa.Column("field_strengths", sa.Text(), nullable=False),
        sa.Column("sequences", sa.Text(), nullable=False),
        sa.Column("anatomies", sa.Text(), nullable=False),
        sa.Column("muscle_mask", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_search_profiles")),
        sa.UniqueConstraint("key", name=op.f("uq_search_profiles_key")),
    )
    op.create_table(
        "search_subjects",
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("profile_id", sa.Integer(), nullable=False),
        sa.Column("pseudonym", sa.String(length=64), nullable=False),
        sa.Column("shareable", sa.Boolean(), nullable=False),
        sa.Column("consent_expires_on", sa.Date(), nullable=True),
        sa.Column("age_lo", sa.Float(), nullable=True),
        sa.Column("age_hi", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["profile_id"],
            ["search_profiles.id"],
            name=op.f("fk_search_subjects_profile_id_search_profiles"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            ondelete="CASCADE",
            name=op.f("fk_search_subjects_project_id_projects"),
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["subjects.id"],
            ondelete="CASCADE",
            name=op.f("fk_search_subjects_subject_id_subjects"),
        ),
        sa.PrimaryKeyConstraint("subject_id", name=op.f("pk_search_subjects")),
    )
    op.create_index(
        "ix_search_subjects_listing",
        "search_subjects",
        ["project_id", "pseudonym"],
        sqlite_where=sa.text("shareable"),
        postgresql_where=sa.text("shareable"),
    )
    op.create_index(
        op.f("ix_search_subjects_profile_id"), "search_subjects", ["profile_id"], unique=False
    )
    op.create_table(
        "search_visit_ff",
        sa.Column("visit_id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Float(), nullable=True) for name in FF_COLUMNS),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["subjects.id"],
            ondelete="CASCADE",
            name=op.f("fk_search_visit_ff_subject_id_subjects"),
        ),
        sa.ForeignKeyConstraint(
            ["visit_id"],
            ["visits.id"],
            ondelete="CASCADE",
            name=op.f("fk_search_visit_ff_visit_id_visits"),
        ),
        sa.PrimaryKeyConstraint("visit_id", name=op.f("pk_search_visit_ff")),
    )
    op.create_index(
        op.f("ix_search_visit_ff_subject_id"), "search_visit_ff", ["subject_id"], unique=False
    )
    # Backfill from the existing rows (the code the application uses to keep it current).
    from repository.services.search_index import rebuild

    session = Session(bind=op.get_bind())
    rebuild(session)
    session.flush()
    session.close()


def downgrade() -> None:
    op.drop_index(op.f("ix_search_visit_ff_subject_id"), table_name="search_visit_ff")
    op.drop_table("search_visit_ff")
    op.drop_index(op.f("ix_search_subjects_profile_id"), table_name="search_subjects")
    op.drop_index("ix_search_subjects_listing", table_name="search_subjects")
    op.drop_table("search_subjects")
    op.drop_table("search_profiles")
