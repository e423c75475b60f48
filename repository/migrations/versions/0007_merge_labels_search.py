"""Merge the label-versions and search-index branches.

Revision ID: 0007
Revises: 0006_labels, 0006_search
"""

from __future__ import annotations

revision = "0007"
down_revision = ("0006_labels", "0006_search")
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to do: both branches touch different tables."""


def downgrade() -> None:
    """Nothing to do."""
