"""metrics set / rm."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_hub.cli._common import JsonOpt, RefArg, handle_errors, hub, parse_metric_args, print_json, say

app = typer.Typer(help="Set or remove the metrics of a version.", no_args_is_help=True, rich_markup_mode=None)


@app.command("set")
@handle_errors
def set_(
    ref: RefArg,
    metrics: Annotated[
        list[str], typer.Argument(metavar="KEY=VALUE", help="KEY=VALUE pairs, e.g. rougeL=0.44 bleu=31.2.")
    ],
    json: JsonOpt = False,
) -> None:
    """Set metrics of a version (existing keys are overwritten).

    Example: lorahub metrics set acme/sql-lora:3 rougeL=0.44 bleu=31.2
    """
    v = hub().set_metrics(ref, parse_metric_args(metrics))
    if json:
        print_json(v)
    else:
        say(f"{v.ref}  " + " ".join(f"{k}={val:g}" for k, val in v.metrics.items()))


@app.command("rm")
@handle_errors
def rm(
    ref: RefArg,
    keys: Annotated[list[str], typer.Argument(metavar="KEY", help="Metric names to remove.")],
    json: JsonOpt = False,
) -> None:
    """Remove metrics from a version."""
    v = hub().set_metrics(ref, {}, remove=keys)
    if json:
        print_json(v)
    else:
        say(f"{v.ref}  " + (" ".join(f"{k}={val:g}" for k, val in v.metrics.items()) or "(no metrics)"))
