"""Merges, by recipe digest.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "merges",
        sa.Column("recipe_digest", sa.String(71), primary_key=True),
        sa.Column("recipe", sa.JSON, nullable=False),
        sa.Column("output_path", sa.Text, nullable=False),
        sa.Column("content_fingerprint", sa.String(71), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("versions", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("merges")
