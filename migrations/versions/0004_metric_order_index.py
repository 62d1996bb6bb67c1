"""Indexes for `list --sort`: metrics by (key, value, version_id), so that `--sort METRIC` walks
the index in the order it returns rows, ties included, and stops at the limit; versions by alpha,
params and size.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_metrics_key_value_version", "metrics", ["key", "value", "version_id"])
    op.drop_index("ix_metrics_key_value", table_name="metrics")
    for column in ("alpha", "num_params", "size_bytes"):
        op.create_index(f"ix_versions_{column}", "adapter_versions", [column])


def downgrade() -> None:
    for column in ("alpha", "num_params", "size_bytes"):
        op.drop_index(f"ix_versions_{column}", table_name="adapter_versions")
    op.create_index("ix_metrics_key_value", "metrics", ["key", "value"])
    op.drop_index("ix_metrics_key_value_version", table_name="metrics")
