"""The ``lorahub`` command. Each command group lives in its own module; this one joins them."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from lora_hub._version import __version__
from lora_hub.cli import adapters, admin, bases, export, hub, jobs, lineage, merge, metrics, pipeline, rank, service

app = typer.Typer(
    name="lorahub",
    help="A registry and merge service for LoRA adapters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"lorahub {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """A registry and merge service for LoRA adapters. Set LORAHUB_HOME to choose where it keeps
    its catalog and blobs (default ~/.lorahub); LORAHUB_DEBUG=1 shows tracebacks."""


adapters.register(app)
app.command("validate")(bases.validate)
app.command("merge")(merge.merge)
app.command("combine")(merge.combine)
app.command("analyze")(rank.analyze)
app.command("reduce")(rank.reduce)
app.command("extract")(rank.extract)
app.command("methods")(merge.methods)
app.command("lineage")(lineage.lineage)
app.command("run")(pipeline.run)
app.command("export")(export.export)
app.command("exporters")(export.exporters)
app.add_typer(jobs.app, name="jobs")
app.command("worker")(jobs.worker)
app.add_typer(bases.app, name="base")
app.add_typer(hub.app, name="hub")
app.add_typer(metrics.app, name="metrics")
app.command("gc")(admin.gc)
app.command("verify")(admin.verify)
app.add_typer(admin.db_app, name="db")
app.command("serve")(service.serve)
app.add_typer(service.token_app, name="token")
app.command("login")(service.login)


def main() -> None:
    try:
        app()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if "torch" in sys.modules and (code is None or isinstance(code, int)):
        # The interpreter's teardown with torch loaded takes 0.6 s on this kind of machine, a tenth
        # of a whole merge. Every command has closed its catalog and files by now.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code if code is None or isinstance(code, int | str) else 1)
