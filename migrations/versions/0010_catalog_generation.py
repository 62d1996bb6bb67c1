"""A catalog generation: one row whose number every write transaction that may change what is
listed increases, in the same transaction, so that a server can serve a listing from its cache
for as long as the number has not moved (``lora_hub.catalog.db.Database.generation``).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "catalog_generation",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO catalog_generation (id, value) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("catalog_generation")
