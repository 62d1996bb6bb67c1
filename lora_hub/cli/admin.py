"""gc, db upgrade."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_hub.catalog.db import make_url_safe
from lora_hub.cli._common import JsonOpt, handle_errors, hub, human_bytes, out, print_json

db_app = typer.Typer(help="Catalog database maintenance.", no_args_is_help=True)


@handle_errors
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be removed; remove nothing.")] = False,
    json: JsonOpt = False,
) -> None:
    """Delete blobs no version references, and temporary files left by killed pushes."""
    report = hub().gc(dry_run=dry_run)
    if json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    out.print(
        f"{verb} {report.blobs_removed} unreferenced blob(s) ({human_bytes(report.bytes_freed)}) "
        f"and {report.temp_files_removed} stale temporary file(s)",
        markup=False,
    )


@db_app.command("upgrade")
@handle_errors
def upgrade(json: JsonOpt = False) -> None:
    """Apply catalog migrations (lora-hub also applies them on first use)."""
    h = hub()
    revision = h.upgrade_db()
    if json:
        print_json({"database": make_url_safe(h.settings.database_url), "revision": revision})
    else:
        out.print(f"catalog {make_url_safe(h.settings.database_url)} is at revision {revision} (head)", markup=False)
