"""Exports, by key: what was exported, where to, and its parity report, so that the same export
is served again and `lorahub lineage` can follow a merged model to its artifacts.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exports",
        sa.Column("key", sa.String(71), primary_key=True),
        sa.Column("source_fingerprint", sa.String(71), nullable=False),
        sa.Column("base_name", sa.String(200)),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("output_path", sa.Text, nullable=False),
        sa.Column("record", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_exports_source_fingerprint", "exports", ["source_fingerprint"])


def downgrade() -> None:
    op.drop_index("ix_exports_source_fingerprint", table_name="exports")
    op.drop_table("exports")
