"""Merge the upload, consent and catalog branches into one head.

Revision ID: 0005
Revises: 0002_uploads, 0003, 0004
"""

from __future__ import annotations

revision = "0005"
down_revision = ("0002_uploads", "0003", "0004")
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change: the three branches touch separate tables."""


def downgrade() -> None:
    """Nothing to change."""
