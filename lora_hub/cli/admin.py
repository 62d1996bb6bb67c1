"""gc, verify, db upgrade."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_hub.cli._common import JsonOpt, RichProgress, handle_errors, hub, human_bytes, print_json, say

db_app = typer.Typer(help="Catalog database maintenance.", no_args_is_help=True, rich_markup_mode=None)


@handle_errors
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be removed; remove nothing.")] = False,
    json: JsonOpt = False,
) -> None:
    """Delete blobs no version references, temporary files left by killed pushes, and the hidden
    partial folders of killed pulls and merges."""
    report = hub().gc(dry_run=dry_run)
    if json:
        print_json(report)
        return
    verb = "would remove" if dry_run else "removed"
    say(
        f"{verb} {report.blobs_removed} unreferenced blob(s) ({human_bytes(report.bytes_freed)}), "
        f"{report.temp_files_removed} stale temporary file(s) and {report.partials_removed} abandoned partial folder(s)"
    )


@handle_errors
def verify(
    ref: Annotated[str | None, typer.Argument(metavar="REF", help="One adapter version to check.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Check every blob any version or stored base uses.")] = False,
    json: JsonOpt = False,
) -> None:
    """Re-read stored blobs and check each against its sha256 digest.

    Exit code 3 if any blob is missing or corrupted. Pushing the adapter's folder again rewrites
    damaged blobs.

    \b
    Examples: lorahub verify acme/sql-lora:1
              lorahub verify --all
    """
    report = hub().verify(ref, everything=all_, progress=RichProgress(not json))
    if json:
        print_json(report.model_dump(mode="json") | {"ok": report.ok})
    else:
        state = "all intact" if report.ok else f"{len(report.problems)} damaged"
        say(f"verified {report.blobs_checked} blob(s), {human_bytes(report.bytes_checked)}: {state}")
        for p in report.problems:
            say(f"  {p.state}  {p.digest}  used by {', '.join(p.used_by)}")
        if not report.ok:
            say("  hint: push the affected adapter folders again (the push rewrites damaged blobs)")
    if not report.ok:
        raise typer.Exit(3)


@db_app.command("upgrade")
@handle_errors
def upgrade(json: JsonOpt = False) -> None:
    """Apply catalog migrations (lora-hub also applies them on first use)."""
    status = hub().upgrade_db()
    if json:
        print_json(status)
    else:
        say(f"catalog {status.database} is at revision {status.revision} (head)")
        if status.queue_schema is not None:
            applied = f"; applied {', '.join(status.queue_migrations)}" if status.queue_migrations else ""
            say(f"job queue schema (procrastinate) at {status.queue_schema}{applied}")
