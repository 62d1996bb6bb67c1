"""``Hub.analyze``, ``Hub.reduce`` and ``Hub.extract``: resolve the inputs through the context, run the
pure functions of ``lora_hub.rank``, and push the results with their lineage.

analyze: adapter (ref or folder) [+ base] -> rank.spectrum.analyze_adapter -> RankAnalysis
reduce:  adapter -> rank.reduce.reduce_adapter -> PEFT folder (staged) -> Hub.push(base=its base)
extract: base + tuned model -> rank.extract.plan_extract (headers, digests) -> extract_lora (streamed)
         -> PEFT folder (staged) -> Hub.push(base=BASE), so that ``validate NAME --base BASE`` is exact
"""

from __future__ import annotations

import contextlib
import os
import resource
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_hub import compat
from lora_hub._context import Context
from lora_hub._fs import Replace, prepare_output, staged_output
from lora_hub.core import adapters, bases, merging
from lora_hub.core.common import input_folders, library_versions
from lora_hub.errors import IncompatibleError, InvalidArgumentError
from lora_hub.formats.dtypes import NAME
from lora_hub.formats.hf import ModelDir
from lora_hub.progress import NoProgress, Progress
from lora_hub.rank.types import ExtractResult, RankAnalysis, ReduceResult
from lora_hub.refs import AdapterName
from lora_hub.types import BaseModelInfo

if TYPE_CHECKING:
    from lora_hub.merge.plan import AdapterInput


def _adapter(ctx: Context, spec: str) -> tuple[AdapterInput, compat.AdapterSide, str | None]:
    """A reference or folder: facts, layout, verified weights file; how compat sees it; its base."""
    return merging.adapter_input(ctx, spec)


def _base(ctx: Context, spec: str, progress: Progress) -> tuple[BaseModelInfo, str, ModelDir]:
    """A registered base or a model folder, with its tensor digests and readable weights."""
    info, label, model = bases.open_base(ctx, spec, progress)
    if model is None:
        raise bases.why_no_weights(ctx, info, label)
    return info, label, model


def _versions() -> dict[str, str]:
    return library_versions()


# --- the three operations ---------------------------------------------------------------------


def analyze(
    ctx: Context,
    adapter: str,
    *,
    base: str | None = None,
    energies: Sequence[float] = (0.9, 0.95, 0.99),
    plot: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> RankAnalysis:
    from lora_hub.rank.plot import plot_spectra, require_matplotlib
    from lora_hub.rank.spectrum import analyze_adapter, check_energies

    progress = progress or NoProgress()
    targets = check_energies(energies)
    if plot is not None:
        require_matplotlib()  # before any work
    item, side, _ = _adapter(ctx, adapter)
    model, label = None, None
    if base is not None:
        info, label, model = _base(ctx, base, progress)
        report = compat.check(side, info, label)
        if report.verdict == "incompatible":
            raise IncompatibleError(
                f"{item.label} does not fit base {label} ({len(report.problems)} problem(s)):",
                problems=[p.message for p in report.problems],
                hint=f"see `lorahub validate {adapter} --base {base}`",
            )
    notes = []
    if item.facts.use_dora:
        notes.append("DoRA adapter: these are the spectra of the LoRA part s * B @ A only, without the magnitudes")
    if item.layout.saved_tensors:
        notes.append(f"{len(item.layout.saved_tensors)} saved tensor(s) (modules_to_save) are counted as they are")
    with progress.task(f"analyzing {item.label}", len(item.layout.modules), unit="modules") as advance:
        analysis = analyze_adapter(
            item.label,
            item.digest,
            item.weights_path,
            item.layout,
            energies=targets,
            base=model,
            base_label=label,
            advance=advance,
            notes=notes,
        )
    if plot is not None:
        plot_spectra(analysis, plot)
    return analysis


def reduce(
    ctx: Context,
    adapter: str,
    name: str,
    *,
    rank: int | None = None,
    energy: float | None = None,
    dtype: str = "auto",
    output: str | os.PathLike[str] | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
    progress: Progress | None = None,
) -> ReduceResult:
    from lora_hub.rank.output import check_dtype, write_folder
    from lora_hub.rank.reduce import check_reducible, check_target, reduce_adapter

    progress = progress or NoProgress()
    AdapterName.parse(name)
    check_target(rank, energy)
    check_dtype(dtype)
    out = _check_output(ctx, output, [adapter])
    item, _, base = _adapter(ctx, adapter)
    check_reducible(item.label, item.facts, item.layout)
    with progress.task(f"reducing {item.label}", len(item.layout.modules), unit="modules") as advance:
        reduced = reduce_adapter(
            item.label, item.weights_path, item.facts, item.layout, rank=rank, energy=energy, dtype=dtype,
            advance=advance,
        )  # fmt: skip
    lineage = {
        "kind": "reduce",
        "method": "reduce",
        "params": {"rank": rank, "energy": energy, "dtype": dtype},
        "inputs": [{"ref": item.label, "digest": item.digest}],
        "ranks": reduced.ranks,
        "errors": reduced.errors,
        "versions": _versions(),
    }
    with _staged(ctx, out, "reduce") as folder:
        write_folder(folder, reduced.tensors, reduced.config)
        pushed = adapters.push(ctx, folder, name, description=description, tags=tags, base=base, lineage=lineage,
                          progress=progress)  # fmt: skip
    errors = list(reduced.errors.values())
    return ReduceResult(
        push=pushed,
        rank=rank,
        energy=energy,
        ranks=reduced.ranks,
        ranks_before=reduced.ranks_before,
        errors=reduced.errors,
        bounds=reduced.bounds,
        max_error=max(errors, default=0.0),
        mean_error=sum(errors) / len(errors) if errors else 0.0,
        params_before=reduced.params_before,
        params_after=reduced.params_after,
    )


def extract(
    ctx: Context,
    base: str,
    tuned: str,
    name: str,
    *,
    rank: int | None = None,
    energy: float | None = None,
    targets: Sequence[str] | None = None,
    modules_to_save: Sequence[str] = (),
    seed: int = 0,
    device: str = "auto",
    dtype: str = "float32",
    output: str | os.PathLike[str] | None = None,
    description: str | None = None,
    tags: Sequence[str] = (),
    progress: Progress | None = None,
) -> ExtractResult:
    from lora_hub.rank.output import check_dtype, lora_config, write_folder
    from lora_hub.rank.reduce import check_target

    started = time.perf_counter()
    progress = progress or NoProgress()
    AdapterName.parse(name)
    check_target(rank, energy)
    check_dtype(dtype)
    out = _check_output(ctx, output, [base, tuned])
    base_info, base_label, base_model = _base(ctx, base, progress)
    tuned_info, tuned_label, tuned_model = _base(ctx, tuned, progress)

    from lora_hub.merge.execute import pick_device
    from lora_hub.rank.extract import extract_lora, plan_extract

    plan = plan_extract(
        base_model,
        tuned_model,
        {n: t.digest for n, t in (base_info.tensors or {}).items()},
        {n: t.digest for n, t in (tuned_info.tensors or {}).items()},
        targets=targets,
        modules_to_save=modules_to_save,
    )
    if not plan.targets:
        raise InvalidArgumentError(
            f"no target weight of {tuned_label} differs from {base_label}: there is no update to extract",
            hint="check --tuned, or choose other modules with --targets",
        )
    if dtype == "auto":
        stored = {tuned_model.tensors[t.key][1].dtype for t in plan.targets}
        dtype = NAME.get(stored.pop(), "float32") if len(stored) == 1 else "float32"
    torch_device = pick_device(device)
    with progress.task(f"extracting {len(plan.targets)} modules", len(plan.targets), unit="tensors") as advance:
        result = extract_lora(
            plan, base_model, tuned_model, rank=rank, energy=energy, seed=seed, device=torch_device, dtype=dtype,
            advance=advance,
        )  # fmt: skip
    config = lora_config(
        result.ranks,
        {p: float(k) for p, k in result.ranks.items()},
        fan_in_fan_out=plan.fan_in_fan_out,
        modules_to_save=plan.modules_to_save or None,
        task_type=plan.task_type,
        base_model_name_or_path=base_label,
        revision=None,
    )
    params: dict[str, Any] = {
        "rank": rank,
        "energy": energy,
        "targets": list(targets) if targets else None,
        "modules_to_save": list(modules_to_save),
        "seed": seed,
        "dtype": dtype,
    }
    lineage = {
        "kind": "extract",
        "method": "extract",
        "params": params,
        "inputs": [
            {"role": "base", "ref": base_label, "digest": base_info.content_fingerprint},
            {"role": "tuned", "ref": tuned_label, "digest": tuned_info.content_fingerprint},
        ],
        "ranks": result.ranks,
        "errors": result.errors,
        "versions": _versions(),
    }
    with _staged(ctx, out, "extract") as folder:
        write_folder(folder, result.tensors, config)
        result.tensors.clear()
        pushed = adapters.push(ctx, folder, name, description=description, tags=tags, base=base, lineage=lineage,
                          progress=progress)  # fmt: skip
    errors = list(result.errors.values())
    return ExtractResult(
        push=pushed,
        rank=rank,
        energy=energy,
        ranks=result.ranks,
        errors=result.errors,
        max_error=max(errors),
        mean_error=sum(errors) / len(errors),
        saved=plan.saved,
        unchanged=plan.unchanged,
        not_captured=plan.not_captured,
        seconds=time.perf_counter() - started,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        device=str(torch_device),
    )


# --- the output folder --------------------------------------------------------------------------


def _check_output(ctx: Context, output: str | os.PathLike[str] | None, inputs: Sequence[str]) -> Path | None:
    """``output`` checked by the output rule (``lora_hub._fs``) before any work; None for no output."""
    if output is None:
        return None
    return prepare_output(Path(output), replace=Replace.NEVER, protected=ctx.protected(input_folders(inputs)))


@contextlib.contextmanager
def _staged(ctx: Context, output: Path | None, kind: str) -> Iterator[Path]:
    """A fresh folder to write the adapter into; it becomes ``output`` (if given) only once the block
    succeeded, and is removed otherwise: nothing is left half-written."""
    if output is None:
        with tempfile.TemporaryDirectory(prefix="lorahub-rank-") as tmp:
            yield Path(tmp)
        return
    with staged_output(output, kind=kind, registry=ctx.partials()) as tmp:
        yield tmp
