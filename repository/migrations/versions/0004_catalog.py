"""catalog: project FAIR metadata, metadata versions, saved queries, cohort snapshots, full text

Revision ID: 0004
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import repository.models._types

revision = "0004"
down_revision = "0001"
branch_labels = None
depends_on = None

# Full text over project title, description and keywords.
# SQLite: an FTS5 table kept in step by triggers. PostgreSQL: a GIN index on the same
# tsvector expression that repository/services/search.py queries (they must stay identical).
PG_TSVECTOR = (
    "to_tsvector('english', coalesce(title, '') || ' ' || coalesce(description, '')"
    " || ' ' || coalesce(CAST(keywords AS text), ''))"
)
SQLITE_FTS = [
    "CREATE VIRTUAL TABLE project_fts USING fts5(title, description, keywords,"
    " tokenize='porter unicode61')",
    "INSERT INTO project_fts(rowid, title, description, keywords)"
    " SELECT id, title, description, keywords FROM projects",
    "CREATE TRIGGER project_fts_ai AFTER INSERT ON projects BEGIN"
    " INSERT INTO project_fts(rowid, title, description, keywords)"
    " VALUES (new.id, new.title, new.description, new.keywords); END",
    "CREATE TRIGGER project_fts_ad AFTER DELETE ON projects BEGIN"
    " DELETE FROM project_fts WHERE rowid = old.id; END",
    "CREATE TRIGGER project_fts_au AFTER UPDATE ON projects BEGIN"
    " DELETE FROM project_fts WHERE rowid = old.id;"
    " INSERT INTO project_fts(rowid, title, description, keywords)"
    " VALUES (new.id, new.title, new.description, new.keywords); END",
]


def upgrade() -> None:
    json = repository.models._types.JSONType()
    with op.batch_alter_table("projects", schema=None) as batch_op:
        for name in ("keywords", "funding", "publications", "site_names"):
            batch_op.add_column(sa.Column(name, json, nullable=False, server_default="[]"))
        batch_op.add_column(sa.Column("contact", json, nullable=False, server_default="{}"))
        batch_op.add_column(
            sa.Column("metadata_version", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(
            sa.Column(
                "metadata_updated_at",
                repository.models._types.UTCDateTime(timezone=True),
                nullable=False,
                server_default=sa.func.current_timestamp(),
            )
        )

    op.create_table(
        "project_metadata_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("record", json, nullable=False),
        sa.Column(
            "created_at", repository.models._types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_project_metadata_versions_created_by_id_users"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            ondelete="CASCADE",
            name=op.f("fk_project_metadata_versions_project_id_projects"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_project_metadata_versions")),
        sa.UniqueConstraint(
            "project_id", "version", name=op.f("uq_project_metadata_versions_project_id")
        ),
    )
    op.create_index(
        op.f("ix_project_metadata_versions_project_id"),
        "project_metadata_versions",
        ["project_id"],
    )

    op.create_table(
        "saved_queries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("query", json, nullable=False),
        sa.Column(
            "created_at", repository.models._types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            ondelete="CASCADE",
            name=op.f("fk_saved_queries_user_id_users"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saved_queries")),
    )
    op.create_index(op.f("ix_saved_queries_user_id"), "saved_queries", ["user_id"])

    op.create_table(
        "cohort_snapshots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.String(length=200), nullable=False),
        sa.Column("pid_kind", sa.String(length=16), nullable=False),
        sa.Column("lineage", sa.String(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("saved_query_id", sa.Integer(), nullable=True),
        sa.Column("title", sa.String(length=300), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("query", json, nullable=False),
        sa.Column("subject_ids", json, nullable=False),
        sa.Column("visit_ids", json, nullable=False),
        sa.Column("files", json, nullable=False),
        sa.Column("manifest_sha256", sa.String(length=64), nullable=False),
        sa.Column("n_subjects", sa.Integer(), nullable=False),
        sa.Column("n_visits", sa.Integer(), nullable=False),
        sa.Column("licence", sa.String(length=100), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.Column(
            "created_at", repository.models._types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_cohort_snapshots_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_cohort_snapshots_project_id_projects")
        ),
        sa.ForeignKeyConstraint(
            ["saved_query_id"],
            ["saved_queries.id"],
            ondelete="SET NULL",
            name=op.f("fk_cohort_snapshots_saved_query_id_saved_queries"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cohort_snapshots")),
        sa.UniqueConstraint("pid", name=op.f("uq_cohort_snapshots_pid")),
        sa.UniqueConstraint("lineage", "version", name=op.f("uq_cohort_snapshots_lineage")),
    )
    op.create_index(op.f("ix_cohort_snapshots_lineage"), "cohort_snapshots", ["lineage"])
    op.create_index(op.f("ix_cohort_snapshots_project_id"), "cohort_snapshots", ["project_id"])

    # Search support on tables owned by the imaging model (indexes only; no columns):
    # per-muscle range conditions probe (metric, muscle, side, value) and need the subject.
    op.create_index(
        "ix_muscle_metrics_metric_muscle_side_value_subject",
        "muscle_metrics",
        ["metric", "muscle", "side", "value", "subject_id"],
    )
    op.create_index("ix_subjects_disease", "subjects", ["disease"])
    # facets and the heat map read all metrics of the matching subjects: index-only scans
    op.create_index(
        "ix_muscle_metrics_subject_metric_muscle_side_value",
        "muscle_metrics",
        ["subject_id", "metric", "muscle", "side", "value"],
    )

    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for statement in SQLITE_FTS:
            op.execute(statement)
    elif bind.dialect.name == "postgresql":
        op.execute(f"CREATE INDEX ix_projects_fulltext ON projects USING GIN ({PG_TSVECTOR})")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("project_fts_ai", "project_fts_ad", "project_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS project_fts")
    elif bind.dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_projects_fulltext")
    op.drop_index("ix_subjects_disease", table_name="subjects")
    op.drop_index("ix_muscle_metrics_subject_metric_muscle_side_value", table_name="muscle_metrics")
    op.drop_index("ix_muscle_metrics_metric_muscle_side_value_subject", table_name="muscle_metrics")
    op.drop_table("cohort_snapshots")
    op.drop_table("saved_queries")
    op.drop_table("project_metadata_versions")
    with op.batch_alter_table("projects", schema=None) as batch_op:
        for name in (
            "metadata_updated_at",
            "metadata_version",
            "contact",
            "site_names",
            "publications",
            "funding",
            "keywords",
        ):
            batch_op.drop_column(name)
