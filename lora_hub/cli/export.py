"""export, exporters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from lora_hub.cli._common import (
    ForceOpt,
    JsonOpt,
    OverwriteOpt,
    RichProgress,
    handle_errors,
    hub,
    human_bytes,
    out,
    print_json,
    say,
)
from lora_hub.cli.jobs import DetachOpt, SubmitOpt, submitted
from lora_hub.errors import InvalidArgumentError

if TYPE_CHECKING:
    from lora_hub.api import ExportResult


@handle_errors
def export(
    model: Annotated[
        str | None, typer.Argument(metavar="MODEL", help="Registered base name (merged or not), or an HF model folder.")
    ] = None,
    format: Annotated[
        str | None,
        typer.Option("--format", metavar="FORMAT", help="torchscript, torch-export, aoti, onnx or tensorrt."),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="DIR", help="Folder to write the artifact to.")
    ] = None,
    with_cache: Annotated[
        bool,
        typer.Option("--with-cache", help="Static-KV-cache program for generation (decoder LMs; torch-export, aoti)."),
    ] = False,
    dtype: Annotated[
        str, typer.Option("--dtype", metavar="DTYPE", help="auto (the model's), float32, bfloat16 or float16.")
    ] = "auto",
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE", help="auto (cuda if present), cpu or cuda.")
    ] = "auto",
    max_batch: Annotated[
        int | None,
        typer.Option(
            "--max-batch", metavar="N", help="Largest batch (the cache's batch with --with-cache); default 8 (1)."
        ),
    ] = None,
    max_seq: Annotated[
        int | None,
        typer.Option(
            "--max-seq",
            metavar="N",
            help="Longest sequence (the cache length with --with-cache); default 1024 or less.",
        ),
    ] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", metavar="N", help="ONNX opset (onnx only); default 20.")
    ] = None,
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Export again even if this key's artifact is recorded.")
    ] = False,
    force: ForceOpt = False,
    overwrite: OverwriteOpt = False,
    list_formats: Annotated[
        bool, typer.Option("--list-formats", help="List the formats and whether they work here, then exit.")
    ] = False,
    submit: SubmitOpt = False,
    detach: DetachOpt = False,
    json: JsonOpt = False,
) -> None:
    """Export a model for deployment; the artifact is run back and checked against the eager model.

    \b
    \b
    Examples:
      lorahub export acme/llama-sql --format onnx -o ./llama-sql-onnx
      lorahub export acme/llama-sql --format aoti --with-cache --max-seq 2048 -o ./llama-sql-aoti
      lorahub export ./merged --format torch-export --dtype bfloat16 -o ./merged-pt2
      lorahub export --list-formats
    """
    if list_formats:
        exporters(json=json)
        return
    if model is None or format is None or output is None:
        missing = [n for n, v in (("MODEL", model), ("--format", format), ("--output", output)) if v is None]
        raise InvalidArgumentError(
            f"missing {', '.join(missing)}", hint="e.g. lorahub export MODEL --format onnx -o DIR (see --help)"
        )
    if submit or detach:
        job = hub().submit_export(model, output, format, dtype=dtype, device=device, max_batch=max_batch,
                                  max_seq=max_seq, opset=opset, with_cache=with_cache, recompute=recompute,
                                  force=force, overwrite=overwrite)  # fmt: skip
        done = submitted(job, detach=detach, json=json)
        if done is None:
            return
        result = cast("ExportResult", done)
    else:
        result = hub().export(model, output, format, dtype=dtype, device=device, max_batch=max_batch,
                              max_seq=max_seq, opset=opset, with_cache=with_cache, recompute=recompute, force=force,
                              overwrite=overwrite, progress=RichProgress(not json))  # fmt: skip
    if json:
        print_json(result)
        return
    print_export(model, result)


def print_export(model: str, result: ExportResult) -> None:
    """The human lines of an export: the artifact files, the parity check, the timings, the key."""
    rec = result.record
    plan = rec.plan
    cache = f", static cache {plan.contract.cache.max_cache_len}" if plan.contract.cache else ""
    what = f"({plan.format}, {plan.options.dtype}, {plan.options.device}{cache})"
    if result.reused:
        out.print(f"{result.path}: served from the catalog {what}, exported before; key {plan.key}", markup=False)
        return
    say(f"exported {model} -> {result.path}  {what}")
    for a in rec.artifacts:
        out.print(f"  {a.path}  {human_bytes(a.size)}  {a.digest}", markup=False)
    rep, tol = rec.parity, rec.parity.tolerance
    shapes = ", ".join(f"{p.name} {'x'.join(map(str, p.shape))}" for p in rep.probes)
    out.print(
        f"  parity vs eager ({tol.dtype}: atol {tol.atol:g} + rtol {tol.rtol:g} x max|eager|): passed; "
        f"worst max abs {rep.worst_abs:.3g} (relative {rep.worst_rel:.3g}) over {shapes}",
        markup=False,
    )
    if rep.generation is not None:
        gen = rep.generation
        same = "identical" if gen.tokens_equal else f"equal up to a tie at step {gen.tie_at_step}"
        out.print(
            f"  greedy tokens vs HF generate(): {gen.steps} steps after a {gen.prompt_tokens}-token prompt, {same}",
            markup=False,
        )
    t = rec.timings
    compile_part = f", compile {t['compile_s']:.1f} s" if "compile_s" in t else ""
    out.print(
        f"  export {t.get('export_s', 0):.1f} s{compile_part}, check {t.get('check_s', 0):.1f} s, "
        f"total {t.get('total_s', 0):.1f} s; peak memory {human_bytes(rec.peak_rss_bytes)}",
        markup=False,
    )
    if plan.key:
        out.print(f"  key {plan.key}", markup=False)


@handle_errors
def exporters(json: JsonOpt = False) -> None:
    """List the export formats, and whether (or why not) each works on this machine."""
    infos = hub().exporters()
    if json:
        print_json(infos)
        return
    for e in infos:
        state = "ok" if e.available else f"unavailable: {e.reason}"
        cache = "  (--with-cache)" if e.with_cache else ""
        out.print(f"{e.name}  {state}{cache}", markup=False)
        out.print(f"    {e.summary}", markup=False)
        out.print(f"    -> {e.artifact}, run with {e.runtime}", markup=False)
