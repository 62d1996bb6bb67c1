"""push, pull, list, show, tag, rm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lora_hub.cli._common import (
    ForceOpt,
    JsonOpt,
    OverwriteOpt,
    RefArg,
    RichProgress,
    clean,
    handle_errors,
    hub,
    human_bytes,
    out,
    parse_metric_args,
    print_json,
    say,
    warn,
)
from lora_hub.cli.render import print_base, print_version
from lora_hub.types import BaseModelInfo, ListQuery


def register(app: typer.Typer) -> None:
    for fn in (push, pull, list_, show, tag, rm):
        app.command(name="list" if fn is list_ else fn.__name__)(fn)


@handle_errors
def push(
    path: Annotated[
        Path,
        typer.Argument(metavar="DIR", help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors)."),
    ],
    name: Annotated[str, typer.Option("--name", "-n", metavar="NAME", help="[namespace/]name to store it under.")],
    metric: Annotated[
        list[str], typer.Option("--metric", "-m", metavar="KEY=VALUE", help="KEY=VALUE; repeat for more.")
    ] = [],  # noqa: B006
    tag: Annotated[
        list[str], typer.Option("--tag", "-t", metavar="TAG", help="Tag to point at this version; repeatable.")
    ] = [],  # noqa: B006
    description: Annotated[str | None, typer.Option("--description", "-d", metavar="TEXT")] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", "-b", metavar="BASE", help="Base it was trained on (registered name or model folder)."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """Validate an adapter folder and store it as the next version of NAME.

    With --base, the adapter must fit that base, which is recorded as the one it was trained on.

    Pushing content identical to an existing version prints that version and writes nothing.

    Example: lorahub push ./my-adapter --name acme/sql-lora --metric accuracy=0.81 --tag sql
    """
    result = hub().push(
        path,
        name,
        metrics=parse_metric_args(metric),
        tags=tag,
        description=description,
        base=base,
        progress=RichProgress(not json),
    )
    for w in result.warnings:
        warn(w)
    if json:
        print_json(result)
        return
    v = result.version
    if result.created:
        note = f"new, {human_bytes(result.bytes_written)} written"
    else:
        note = "unchanged: identical content is already this version"
        if result.updated:
            note += "; applied " + ", ".join(result.updated)
    if result.repaired:
        note += f"; rewrote {len(result.repaired)} damaged stored blob(s): {', '.join(result.repaired)}"
    say(f"{v.ref}  {v.digest}  ({note})")


@handle_errors
def pull(
    ref: RefArg,
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR", help="Folder to write the adapter to.")],
    force: ForceOpt = False,
    overwrite: OverwriteOpt = False,
    json: JsonOpt = False,
) -> None:
    """Write an adapter version as a PEFT folder, byte-identical to what was pushed.

    DIR must be absent or empty; --force replaces an earlier lora-hub output there, --overwrite
    any folder. DIR can never be lora-hub's home, store or catalog, nor a registered base's folder.

    Example: lorahub pull acme/sql-lora:1 -o ./out
    """
    result = hub().pull(ref, output, force=force, overwrite=overwrite, progress=RichProgress(not json))
    if json:
        print_json(result)
        return
    v = result.version
    say(f"{v.ref} -> {result.path}  ({len(v.files)} files, {human_bytes(result.bytes_written)}, digests verified)")


@handle_errors
def list_(
    namespace: Annotated[str | None, typer.Option("--namespace", metavar="NS", help="Only this namespace.")] = None,
    base: Annotated[
        str | None,
        typer.Option("--base", metavar="BASE", help="Only adapters that fit this registered base (or name it)."),
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", metavar="N", help="Only this LoRA rank.")] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", metavar="MODULE", help="Only adapters that target this module, e.g. q_proj."),
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", metavar="TAG", help="Only versions carrying this tag.")] = None,
    where: Annotated[
        str | None, typer.Option("--where", metavar="CONDITIONS", help='Conditions, e.g. "accuracy>=0.8 and rank<=16".')
    ] = None,
    sort: Annotated[
        str | None, typer.Option("--sort", metavar="FIELD", help="Field or metric; prefix '-' for descending.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="At most this many rows (up to 10000).")] = 50,
    offset: Annotated[int, typer.Option("--offset", metavar="N", help="Skip this many rows first.")] = 0,
    latest: Annotated[bool, typer.Option("--latest", help="Only the newest version of each name.")] = False,
    json: JsonOpt = False,
) -> None:
    """List adapter versions, newest first unless --sort says otherwise.

    Fields for --where and --sort: version, rank, alpha, params, size, dtype, task_type,
    base_model, name, namespace, created (sort only); any other word is a metric.
    """
    page = hub().search(
        ListQuery(
            namespace=namespace,
            base=base,
            rank=rank,
            target=target,
            tag=tag,
            where=where,
            sort=sort,
            limit=limit,
            offset=offset,
            latest_only=latest,
            count=True,
        )
    )
    for note in page.notes:
        warn(note)
    if json:
        print_json(page.items)
        return
    if not page.items:
        say("no adapters match" if not page.total else f"no rows past --offset {offset} ({page.total} match)")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("REF", "TAGS", "RANK", "ALPHA", "TARGETS", "DTYPE", "SIZE", "METRICS", "CREATED"):
        table.add_column(col, overflow="fold")
    for v in page.items:
        f = v.facts
        table.add_row(
            *(
                clean(cell)
                for cell in (
                    v.ref,
                    ",".join(v.tags) or "-",
                    str(f.rank) + ("*" if f.rank_pattern else ""),
                    f"{f.alpha:g}",
                    ",".join(f.target_modules),
                    f.dtype,
                    human_bytes(f.size_bytes),
                    " ".join(f"{k}={val:g}" for k, val in v.metrics.items()) or "-",
                    v.created_at.strftime("%Y-%m-%d %H:%M"),
                )
            )
        )
    out.print(table)
    shown = len(page.items)
    if page.offset or page.more:
        total = "more" if page.total is None else f"{page.total:,}" + ("+" if page.total_capped else "")
        first, last = page.offset + 1, page.offset + shown
        say(f"showing {first}-{last} of {total} (use --limit and --offset for more)")


@handle_errors
def show(ref: RefArg, json: JsonOpt = False) -> None:
    """Show one adapter version (facts, files, tags, metrics), or a merged model (lineage,
    recipe, verification report).

    Example: lorahub show acme/sql-lora:prod
    """
    h = hub()
    v = h.show_any(ref)
    if json:
        print_json(v)
        return
    if isinstance(v, BaseModelInfo):
        print_base(v, all_tensors=False)
        return
    print_version(v)
    clash = h.name_clash(ref)
    if clash:
        say(f"note: {clash}")


@handle_errors
def tag(
    ref: RefArg,
    tag: Annotated[str, typer.Argument(metavar="TAG", help="Tag name, e.g. prod.")],
    delete: Annotated[bool, typer.Option("--delete", help="Remove the tag instead.")] = False,
    json: JsonOpt = False,
) -> None:
    """Point a tag at a version (it moves off any other version). `latest` is implicit.

    Example: lorahub tag acme/sql-lora:3 prod
    """
    h = hub()
    if delete:
        v = h.untag(ref, tag)
        message = f"removed tag {tag} from {v.ref}"
    else:
        v = h.tag(ref, tag)
        message = f"{v.full_name}:{tag} -> {v.ref}"
    if json:
        print_json(v)
    else:
        say(message)


@handle_errors
def rm(ref: RefArg, json: JsonOpt = False) -> None:
    """Remove one version. Its blobs are freed by `lorahub gc`.

    Example: lorahub rm acme/sql-lora:2
    """
    v = hub().remove(ref)
    if json:
        print_json(v)
    else:
        say(f"removed {v.ref} (run `lorahub gc` to free its storage)")
