"""The tensor-hash cache also keys on the file's ctime: a file rewritten in place with its mtime
restored (``touch -d``, ``rsync -t``, ``cp -p``) still changes its ctime, which no user tool sets.
Rows cached before this revision have no ctime and are hashed again on next use.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("file_hashes") as batch:
        batch.add_column(sa.Column("ctime_ns", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("file_hashes") as batch:
        batch.drop_column("ctime_ns")
