"""Adapters, versions, files, tags, metrics, targets.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapters",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("namespace", sa.String(96), nullable=False),
        sa.Column("name", sa.String(96), nullable=False),
        sa.Column("next_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("namespace", "name", name="uq_adapters_name"),
    )
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("description", sa.Text),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("alpha", sa.Float, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("num_params", sa.BigInteger, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("task_type", sa.String(64)),
        sa.Column("base_model_name", sa.String(512)),
        sa.Column("facts", sa.JSON, nullable=False),
        sa.Column("layout", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON),
        sa.UniqueConstraint("adapter_id", "version", name="uq_versions_number"),
        sa.UniqueConstraint("adapter_id", "digest", name="uq_versions_digest"),
    )
    op.create_index("ix_versions_rank", "adapter_versions", ["rank"])
    op.create_index("ix_versions_base_model", "adapter_versions", ["base_model_name"])
    op.create_table(
        "version_files",
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("path", sa.String(1024), primary_key=True),
        sa.Column("digest", sa.String(71), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_version_files_digest", "version_files", ["digest"])
    op.create_table(
        "tags",
        sa.Column("adapter_id", sa.Integer, sa.ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(96), primary_key=True),
        sa.Column("version_id", sa.Integer, sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_tags_version_id", "tags", ["version_id"])
    op.create_table(
        "metrics",
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("key", sa.String(96), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_index("ix_metrics_key_value", "metrics", ["key", "value"])
    op.create_table(
        "version_targets",
        sa.Column(
            "version_id",
            sa.Integer,
            sa.ForeignKey("adapter_versions.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("target", sa.String(128), primary_key=True),
    )
    op.create_index("ix_targets_target", "version_targets", ["target"])


def downgrade() -> None:
    for table in ("version_targets", "metrics", "tags", "version_files", "adapter_versions", "adapters"):
        op.drop_table(table)
