"""push, pull, list, show, tag, rm."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lora_hub.api import parse_metric_args
from lora_hub.cli._common import (
    JsonOpt,
    RefArg,
    RichProgress,
    handle_errors,
    hub,
    human_bytes,
    human_count,
    out,
    print_json,
)
from lora_hub.types import AdapterVersion, BaseModelInfo, ListQuery


def register(app: typer.Typer) -> None:
    for fn in (push, pull, list_, show, tag, rm):
        app.command(name="list" if fn is list_ else fn.__name__)(fn)


@handle_errors
def push(
    path: Annotated[
        Path, typer.Argument(help="PEFT adapter folder (adapter_config.json + adapter_model.safetensors).")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="[namespace/]name to store it under.")],
    metric: Annotated[list[str], typer.Option("--metric", "-m", help="KEY=VALUE; repeat for more.")] = [],  # noqa: B006
    tag: Annotated[list[str], typer.Option("--tag", "-t", help="Tag to point at this version; repeatable.")] = [],  # noqa: B006
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    base: Annotated[
        str | None, typer.Option("--base", "-b", help="Base it was trained on (registered name or model folder).")
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
    if json:
        print_json(result)
        return
    v = result.version
    note = (
        f"new, {human_bytes(result.bytes_written)} written"
        if result.created
        else "unchanged: identical content is already this version"
    )
    out.print(f"{v.ref}  {v.digest}  ({note})")


@handle_errors
def pull(
    ref: RefArg,
    output: Annotated[Path, typer.Option("--output", "-o", help="Folder to write the adapter to.")],
    force: Annotated[bool, typer.Option("--force", "-f", help="Replace OUTPUT if it is not empty.")] = False,
    json: JsonOpt = False,
) -> None:
    """Write an adapter version as a PEFT folder, byte-identical to what was pushed.

    Example: lorahub pull acme/sql-lora:1 -o ./out
    """
    result = hub().pull(ref, output, force=force, progress=RichProgress(not json))
    if json:
        print_json(result)
        return
    v = result.version
    out.print(
        f"{v.ref} -> {result.path}  ({len(v.files)} files, {human_bytes(result.bytes_written)}, digests verified)"
    )


@handle_errors
def list_(
    namespace: Annotated[str | None, typer.Option("--namespace", help="Only this namespace.")] = None,
    base: Annotated[
        str | None, typer.Option("--base", help="Only adapters that fit this registered base (or name it).")
    ] = None,
    rank: Annotated[int | None, typer.Option("--rank", help="Only this LoRA rank.")] = None,
    target: Annotated[
        str | None, typer.Option("--target", help="Only adapters that target this module, e.g. q_proj.")
    ] = None,
    tag: Annotated[str | None, typer.Option("--tag", help="Only versions carrying this tag.")] = None,
    where: Annotated[str | None, typer.Option("--where", help='Conditions, e.g. "accuracy>=0.8 and rank<=16".')] = None,
    sort: Annotated[str | None, typer.Option("--sort", help="Field or metric; prefix '-' for descending.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows.")] = 50,
    latest: Annotated[bool, typer.Option("--latest", help="Only the newest version of each name.")] = False,
    json: JsonOpt = False,
) -> None:
    """List adapter versions, newest first unless --sort says otherwise.

    Fields for --where and --sort: version, rank, alpha, params, size, dtype, task_type,
    base_model, name, namespace, created (sort only); any other word is a metric.
    """
    rows = hub().list(
        ListQuery(
            namespace=namespace,
            base=base,
            rank=rank,
            target=target,
            tag=tag,
            where=where,
            sort=sort,
            limit=limit,
            latest_only=latest,
        )
    )
    if json:
        print_json(rows)
        return
    if not rows:
        out.print("no adapters match")
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for col in ("REF", "TAGS", "RANK", "ALPHA", "TARGETS", "DTYPE", "SIZE", "METRICS", "CREATED"):
        table.add_column(col, overflow="fold")
    for v in rows:
        f = v.facts
        table.add_row(
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
    out.print(table)


@handle_errors
def show(ref: RefArg, json: JsonOpt = False) -> None:
    """Show one adapter version (facts, files, tags, metrics), or a merged model (lineage,
    recipe, verification report).

    Example: lorahub show acme/sql-lora:prod
    """
    v = hub().show_any(ref)
    if json:
        print_json(v)
        return
    if isinstance(v, BaseModelInfo):
        from lora_hub.cli.bases import _print_base

        _print_base(v, all_tensors=False)
        return
    _print_version(v)


def _print_version(v: AdapterVersion) -> None:
    f = v.facts
    lines = [
        ("ref", v.ref),
        ("digest", v.digest),
        ("created", v.created_at.isoformat(timespec="seconds")),
        ("description", v.description or "-"),
        ("tags", ", ".join(v.tags) or "-"),
        ("metrics", ", ".join(f"{k}={val:g}" for k, val in v.metrics.items()) or "-"),
        ("rank", f"{f.rank}" + (f"  (pattern: {f.rank_pattern})" if f.rank_pattern else "")),
        ("alpha", f"{f.alpha:g}" + (f"  (pattern: {f.alpha_pattern})" if f.alpha_pattern else "")),
        ("targets", ", ".join(f.target_modules)),
        (
            "options",
            ", ".join(
                name
                for name, on in (
                    ("rslora", f.use_rslora),
                    ("dora", f.use_dora),
                    ("fan_in_fan_out", f.fan_in_fan_out),
                    ("lora_bias", f.lora_bias),
                )
                if on
            )
            or "-",
        ),
        ("modules_to_save", ", ".join(f.modules_to_save) or "-"),
        ("dtype", f.dtype),
        ("params", f"{f.num_params:,} ({human_count(f.num_params)})"),
        ("size", human_bytes(f.size_bytes)),
        ("task_type", f.task_type or "-"),
        ("base_model", (f.base_model_name_or_path or "-") + (f" @ {f.revision}" if f.revision else "")),
    ]
    if v.layout is not None:
        lines.append(("modules", f"{len(v.layout.modules)} LoRA modules, {len(v.layout.saved_tensors)} saved tensors"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        out.print(f"{key:<{width}}  {value}", markup=False)
    out.print("files", markup=False)
    for entry in v.files:
        out.print(f"  {entry.path}  {human_bytes(entry.size)}  {entry.digest}", markup=False)


@handle_errors
def tag(
    ref: RefArg,
    tag: Annotated[str, typer.Argument(help="Tag name, e.g. prod.")],
    delete: Annotated[bool, typer.Option("--delete", help="Remove the tag instead.")] = False,
    json: JsonOpt = False,
) -> None:
    """Point a tag at a version (it moves off any other version). `latest` is implicit.

    Example: lorahub tag acme/sql-lora:3 prod
    """
    h = hub()
    if delete:
        v = h.untag(ref.split(":", 1)[0], tag)
        message = f"removed tag {tag} from {v.ref}"
    else:
        v = h.tag(ref, tag)
        message = f"{v.full_name}:{tag} -> {v.ref}"
    if json:
        print_json(v)
    else:
        out.print(message, markup=False)


@handle_errors
def rm(ref: RefArg, json: JsonOpt = False) -> None:
    """Remove one version. Its blobs are freed by `lorahub gc`.

    Example: lorahub rm acme/sql-lora:2
    """
    v = hub().remove(ref)
    if json:
        print_json(v)
    else:
        out.print(f"removed {v.ref} (run `lorahub gc` to free its storage)", markup=False)
