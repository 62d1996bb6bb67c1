"""Jobs: merges, exports and pipelines run by workers (``lorahub worker``), with their state,
progress, result or error, and a cancel flag; on PostgreSQL also procrastinate's schema, the
queue that hands them to workers (``lora_hub.jobs``).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

ACTIVE = "state IN ('queued', 'running')"


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("queue", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("dedup_key", sa.String(71), nullable=False),
        sa.Column("queue_job_id", sa.BigInteger),
        sa.Column("progress", sa.JSON),
        sa.Column("result", sa.JSON),
        sa.Column("error", sa.JSON),
        sa.Column("log", sa.JSON, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("worker", sa.String(200)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    # one active job per request: a second identical submission joins the first
    op.create_index(
        "ux_jobs_active_dedup",
        "jobs",
        ["dedup_key"],
        unique=True,
        sqlite_where=sa.text(ACTIVE),
        postgresql_where=sa.text(ACTIVE),
    )
    if op.get_bind().dialect.name == "postgresql":
        from lora_hub.jobs.schema import install_queue_schema

        install_queue_schema(op.get_bind().connection.driver_connection)


def downgrade() -> None:
    op.drop_index("ux_jobs_active_dedup", table_name="jobs")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_table("jobs")
