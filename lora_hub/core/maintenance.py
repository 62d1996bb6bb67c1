"""Maintenance: gc, verify, database migrations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lora_hub._context import Context
from lora_hub._fs import remove_unused_parts
from lora_hub.core import adapters
from lora_hub.errors import (
    InvalidArgumentError,
)
from lora_hub.progress import NoProgress, Progress
from lora_hub.types import (
    BlobCheck,
    DbStatus,
    GcReport,
    VerifyReport,
)

if TYPE_CHECKING:
    pass

from lora_hub.catalog import Catalog


def gc(ctx: Context, *, dry_run: bool = False, wait_s: float = 600.0) -> GcReport:
    """Delete blobs that no version references, temporary files of dead writers, and the hidden
    partial output folders of pulls and merges that were killed. Waits up to ``wait_s`` for
    running pushes to finish (new ones wait for gc), then raises ``ConflictError``."""
    with ctx.catalog.leases.collecting(wait_s=wait_s):
        referenced = ctx.catalog.referenced_digests()
        removed = freed = 0
        for digest, size in list(ctx.store.digests()):
            if digest in referenced:
                continue
            removed += 1
            freed += size if dry_run else ctx.store.delete(digest)
        temps = ctx.store.remove_stale_temp(dry_run=dry_run)
        # Kept parts of interrupted Hub downloads (which a later import would resume) go too.
        temps += remove_unused_parts(ctx.settings.home / "hub-staging" / "resume", dry_run=dry_run)
    partials = ctx.partials().clean(dry_run=dry_run)
    return GcReport(
        blobs_removed=removed,
        bytes_freed=freed,
        temp_files_removed=temps,
        partials_removed=partials,
        dry_run=dry_run,
    )


def verify(
    ctx: Context, ref: str | None = None, *, everything: bool = False, progress: Progress | None = None
) -> VerifyReport:
    """Re-read every blob of ``ref`` (one version), or of every version and stored base with
    ``everything``, and check it against its digest. Damaged blobs are reported, not changed:
    pushing the folder again rewrites them."""
    if (ref is None) == (not everything):
        raise InvalidArgumentError("say what to verify: a reference, or --all")
    if ref is not None:
        version = adapters.show(ctx, ref)
        users = {f.digest: [version.ref] for f in version.files}
        sizes = {f.digest: f.size for f in version.files}
    else:
        users, sizes = ctx.catalog.blob_users()
    problems = []
    checked = 0
    with (progress or NoProgress()).task("verifying", sum(sizes.values())) as advance:
        for digest in sorted(users):
            state, size = ctx.store.check(digest, advance)
            checked += size or 0
            if state != "ok":
                problems.append(BlobCheck(digest=digest, size=size, state=state, used_by=users[digest]))
    return VerifyReport(blobs_checked=len(users), bytes_checked=checked, problems=problems)


def upgrade_db(ctx: Context) -> DbStatus:
    """Apply catalog migrations (also done on first use); on PostgreSQL with procrastinate
    installed, also bring the job queue's schema up to that procrastinate (``lora_hub.jobs.schema``).
    Returns the catalog, its revision, and the queue schema's version."""
    from lora_hub.catalog.db import make_url_safe

    catalog = Catalog(ctx.settings.database_url, migrate=False)
    try:
        revision = catalog.db.upgrade()
        postgres = not catalog.db.is_sqlite
    finally:
        catalog.close()
    applied: list[str] = []
    version = None
    if postgres:
        from lora_hub.jobs import queue, schema

        if schema.queue_schema_sql() is not None:
            applied = queue.ensure_schema(ctx.settings.database_url)
            version = queue.queue_schema_version(ctx.settings.database_url)
    return DbStatus(database=make_url_safe(ctx.settings.database_url), revision=revision or "none",
                    queue_schema=version, queue_migrations=applied)  # fmt: skip
