"""base add / list / show / pull / rm, and validate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lora_hub.cli._common import (
    ForceOpt,
    JsonOpt,
    OverwriteOpt,
    RichProgress,
    clean,
    handle_errors,
    hub,
    human_bytes,
    human_count,
    out,
    print_json,
    say,
    warn,
)
from lora_hub.cli.render import print_base
from lora_hub.types import CompatReport

app = typer.Typer(help="Register and inspect base models.", no_args_is_help=True, rich_markup_mode=None)
BaseArg = Annotated[str, typer.Argument(metavar="NAME", help="Registered base name.", show_default=False)]


@app.command("add")
@handle_errors
def add(
    path: Annotated[
        Path, typer.Argument(metavar="DIR", help="HF model folder: config.json + model.safetensors or shards + index.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", metavar="NAME", help="Name to register it under.")],
    store: Annotated[bool, typer.Option("--store", help="Also copy the files into the blob store.")] = False,
    json: JsonOpt = False,
) -> None:
    """Fingerprint a model folder and register it as a base.

    The weights stay where they are unless --store. Re-adding an unchanged folder reads nothing:
    tensor hashes are cached by path, size, mtime and inode. Through a server (LORAHUB_URL), only
    with --store (an admin token): the files the server lacks are uploaded, and it registers them.

    Example: lorahub base add ./Llama-3.2-1B --name llama-3.2-1b
    """
    result = hub().base_add(path, name, store=store, progress=RichProgress(not json))
    for w in result.warnings:
        warn(w)
    if json:
        print_json(result)
        return
    b = result.base
    what = "registered" if result.created else "unchanged"
    hashed = f"hashed {human_bytes(result.hashed_bytes)}" if result.hashed_bytes else "hashes from cache"
    stored = f", stored {human_bytes(result.stored_bytes)}" if result.stored_bytes else ""
    say(f"{b.name}  {b.content_fingerprint}  ({what}; {b.num_tensors} tensors, {hashed}{stored})")


@app.command("list")
@handle_errors
def list_(json: JsonOpt = False) -> None:
    """List registered bases."""
    bases = hub().base_list()
    if json:
        print_json(bases)
        return
    if not bases:
        say("no bases registered (add one with `lorahub base add DIR --name NAME`)")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("NAME", "MODEL_TYPE", "DTYPE", "PARAMS", "SIZE", "STORED", "FOLDER", "FINGERPRINT"):
        table.add_column(col, no_wrap=True)
    for b in bases:
        table.add_row(
            b.name or "-",
            clean(b.model_type or "-"),
            b.dtype,
            human_count(b.num_params),
            human_bytes(b.size_bytes),
            "yes" if b.stored else "no",
            b.status or "-",
            b.content_fingerprint[:19] + "…",
        )
    out.print(table)


@app.command("show")
@handle_errors
def show(
    name: BaseArg,
    tensors: Annotated[bool, typer.Option("--tensors", help="List every tensor.")] = False,
    json: JsonOpt = False,
) -> None:
    """Show a base: fingerprints, architecture, dtype, parameters, tensors, where it lives."""
    b = hub().base_show(name)
    if json:
        print_json(b)
        return
    print_base(b, tensors)


@app.command("pull")
@handle_errors
def pull(
    name: BaseArg,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder to write the model to.")],
    force: ForceOpt = False,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write a stored base (`base add --store`, or a merge a job stored) as an HF model folder.

    Every file is checked against its digest; DIR appears only when all of them are. DIR must be
    absent or empty; --force replaces an earlier lora-hub output there, --overwrite any folder.

    Example: lorahub base pull acme/llama-merged -o ./merged
    """
    result = hub().base_pull(name, output, force=force, overwrite=overwrite, progress=RichProgress(not json))
    if json:
        print_json(result)
        return
    b = result.base
    say(
        f"{b.name} -> {result.path}  ({result.files} files, {human_bytes(result.bytes_written)}, digests verified; "
        f"{b.content_fingerprint})"
    )


@app.command("rm")
@handle_errors
def rm(name: BaseArg, json: JsonOpt = False) -> None:
    """Forget a base. Its folder is untouched; stored blobs are freed by `lorahub gc`."""
    b = hub().base_remove(name)
    if json:
        print_json(b)
    else:
        say(f"removed base {b.name}")


@handle_errors
def validate(
    adapter: Annotated[str, typer.Argument(metavar="ADAPTER", help="Adapter reference, or a PEFT adapter folder.")],
    base: Annotated[
        str, typer.Option("--base", "-b", metavar="BASE", help="Registered base name, or an HF model folder.")
    ],
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 1) on 'compatible' too.")] = False,
    json: JsonOpt = False,
) -> None:
    """Does an adapter fit a base? Prints exact, compatible or incompatible (with every problem).

    Exit code: 0 for exact or compatible, 1 for incompatible (and for compatible with --strict).

    \b
    Examples: lorahub validate acme/sql:3 --base llama-3.2-1b
              lorahub validate ./some-peft-dir --base ./some-model-dir
    """
    report = hub().validate(adapter, base)
    if json:
        print_json(report)
    else:
        _print_report(report)
    if report.verdict == "incompatible" or (strict and report.verdict != "exact"):
        raise typer.Exit(1)


def _print_report(r: CompatReport) -> None:
    count = f", {len(r.problems)} problem(s)" if r.problems else ""
    say(f"{r.adapter} on {r.base}: {r.verdict}{count}")
    for p in r.problems:
        say(f"  - [{p.code}] {p.message}")
    for note in r.notes:
        say(f"  {note}")
    if r.diff is not None:
        d = r.diff
        if d.tensors_differing == 0:
            say(f"  weights: all {d.tensors_compared} target tensors are identical")
        else:
            size = (
                f"; relative difference max {d.max_relative_diff:.4g} ({d.worst_tensor}), "
                f"mean {d.mean_relative_diff:.4g}"
                if d.max_relative_diff is not None
                else ""
            )
            say(f"  weights: {d.tensors_differing} of {d.tensors_compared} target tensors differ{size}")
    strip, add = r.key_mapping.get("strip"), r.key_mapping.get("add")
    if strip or add:
        steps = [f"without the prefix {strip!r}" if strip else "", f"with the prefix {add!r}" if add else ""]
        say(f"  key mapping: the base's tensors are the adapter's module paths {' and '.join(s for s in steps if s)}")
