"""Store leases in the catalog: pushes and gc exclude each other through the catalog (a
readers-writer lock with expiring leases) instead of a file lock in a local store, so that
several servers and machines can share one blob store.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table("store_lock", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO store_lock (id) VALUES (1)")
    op.create_table(
        "store_leases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("store_leases")
    op.drop_table("store_lock")
