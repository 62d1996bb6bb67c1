"""merge, combine, methods."""

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
from lora_hub.cli.export import print_export
from lora_hub.cli.jobs import DetachOpt, SubmitOpt, submitted
from lora_hub.errors import InvalidArgumentError
from lora_hub.types import MergeResult

if TYPE_CHECKING:
    from lora_hub.api import PipelineResult

MethodOpt = Annotated[
    str, typer.Option("--method", metavar="NAME", help="How adapters combine; see `lorahub methods`.")
]
DensityOpt = Annotated[
    float | None, typer.Option("--density", metavar="D", help="Fraction kept (ties, dare_*, magnitude_prune).")
]
SeedOpt = Annotated[
    int | None, typer.Option("--seed", metavar="N", help="Seed of the random methods (dare_*); default 0.")
]
MajorityOpt = Annotated[
    str | None, typer.Option("--majority-sign", metavar="sum|count", help="ties sign election: sum or count.")
]
LambdaOpt = Annotated[float | None, typer.Option("--lambda", metavar="L", help="task_arithmetic's scale.")]
ParamOpt = Annotated[
    list[str], typer.Option("--param", metavar="KEY=VALUE", help="Other method parameter, KEY=VALUE; repeatable.")
]


def method_params(
    density: float | None, seed: int | None, majority_sign: str | None, lambda_: float | None, extra: list[str]
) -> dict[str, object]:
    params: dict[str, object] = {}
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep:
            raise InvalidArgumentError(f"--param {item!r} is not KEY=VALUE")
        params[key] = value
    named = {"density": density, "seed": seed, "majority_sign": majority_sign, "lambda": lambda_}
    params.update({k: v for k, v in named.items() if v is not None})
    return params


@handle_errors
def merge(
    adapters: Annotated[
        list[str],
        typer.Argument(
            metavar="ADAPTER", help="Adapters to merge: REF[@WEIGHT] or FOLDER[@WEIGHT] (weight 1 by default)."
        ),
    ],
    base: Annotated[
        str, typer.Option("--base", "-b", metavar="BASE", help="Registered base name, or an HF model folder.")
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            metavar="DIR",
            help="Folder to write the merged model to. Without it (with --name and --submit), the worker "
            "stores the merged model in the blob store as the base NAME: `lorahub base pull NAME -o DIR`.",
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", "-n", metavar="NAME", help="Register the result as a base model.")
    ] = None,
    method: MethodOpt = "linear",
    density: DensityOpt = None,
    seed: SeedOpt = None,
    majority_sign: MajorityOpt = None,
    lambda_: LambdaOpt = None,
    param: ParamOpt = [],  # noqa: B006
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE", help="auto (cuda if present), cpu or cuda.")
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option("--dtype", metavar="DTYPE", help="auto (keep the base's), bfloat16, float16, float32 or float64."),
    ] = "auto",
    shard_size: Annotated[
        str, typer.Option("--shard-size", metavar="SIZE", help="Largest output shard, e.g. 5GB.")
    ] = "5GB",
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Merge again even if this recipe's output is recorded.")
    ] = False,
    export: Annotated[
        list[str],
        typer.Option(
            "--export",
            metavar="FORMAT[,FORMAT]",
            help="Then export the merged model to each format, at DIR-FORMAT (see `lorahub exporters`).",
        ),
    ] = [],  # noqa: B006
    force: ForceOpt = False,
    overwrite: OverwriteOpt = False,
    submit: SubmitOpt = False,
    detach: DetachOpt = False,
    json: JsonOpt = False,
) -> None:
    """Merge adapters into a base: W' = W + sum_i w_i * s_i * B_i @ A_i, streamed and verified.

    \b
    Examples:
      lorahub merge --base llama-3.2-1b acme/sql:3 -o ./merged --name acme/llama-sql
      lorahub merge --base llama-3.2-1b acme/sql:3@0.7 acme/chat:1@0.3 -o ./merged
      lorahub merge --base llama-3.2-1b a:1@0.5 b:2@0.3 c:1@0.2 --method ties --density 0.4 -o ./merged
      lorahub merge --base llama-3.2-1b acme/sql:3 -o ./merged --export onnx,torch-export
    """
    params = method_params(density, seed, majority_sign, lambda_, param)
    progress = RichProgress(not json)
    pipeline: PipelineResult | None = None
    formats = [f.strip() for item in export for f in item.split(",") if f.strip()]
    if output is None and not (name and (submit or detach)):
        raise InvalidArgumentError(
            "give the merged model a folder (-o DIR), or a name to store it under on a worker",
            hint="add -o DIR, or --name NAME --submit (then `lorahub base pull NAME -o DIR`)",
        )
    if submit or detach:  # a worker runs it as a pipeline (without exports for a plain merge)
        spec = hub().merge_pipeline(base, adapters, output or ".", formats=formats, name=name, method=method,
                                    params=params, dtype=dtype, shard_size=shard_size)  # fmt: skip
        if output is None:  # no folder of this machine: the worker stores it (a `store_output` job)
            spec = spec.model_copy(update={"output": ""})
        job = hub().submit_pipeline(spec, device=device, recompute=recompute, force=force, overwrite=overwrite)
        done = submitted(job, detach=detach, json=json)
        if done is None:
            return
        pipeline = cast("PipelineResult", done)
        result = pipeline.merge
        if not formats:
            pipeline = None
    elif export:
        assert output is not None
        spec = hub().merge_pipeline(base, adapters, output, formats=formats, name=name, method=method,
                                    params=params, dtype=dtype, shard_size=shard_size)  # fmt: skip
        pipeline = hub().run_pipeline(spec, device=device, recompute=recompute, force=force, overwrite=overwrite,
                                      progress=progress)  # fmt: skip
        result = pipeline.merge
    else:
        assert output is not None
        result = hub().merge(base, adapters, output, name=name, method=method, params=params, dtype=dtype,
                             device=device, shard_size=shard_size, recompute=recompute, force=force,
                             overwrite=overwrite, progress=progress)  # fmt: skip
    if json:
        print_json(result if pipeline is None else pipeline)
        return
    print_merge(result)
    for exported in pipeline.exports if pipeline is not None else ():
        print_export(result.registered or result.path, exported)


def print_merge(result: MergeResult) -> None:
    """The human lines of a merge: what was written (or served from the record), the verification,
    the recipe."""
    rec = result.record
    report = rec.report
    if result.reused:
        where = result.path or f"base {result.registered}"  # a merge a worker stored has no folder
        out.print(f"{where}: served from the catalog (recipe {rec.recipe_digest[:19]}…, merged before)", markup=False)
    else:
        rate = result.bytes_written / result.seconds / 1e9 if result.seconds else 0.0
        out.print(
            f"merged {result.tensors_merged} tensors, copied {result.tensors_copied}"
            + (f", converted {result.tensors_converted}" if result.tensors_converted else "")
            + f" -> {result.path or 'the blob store'}\n"
            f"  {human_bytes(result.bytes_written)} in {result.seconds:.2f} s ({rate:.2f} GB/s) on {result.device}, "
            f"peak memory {human_bytes(result.peak_rss_bytes)}",
            markup=False,
        )
    if report.error_kind == "fraction_of_bound":  # checked against an independent recomputation
        kinds = ["+".join(c) for c in report.checks.values()]
        how = ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds))) or "no tensor changed"
        worst = (
            f"worst error {100 * report.worst_error:.3g}% of its rounding bound ({report.worst_tensor})"
            if report.worst_error is not None
            else "nothing to compare"
        )
        unchecked = f"; NOT verified: {', '.join(report.not_verified)}" if report.not_verified else ""
        out.print(
            f"  verified {report.verified_tensors} tensors against a float64 recomputation ({how}; "
            f"{sum(report.rows_checked.values())} rows, {sum(report.ambiguous.values())} entries ambiguous): "
            f"{worst}{unchecked}",
            markup=False,
        )
    else:  # a record from before those checks: the probe's relative error
        worst = (
            f"worst relative error {report.worst_error:.3g} ({report.worst_tensor})"
            if report.worst_error is not None
            else "no tensor needed a probe"
        )
        out.print(f"  verified {report.verified_tensors} tensors by a probe: {worst}", markup=False)
    out.print(f"  recipe {rec.recipe_digest}", markup=False)
    if result.registered:
        out.print(f"  registered as base {result.registered}", markup=False)
        if not result.path:  # a merge a worker stored: it has no folder
            out.print(f"  pull it with `lorahub base pull {result.registered} -o DIR`", markup=False)


@handle_errors
def combine(
    adapters: Annotated[
        list[str], typer.Argument(metavar="ADAPTER", help="Adapters to combine: REF[@WEIGHT] or FOLDER[@WEIGHT].")
    ],
    name: Annotated[str, typer.Option("--name", "-n", metavar="NAME", help="Name to push the combined adapter under.")],
    method: MethodOpt = "linear",
    rank: Annotated[
        int | None,
        typer.Option("--rank", "-r", metavar="N", help="Rank of the result (default: the sum of the input ranks)."),
    ] = None,
    density: DensityOpt = None,
    seed: SeedOpt = None,
    majority_sign: MajorityOpt = None,
    lambda_: LambdaOpt = None,
    param: ParamOpt = [],  # noqa: B006
    dtype: Annotated[
        str, typer.Option("--dtype", metavar="DTYPE", help="auto (the inputs'), float32, bfloat16, float16.")
    ] = "auto",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="DIR", help="Also keep the PEFT folder here.")
    ] = None,
    force: ForceOpt = False,
    overwrite: OverwriteOpt = False,
    description: Annotated[str | None, typer.Option("--description", "-d", metavar="TEXT")] = None,
    tag: Annotated[
        list[str], typer.Option("--tag", "-t", metavar="TAG", help="Tag for the new version; repeatable.")
    ] = [],  # noqa: B006
    json: JsonOpt = False,
) -> None:
    """Combine adapters into a new adapter (a PEFT folder, pushed with its lineage).

    cat is exact (rank = sum of the ranks); the other methods are re-factored to --rank by
    truncated SVD, and the error of the cut is reported per module.

    \b
    Examples:
      lorahub combine a:1 b:2 --method cat --name acme/ab
      lorahub combine a:1@0.6 b:2@0.4 --method svd --rank 16 --name acme/ab16
      lorahub combine a:1 b:2 c:1 --method dare_ties --density 0.5 --rank 32 --seed 1 --name acme/abc
    """
    result = hub().combine(
        adapters,
        name,
        method=method,
        params=method_params(density, seed, majority_sign, lambda_, param),
        rank=rank,
        dtype=dtype,
        output=output,
        force=force,
        overwrite=overwrite,
        description=description,
        tags=tag,
        progress=RichProgress(not json),
    )
    if json:
        print_json(result)
        return
    v = result.push.version
    state = "new" if result.push.created else "unchanged: identical content is already this version"
    out.print(f"{v.ref}  {v.digest}  ({state})", markup=False)
    ranks = sorted(set(result.ranks.values()))
    out.print(
        f"  {result.method}: {len(result.ranks)} modules, rank {'/'.join(map(str, ranks))}; relative error of the "
        f"rank cut: max {result.max_error:.3g}, mean {result.mean_error:.3g}",
        markup=False,
    )
    worst = sorted(result.errors.items(), key=lambda kv: -kv[1])[:3]
    if worst and worst[0][1] > 0:
        out.print("  worst: " + ", ".join(f"{k} {e:.3g}" for k, e in worst), markup=False)


@handle_errors
def methods(json: JsonOpt = False) -> None:
    """List the methods for merge and combine: formula, parameters, paper."""
    described = hub().methods()
    if json:
        print_json(described)
        return
    for m in described:
        say(f"{m['name']}  ({', '.join(m['outputs'])})  {m['summary']}")
        say(f"    {m['formula']}")
        for param in m["params"]:
            choices = f" ({'|'.join(param['choices'])})" if param["choices"] else ""
            flag = "--" + param["name"].replace("_", "-")
            say(f"    {flag} {param['type']}{choices} = {param['default']}: {param['help']}")
        if m["reference"]:
            say(f"    paper: {m['reference']}")
