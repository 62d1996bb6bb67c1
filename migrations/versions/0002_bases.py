"""Base models, fits, the tensor-hash cache; versions record their signature and base.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _signature(facts: dict, layout: dict) -> str:
    # A frozen copy of lora_hub.compat.structure_signature as of this revision (model type unknown).
    h = hashlib.sha256()
    h.update(f"model_type=\nfan_in_fan_out={bool(facts.get('fan_in_fan_out'))}\n".encode())
    for m in sorted(layout.get("modules", []), key=lambda m: m["path"]):
        h.update(f"m\t{m['path']}\t{m['kind']}\t{m['in_features']}\t{m['out_features']}\t{m['a_shape'][2:]}\n".encode())
    for s in sorted(layout.get("saved_tensors", []), key=lambda s: s["name"]):
        h.update(f"s\t{s['name']}\t{s['shape']}\n".encode())
    return "sha256:" + h.hexdigest()


def upgrade() -> None:
    with op.batch_alter_table("adapter_versions") as batch:
        batch.add_column(sa.Column("signature", sa.String(71)))
        batch.add_column(sa.Column("base_name", sa.String(200)))
        batch.add_column(sa.Column("base_fingerprint", sa.String(71)))
        batch.add_column(sa.Column("base_model_type", sa.String(64)))
        batch.create_index("ix_versions_signature", ["signature"])
        batch.create_index("ix_versions_base_name", ["base_name"])
    versions = sa.table(
        "adapter_versions",
        sa.column("id", sa.Integer),
        sa.column("facts", sa.JSON),
        sa.column("layout", sa.JSON),
        sa.column("signature", sa.String),
    )
    conn = op.get_bind()
    for vid, facts, layout in conn.execute(sa.select(versions.c.id, versions.c.facts, versions.c.layout)).all():
        conn.execute(versions.update().where(versions.c.id == vid).values(signature=_signature(facts, layout)))

    op.create_table(
        "bases",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("path", sa.Text),
        sa.Column("stored", sa.Boolean, nullable=False),
        sa.Column("content_fingerprint", sa.String(71), nullable=False),
        sa.Column("structure_fingerprint", sa.String(71), nullable=False),
        sa.Column("model_type", sa.String(64)),
        sa.Column("architectures", sa.JSON, nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("num_params", sa.BigInteger, nullable=False),
        sa.Column("num_tensors", sa.Integer, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("files", sa.JSON, nullable=False),
        sa.Column("tensors", sa.JSON, nullable=False),
        sa.Column("lineage", sa.JSON),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_bases_content_fingerprint", "bases", ["content_fingerprint"])
    op.create_table(
        "base_fits",
        sa.Column("base_id", sa.Integer, sa.ForeignKey("bases.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("signature", sa.String(71), primary_key=True),
        sa.Column("fits", sa.Boolean, nullable=False),
    )
    op.create_table(
        "file_hashes",
        sa.Column("path", sa.String(4096), primary_key=True),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mtime_ns", sa.BigInteger, nullable=False),
        sa.Column("inode", sa.BigInteger, nullable=False),
        sa.Column("digests", sa.JSON, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("file_hashes")
    op.drop_table("base_fits")
    op.drop_table("bases")
    with op.batch_alter_table("adapter_versions") as batch:
        batch.drop_index("ix_versions_base_name")
        batch.drop_index("ix_versions_signature")
        for col in ("base_model_type", "base_fingerprint", "base_name", "signature"):
            batch.drop_column(col)
