"""consent: consent fields, DAC settings, votes, comments, download links, notification outbox

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import repository.models._types

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

UTC = repository.models._types.UTCDateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("special_category_basis", sa.String(32), nullable=False, server_default="")
        )
        batch_op.add_column(sa.Column("source", sa.String(16), nullable=False, server_default="ui"))
        batch_op.add_column(
            sa.Column("withdrawal_reason", sa.Text(), nullable=False, server_default="")
        )
        batch_op.create_unique_constraint("uq_consents_subject_id", ["subject_id", "version"])

    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("snapshot_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("intended_use", sa.JSON(), nullable=False, server_default="{}")
        )
        batch_op.add_column(
            sa.Column("matched_subject_ids", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(sa.Column("exclusions", sa.JSON(), nullable=False, server_default="{}"))
        batch_op.add_column(sa.Column("ethics_object_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("duration_days", sa.Integer(), nullable=False, server_default="365")
        )
        batch_op.add_column(sa.Column("deadline_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("reminded_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("escalated_at", UTC, nullable=True))
        batch_op.add_column(sa.Column("decided_at", UTC, nullable=True))
        batch_op.create_foreign_key(
            "fk_access_requests_ethics_object_id_stored_objects",
            "stored_objects",
            ["ethics_object_id"],
            ["id"],
        )

    with op.batch_alter_table("grants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("snapshot_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("subject_ids", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(sa.Column("conditions", sa.Text(), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("revoke_reason", sa.Text(), nullable=False, server_default="")
        )

    with op.batch_alter_table("downloads", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("subject_ids", sa.JSON(), nullable=False, server_default="[]")
        )
        batch_op.add_column(
            sa.Column("status", sa.String(16), nullable=False, server_default="started")
        )

    op.create_table(
        "dac_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("rule", sa.String(16), nullable=False),
        sa.Column("quorum", sa.Integer(), nullable=False),
        sa.Column("deadline_days", sa.Integer(), nullable=False),
        sa.Column("grant_days", sa.Integer(), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=False),
        sa.Column("updated_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_dac_settings_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dac_settings")),
        sa.UniqueConstraint("project_id", name=op.f("uq_dac_settings_project_id")),
    )
    op.create_table(
        "votes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("vote", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"], ["access_requests.id"], name=op.f("fk_votes_request_id_access_requests")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_votes_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_votes")),
        sa.UniqueConstraint("request_id", "user_id", name=op.f("uq_votes_request_id")),
    )
    op.create_index(op.f("ix_votes_request_id"), "votes", ["request_id"])
    op.create_table(
        "request_comments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["access_requests.id"],
            name=op.f("fk_request_comments_request_id_access_requests"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_request_comments_user_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_comments")),
    )
    op.create_index(op.f("ix_request_comments_request_id"), "request_comments", ["request_id"])
    op.create_table(
        "download_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("grant_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=True),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("expires_at", UTC, nullable=False),
        sa.Column("used_at", UTC, nullable=True),
        sa.ForeignKeyConstraint(
            ["grant_id"], ["grants.id"], name=op.f("fk_download_links_grant_id_grants")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_download_links_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"], ["subjects.id"], name=op.f("fk_download_links_subject_id_subjects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_download_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_download_links_token_hash")),
    )
    op.create_index(op.f("ix_download_links_grant_id"), "download_links", ["grant_id"])
    op.create_table(
        "notifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("to_email", sa.String(320), nullable=False),
        sa.Column("kind", sa.String(48), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=True),
        sa.Column("created_at", UTC, nullable=False),
        sa.Column("sent_at", UTC, nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_notifications_user_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_notifications_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
    )
    op.create_index(op.f("ix_notifications_user_id"), "notifications", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_notifications_user_id"), table_name="notifications")
    op.drop_table("notifications")
    op.drop_index(op.f("ix_download_links_grant_id"), table_name="download_links")
    op.drop_table("download_links")
    op.drop_index(op.f("ix_request_comments_request_id"), table_name="request_comments")
    op.drop_table("request_comments")
    op.drop_index(op.f("ix_votes_request_id"), table_name="votes")
    op.drop_table("votes")
    op.drop_table("dac_settings")
    with op.batch_alter_table("downloads", schema=None) as batch_op:
        batch_op.drop_column("status")
        batch_op.drop_column("subject_ids")
    with op.batch_alter_table("grants", schema=None) as batch_op:
        for name in ("revoke_reason", "conditions", "subject_ids", "snapshot_id"):
            batch_op.drop_column(name)
    with op.batch_alter_table("access_requests", schema=None) as batch_op:
        batch_op.drop_constraint(
            "fk_access_requests_ethics_object_id_stored_objects", type_="foreignkey"
        )
        for name in (
            "decided_at",
            "escalated_at",
            "reminded_at",
            "deadline_at",
            "duration_days",
            "ethics_object_id",
            "exclusions",
            "matched_subject_ids",
            "intended_use",
            "snapshot_id",
        ):
            batch_op.drop_column(name)
    with op.batch_alter_table("consents", schema=None) as batch_op:
        batch_op.drop_constraint("uq_consents_subject_id", type_="unique")
        for name in ("withdrawal_reason", "source", "special_category_basis"):
            batch_op.drop_column(name)
