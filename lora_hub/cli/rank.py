"""analyze, reduce, extract: choosing the rank of an adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lora_hub.cli._common import JsonOpt, RichProgress, handle_errors, hub, human_bytes, out, print_json
from lora_hub.errors import InvalidArgumentError

RankOpt = Annotated[
    int | None, typer.Option("--rank", "-r", metavar="N", help="Cut every module to this rank (at most).")
]
EnergyOpt = Annotated[
    float | None,
    typer.Option("--energy", "-e", metavar="E", help="Per module, the smallest rank that keeps this energy (0-1]."),
]
NameOpt = Annotated[str, typer.Option("--name", "-n", metavar="NAME", help="Name to push the new adapter under.")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", metavar="DIR", help="Also keep the PEFT folder here.")
]
DescriptionOpt = Annotated[str | None, typer.Option("--description", "-d", metavar="TEXT")]
TagOpt = Annotated[list[str], typer.Option("--tag", "-t", metavar="TAG", help="Tag for the new version; repeatable.")]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidArgumentError(f"--energy {text!r} is not a comma-separated list of numbers") from None


def _names(text: str | None) -> list[str]:
    return [x.strip() for x in (text or "").split(",") if x.strip()]


def _worst(errors: dict[str, float]) -> None:
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    if worst and worst[0][1] > 0:
        out.print("  worst: " + ", ".join(f"{k} {e:.3g}" for k, e in worst), markup=False)


@handle_errors
def analyze(
    adapter: Annotated[
        str, typer.Argument(metavar="ADAPTER", help="Adapter: REF or a PEFT folder.", show_default=False)
    ],
    base: Annotated[
        str | None,
        typer.Option("--base", "-b", metavar="BASE", help="Registered base or model folder: adds ||dW||/||W||."),
    ] = None,
    energy: Annotated[
        str, typer.Option("--energy", "-e", metavar="E", help="Energy targets, comma-separated.")
    ] = "0.9,0.95,0.99",
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", help="Also draw the spectra into this PNG (needs matplotlib)."),
    ] = None,
    json: JsonOpt = False,
) -> None:
    """The exact singular values of every module's update s * B @ A, and the rank each energy needs.

    Energy kept at rank k: sum_{j<=k} S_j^2 / sum_j S_j^2. Effective rank: exp(H(p)), p_j = S_j / sum S.
    Stable rank: ||dW||_F^2 / ||dW||_2^2. The summary suggests, per energy target, a uniform r (every
    module keeps the energy) and a per-module rank_pattern, with their sizes.

    \b
    Examples:
      lorahub analyze acme/sql:1
      lorahub analyze acme/sql:1 --base llama-3.2-1b --energy 0.8,0.9 --plot spectra.png
      lorahub analyze ./my-adapter --json
    """
    targets = _floats(energy)
    result = hub().analyze(adapter, base=base, energies=targets, plot=plot, progress=RichProgress(not json))
    if json:
        print_json(result)
        return
    keys = list(result.modules[0].rank_for) if result.modules else []
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["MODULE", "RANK", *(f"R@{k}" for k in keys), "EFF_RANK", "STABLE_RANK"]
    if result.base is not None:
        columns.append("||dW||/||W||")
    for col in columns:
        table.add_column(col, overflow="fold")
    for m in result.modules:
        row = [m.path, str(m.rank), *(str(m.rank_for[k]) for k in keys), f"{m.effective_rank:.2f}"]
        row.append(f"{m.stable_rank:.2f}")
        if result.base is not None:
            row.append(f"{m.relative_norm:.3g}" if m.relative_norm is not None else "-")
        table.add_row(*row)
    out.print(table)
    ranks = sorted({m.rank for m in result.modules})
    out.print(
        f"{result.adapter}: {len(result.modules)} modules, rank {'/'.join(map(str, ranks))}, "
        f"{result.params:,} params ({human_bytes(result.bytes)} {result.dtype})",
        markup=False,
    )
    for s in result.suggestions:
        low, high = min(s.rank_pattern.values(), default=0), max(s.rank_pattern.values(), default=0)
        out.print(
            f"  energy {s.energy:g}: uniform r={s.uniform_rank} -> {s.uniform_params:,} params "
            f"({human_bytes(s.uniform_bytes)}); rank_pattern {low}-{high} -> {s.pattern_params:,} params "
            f"({human_bytes(s.pattern_bytes)})",
            markup=False,
        )
    for note in result.notes:
        out.print(f"  note: {note}", markup=False)
    if plot is not None:
        out.print(f"  spectra plotted to {plot}", markup=False)


@handle_errors
def reduce(
    adapter: Annotated[
        str, typer.Argument(metavar="ADAPTER", help="Adapter: REF or a PEFT folder.", show_default=False)
    ],
    name: NameOpt,
    rank: RankOpt = None,
    energy: EnergyOpt = None,
    dtype: Annotated[
        str, typer.Option("--dtype", metavar="DTYPE", help="auto (the input's), float32, bfloat16, float16.")
    ] = "auto",
    output: OutputOpt = None,
    description: DescriptionOpt = None,
    tag: TagOpt = [],  # noqa: B006
    json: JsonOpt = False,
) -> None:
    """Truncate an adapter to a smaller rank: the optimal rank-K update of each module (Eckart-Young),
    or per module the smallest rank that keeps --energy E (as rank_pattern). --rank at or above a
    module's rank keeps it exactly. The exact error per module is reported and kept in the lineage.

    \b
    Examples:
      lorahub reduce acme/sql:1 --rank 8 --name acme/sql-r8
      lorahub reduce acme/sql:1 --energy 0.95 --name acme/sql-e95 -o ./sql-e95
    """
    result = hub().reduce(
        adapter,
        name,
        rank=rank,
        energy=energy,
        dtype=dtype,
        output=output,
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
    how = f"rank {result.rank}" if result.rank is not None else f"energy {result.energy:g}"
    before = sorted(set(result.ranks_before.values()))
    after = sorted(set(result.ranks.values()))
    out.print(
        f"  reduce to {how}: {len(result.ranks)} modules, rank {'/'.join(map(str, before))} -> "
        f"{'/'.join(map(str, after))}; {result.params_before:,} -> {result.params_after:,} params; "
        f"relative error: max {result.max_error:.3g}, mean {result.mean_error:.3g}",
        markup=False,
    )
    _worst(result.errors)


@handle_errors
def extract(
    base: Annotated[str, typer.Option("--base", "-b", metavar="BASE", help="Registered base or model folder.")],
    tuned: Annotated[
        str, typer.Option("--tuned", metavar="MODEL", help="The fine-tuned model: a folder or a registered base.")
    ],
    name: NameOpt,
    rank: RankOpt = None,
    energy: EnergyOpt = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets", metavar="NAMES", help="Module names to decompose, comma-separated (default: all linear)."
        ),
    ] = None,
    modules_to_save: Annotated[
        str | None,
        typer.Option("--modules-to-save", metavar="NAMES", help="Modules kept whole, comma-separated (e.g. lm_head)."),
    ] = None,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="Seed of the randomized SVD.")] = 0,
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE", help="auto (cuda if present), cpu or cuda.")
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            "--dtype", metavar="DTYPE", help="Factors' dtype: float32, bfloat16, float16, or auto (the tuned model's)."
        ),
    ] = "float32",
    output: OutputOpt = None,
    description: DescriptionOpt = None,
    tag: TagOpt = [],  # noqa: B006
    json: JsonOpt = False,
) -> None:
    """Extract a LoRA adapter from a dense fine-tune: per linear module, W_tuned - W_base truncated
    by a seeded randomized SVD (exact where cheaper), streamed tensor by tensor. Pushed against
    --base, so `lorahub validate NAME --base BASE` says exact.

    \b
    Examples:
      lorahub extract --base llama-3.2-1b --tuned ./llama-sft --rank 16 --name acme/sft-r16
      lorahub extract --base llama-3.2-1b --tuned ./llama-sft --energy 0.9 --modules-to-save lm_head --name acme/sft
    """
    result = hub().extract(
        base,
        tuned,
        name,
        rank=rank,
        energy=energy,
        targets=_names(targets) or None,
        modules_to_save=_names(modules_to_save),
        seed=seed,
        device=device,
        dtype=dtype,
        output=output,
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
    how = f"rank {result.rank}" if result.rank is not None else f"energy {result.energy:g}"
    ranks = sorted(set(result.ranks.values()))
    saved = f"; kept whole: {len(result.saved)} tensor{'s' if len(result.saved) != 1 else ''}" if result.saved else ""
    out.print(
        f"  extract at {how}: {len(result.ranks)} modules, rank {'/'.join(map(str, ranks))}{saved}; "
        f"relative error: max {result.max_error:.3g}, mean {result.mean_error:.3g}",
        markup=False,
    )
    _worst(result.errors)
    if result.unchanged:
        out.print(f"  unchanged (no LoRA needed): {len(result.unchanged)} tensors", markup=False)
    if result.not_captured:
        more = f" and {len(result.not_captured) - 3} more" if len(result.not_captured) > 3 else ""
        out.print(
            f"  changed but not captured: {', '.join(result.not_captured[:3])}{more} (see --modules-to-save)",
            markup=False,
        )
    out.print(
        f"  {result.seconds:.2f} s on {result.device}, peak memory {human_bytes(result.peak_rss_bytes)}", markup=False
    )
