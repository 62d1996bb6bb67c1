"""The catalog's tables (SQLAlchemy 2.0). Rows stay inside the catalog package.

Any change here needs a new Alembic revision in ``migrations/versions`` and a new
``catalog.db.HEAD_REVISION``; ``tests/catalog/test_migrations.py`` checks that they agree.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column

NAME = String(96)
FULL_NAME = String(200)  # namespace/name
DIGEST = String(71)  # "sha256:" + 64 hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class AdapterRow(Base):
    """A name. ``next_version`` only grows, so a removed version number is never reused."""

    __tablename__ = "adapters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace: Mapped[str] = mapped_column(NAME, nullable=False, default="")
    name: Mapped[str] = mapped_column(NAME, nullable=False)
    next_version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    __table_args__ = (UniqueConstraint("namespace", "name", name="uq_adapters_name"),)


class VersionRow(Base):
    __tablename__ = "adapter_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    digest: Mapped[str] = mapped_column(DIGEST, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    description: Mapped[str | None] = mapped_column(Text)
    # Copies of facts that ``list`` filters and sorts on.
    rank: Mapped[int] = mapped_column(Integer, nullable=False)
    alpha: Mapped[float] = mapped_column(Float, nullable=False)
    dtype: Mapped[str] = mapped_column(String(16), nullable=False)
    num_params: Mapped[int] = mapped_column(BigInteger, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    task_type: Mapped[str | None] = mapped_column(String(64))
    base_model_name: Mapped[str | None] = mapped_column(String(512))
    facts: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    layout: Mapped[dict[str, Any]] = deferred(mapped_column(JSON, nullable=False))
    lineage: Mapped[dict[str, Any] | None] = deferred(mapped_column(JSON))
    # What decides fits (compat.structure_signature), and the base it was pushed against.
    signature: Mapped[str | None] = mapped_column(DIGEST)
    base_name: Mapped[str | None] = mapped_column(FULL_NAME)
    base_fingerprint: Mapped[str | None] = mapped_column(DIGEST)
    base_model_type: Mapped[str | None] = mapped_column(String(64))
    __table_args__ = (
        UniqueConstraint("adapter_id", "version", name="uq_versions_number"),
        UniqueConstraint("adapter_id", "digest", name="uq_versions_digest"),
        Index("ix_versions_rank", "rank"),
        Index("ix_versions_base_model", "base_model_name"),
        Index("ix_versions_signature", "signature"),
        Index("ix_versions_base_name", "base_name"),
        Index("ix_versions_alpha", "alpha"),
        Index("ix_versions_num_params", "num_params"),
        Index("ix_versions_size_bytes", "size_bytes"),
    )


class VersionFileRow(Base):
    __tablename__ = "version_files"
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True)
    path: Mapped[str] = mapped_column(String(1024), primary_key=True)
    digest: Mapped[str] = mapped_column(DIGEST, nullable=False, index=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)


class TagRow(Base):
    """A movable label: one version per (name, tag)."""

    __tablename__ = "tags"
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(NAME, primary_key=True)
    version_id: Mapped[int] = mapped_column(
        ForeignKey("adapter_versions.id", ondelete="CASCADE"), nullable=False, index=True
    )


class MetricRow(Base):
    __tablename__ = "metrics"
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(NAME, primary_key=True)
    value: Mapped[float] = mapped_column(Float, nullable=False)
    __table_args__ = (Index("ix_metrics_key_value_version", "key", "value", "version_id"),)


class TargetRow(Base):
    """Short names of the targeted modules (``q_proj``), for ``list --target``."""

    __tablename__ = "version_targets"
    version_id: Mapped[int] = mapped_column(ForeignKey("adapter_versions.id", ondelete="CASCADE"), primary_key=True)
    target: Mapped[str] = mapped_column(String(128), primary_key=True)
    __table_args__ = (Index("ix_targets_target", "target"),)


class BaseRow(Base):
    """A registered base model. ``tensors`` maps names to dtype, shape, digest and shard."""

    __tablename__ = "bases"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(FULL_NAME, nullable=False, unique=True)
    path: Mapped[str | None] = mapped_column(Text)
    stored: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    content_fingerprint: Mapped[str] = mapped_column(DIGEST, nullable=False, index=True)
    structure_fingerprint: Mapped[str] = mapped_column(DIGEST, nullable=False)
    model_type: Mapped[str | None] = mapped_column(String(64))
    architectures: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    dtype: Mapped[str] = mapped_column(String(16), nullable=False)
    num_params: Mapped[int] = mapped_column(BigInteger, nullable=False)
    num_tensors: Mapped[int] = mapped_column(Integer, nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    tensors: Mapped[dict[str, Any]] = deferred(mapped_column(JSON, nullable=False))
    lineage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class BaseFitRow(Base):
    """Whether adapters of a structure signature fit a base, computed once per pair."""

    __tablename__ = "base_fits"
    base_id: Mapped[int] = mapped_column(ForeignKey("bases.id", ondelete="CASCADE"), primary_key=True)
    signature: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    fits: Mapped[bool] = mapped_column(Boolean, nullable=False)


class FileHashRow(Base):
    """Cached tensor hashes of a weights file, valid while its size, mtime, ctime and inode stay."""

    __tablename__ = "file_hashes"
    path: Mapped[str] = mapped_column(String(4096), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, nullable=False)
    mtime_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    inode: Mapped[int] = mapped_column(BigInteger, nullable=False)
    ctime_ns: Mapped[int | None] = mapped_column(BigInteger)
    digests: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class MergeRow(Base):
    """A merge, by recipe: the same recipe is served from here instead of recomputed."""

    __tablename__ = "merges"
    recipe_digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    recipe: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    output_path: Mapped[str] = mapped_column(Text, nullable=False)
    content_fingerprint: Mapped[str] = mapped_column(DIGEST, nullable=False)
    name: Mapped[str | None] = mapped_column(FULL_NAME)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    versions: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class StoreLockRow(Base):
    """One row, locked (``FOR UPDATE``) by whoever takes or checks a store lease, so that taking
    a lease is serialised across processes and servers (SQLite serialises writers anyway)."""

    __tablename__ = "store_lock"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)


class CatalogGenerationRow(Base):
    """One row whose ``value`` every write transaction increases (``Database.session``), but for
    those that change nothing a listing shows (jobs, store leases): a server's listing cache is
    good while it has not moved."""

    __tablename__ = "catalog_generation"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False)


class StoreLeaseRow(Base):
    """A writer storing blobs (``write``), or ``gc`` collecting them (``gc_wait`` while it waits
    for writers to finish, so that new writers wait for it instead of starving it). A lease past
    ``expires_at`` belongs to a process that died and is ignored."""

    __tablename__ = "store_leases"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    holder: Mapped[str] = mapped_column(String(200), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class ExportRow(Base):
    """An export, by key (source content + format + resolved options + library versions + target):
    the same key is served from here, after its artifact's digests are checked."""

    __tablename__ = "exports"
    key: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    source_fingerprint: Mapped[str] = mapped_column(DIGEST, nullable=False, index=True)
    base_name: Mapped[str | None] = mapped_column(FULL_NAME)
    format: Mapped[str] = mapped_column(String(32), nullable=False)
    output_path: Mapped[str] = mapped_column(Text, nullable=False)
    record: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)


class TokenRow(Base):
    """An API token of ``lorahub serve``: only the sha256 of its secret is kept, so the secret
    is shown once, when created. ``namespace`` is a pattern (``*``, ``acme``, ``acme-*``)."""

    __tablename__ = "api_tokens"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(DIGEST, nullable=False, unique=True)
    scope: Mapped[str] = mapped_column(String(8), nullable=False)
    namespace: Mapped[str] = mapped_column(FULL_NAME, nullable=False)
    label: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobRow(Base):
    """A merge, export or pipeline run by a worker (``lora_hub.core.jobs``): the request, its
    state, progress, result or error, and a log. On PostgreSQL ``queue_job_id`` is its job in
    procrastinate's queue, deferred in the same transaction as this row."""

    __tablename__ = "jobs"
    __table_args__ = (
        # one active job per request: a second identical submission joins the first
        Index(
            "ux_jobs_active_dedup",
            "dedup_key",
            unique=True,
            sqlite_where=text("state IN ('queued', 'running')"),
            postgresql_where=text("state IN ('queued', 'running')"),
        ),
    )
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    queue: Mapped[str] = mapped_column(String(16), nullable=False)
    state: Mapped[str] = mapped_column(String(16), nullable=False)
    request: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    dedup_key: Mapped[str] = mapped_column(DIGEST, nullable=False)
    queue_job_id: Mapped[int | None] = mapped_column(BigInteger)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    log: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False, default=list)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False, default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
