"""Merging adapters into a base, by phase: resolve the inputs (``adapter_input``, ``merge_input``),
plan (``lora_hub.merge.plan``), serve a recorded recipe (``reuse_merge``), run the streaming
engine into a staged output (``run``), record and register the result (``register_merged``)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_hub import _faults, compat
from lora_hub._context import Context
from lora_hub._fs import Protected, Replace, prepare_output, staged_output, written_by_lorahub
from lora_hub.core import bases, fits
from lora_hub.core.adapters import manifest_digest
from lora_hub.core.common import (
    check_free_space,
    copy_tree,
    input_folders,
    library_versions,
    peak_rss,
    split_weight,
)
from lora_hub.errors import (
    ConflictError,
    IncompatibleError,
    IntegrityError,
    InvalidArgumentError,
    LoraHubError,
)
from lora_hub.formats.hf import ModelDir, read_model_dir
from lora_hub.formats.peft import WEIGHTS_NAME, read_adapter_dir
from lora_hub.hashing import hash_file
from lora_hub.progress import NoProgress, Progress
from lora_hub.refs import AdapterName, Ref
from lora_hub.types import (
    BaseModelInfo,
    FileEntry,
    MergeRecord,
    MergeReport,
    MergeResult,
)

if TYPE_CHECKING:
    from lora_hub.merge.plan import AdapterInput, MergePlan


MERGE_RECORD_FILE = "lorahub_merge.json"
# Checked before any work; whether torch can use the device is asked once torch has loaded.
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


def merge(
    ctx: Context,
    base: str | os.PathLike[str],
    adapters: Sequence[str],
    output: str | os.PathLike[str],
    *,
    name: str | None = None,
    method: str = "linear",
    params: Mapping[str, Any] | None = None,
    dtype: str = "auto",
    device: str = "auto",
    shard_size: str | int = "5GB",
    recompute: bool = False,
    force: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    into_store: bool = False,
) -> MergeResult:
    """Merge ``adapters`` (``ref[@weight]`` or ``folder[@weight]``) into ``base``, writing an HF
    model folder at ``output``: ``W' = W + sum_i w_i * s_i * B_i @ A_i`` for every target.

    Every adapter is checked against the base before anything is written; every changed
    tensor is verified (see ``lora_hub.merge.execute``); the output appears only when complete.
    The same recipe again is served from the catalog (copied, if ``output`` is elsewhere)
    unless ``recompute``. ``output`` follows the rule of ``lora_hub._fs``: never lora-hub's own
    data, a registered base's folder or an input; a non-empty folder only with ``force`` (one
    lora-hub wrote) or ``overwrite`` (any). With ``name``, the output is registered as a base
    with its lineage. ``method`` and ``params`` choose how several adapters combine
    (``lora_hub.merge.methods``; random methods take ``params["seed"]``).

    A recipe whose recorded output is a stored base (a merge stored by a job, whose folder is
    gone) is served from the blob store: written out to ``output``, or, with ``into_store``
    (the caller stores the result as the base ``name``) and the same name, not written at all
    (the result's ``path`` is then empty).
    """
    from lora_hub.merge.plan import parse_size, plan_merge

    progress = progress or NoProgress()
    out = Path(os.path.abspath(output))
    if name is not None:
        name = str(AdapterName.parse(name))
    if not _DEVICE_NAME.fullmatch(device):
        raise InvalidArgumentError(f"unknown device {device!r}", hint="use auto, cpu or cuda (or cuda:N)")
    size_limit = parse_size(shard_size)
    replace = Replace.of(force=force, overwrite=overwrite)
    own = name if name is not None and _own_output(ctx, name, out) else None
    protected = ctx.protected(input_folders([str(base), *(split_weight(a)[0] for a in adapters)]), except_base=own)
    # A folder that holds a recorded merge may be this recipe's output, served again as it
    # is; whether it is can be told once the recipe is planned. Anything else is checked now.
    maybe_in_place = (out / MERGE_RECORD_FILE).is_file() and not recompute
    if not maybe_in_place:
        prepare_output(out, replace=replace, protected=protected)
    base_info, base_label, model = bases.open_base(ctx, base, progress)
    if model is None:
        raise bases.why_no_weights(ctx, base_info, base_label)
    inputs = [merge_input(ctx, spec, base_info, base_label) for spec in adapters]
    plan = plan_merge(
        model,
        base_info.content_fingerprint,
        inputs,
        method=method,
        params=dict(params or {}),
        dtype=dtype,
        shard_size=size_limit,
    )
    _check_name_free(ctx, name, plan.recipe_digest)
    if not recompute:
        reused = reuse_merge(ctx, plan.recipe_digest, out, name, replace, protected, progress,
                             into_store=into_store)  # fmt: skip
        if reused is not None:
            return reused
    out = prepare_output(out, replace=replace, protected=protected)
    extras = sum(model.files[rel].stat().st_size for rel in plan.copy_files)
    check_free_space(out.parent, plan_bytes(plan) + extras, what="the merged model")
    details = {"recipe_digest": plan.recipe_digest}
    with staged_output(out, kind="merge", replace=replace, registry=ctx.partials(), details=details) as tmp:
        stats, torch_device = run(ctx, plan, model, base_info, inputs, tmp, dtype=dtype, device=device,
                                  progress=progress)  # fmt: skip
        _faults.checkpoint("merge.before_rename")
        merged = compat.describe_model(read_model_dir(tmp), stats.digests)
        record = MergeRecord(
            recipe_digest=plan.recipe_digest,
            recipe=plan.recipe.model_dump(mode="json"),
            output_path=str(out),
            content_fingerprint=merged.content_fingerprint,
            name=name,
            report=merge_report(stats),
            versions=library_versions(),
        )
        (tmp / MERGE_RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n")
    record = _record(ctx, record, out, name, stats.digests)
    return MergeResult(
        path=str(out),
        record=record,
        reused=False,
        registered=name,
        tensors_merged=stats.tensors_merged,
        tensors_copied=stats.tensors_copied,
        tensors_converted=stats.tensors_converted,
        bytes_written=stats.bytes_written,
        seconds=stats.seconds,
        peak_rss_bytes=peak_rss(),
        device=str(torch_device),
    )


def _own_output(ctx: Context, name: str, out: Path) -> bool:
    """``out`` is the folder of base ``name`` and lora-hub wrote it as a merge: the merge of the
    recipe registered as ``name`` may replace it (``--recompute --force``); that the recipe is the
    same is checked once it is planned (``_check_name_free``)."""
    if not ctx.catalog.bases.has(name):
        return False
    info = ctx.catalog.bases.get(name, with_tensors=False)
    marker = written_by_lorahub(out)
    return (
        info.path is not None
        and Path(info.path) == out
        and bool((info.lineage or {}).get("recipe_digest"))
        and marker is not None
        and marker.get("kind") == "merge"
    )


def _check_name_free(ctx: Context, name: str | None, recipe_digest: str) -> None:
    """``--name`` must be free, or already name this recipe's output."""
    if name is not None and ctx.catalog.bases.has(name):
        lineage = ctx.catalog.bases.get(name, with_tensors=False).lineage or {}
        if lineage.get("recipe_digest") != recipe_digest:
            raise ConflictError(
                f"base {name} is already registered with other content",
                hint=f"choose another --name, or `lorahub base rm {name}` first",
            )


def run(
    ctx: Context,
    plan: MergePlan,
    model: ModelDir,
    base_info: BaseModelInfo,
    inputs: Sequence[AdapterInput],
    folder: Path,
    *,
    dtype: str,
    device: str,
    progress: Progress,
) -> tuple[Any, Any]:
    """Write the plan's output into the empty ``folder``: the base's side files, then the shards
    by the streaming engine (``lora_hub.merge.execute``). Returns its stats and the torch device."""
    from lora_hub.merge.plan import open_output

    for rel in plan.copy_files:
        target = folder / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model.files[rel], target)
    set_config_dtype(folder, dtype)
    output_files = open_output(plan, folder, direct=ctx.settings.direct_io)
    try:
        # Only now: torch loads in about a second, with the output files already made
        # (and, for buffered writes, their pages being warmed on the other core).
        from lora_hub.merge import execute as ex

        torch_device = ex.pick_device(device)
        label = f"merging {plan.touched} of {len(plan.tensors)} tensors"
        with progress.task(label, plan_bytes(plan)) as advance:
            stats = ex.execute(
                plan,
                model,
                [a.weights_path for a in inputs],
                folder,
                device=torch_device,
                base_digests={n: t.digest for n, t in (base_info.tensors or {}).items()},
                adapters=inputs,
                advance=advance,
                output=output_files,
                threads=ctx.settings.torch_threads,
            )
    finally:
        output_files.close()
    return stats, torch_device


def _record(ctx: Context, record: MergeRecord, out: Path, name: str | None, digests: Mapping[str, str]) -> MergeRecord:
    """Record the merge; with ``name``, register its output as a base, and only then let the
    record name it."""
    record = ctx.catalog.merges.record(record.model_copy(update={"name": None}))
    if name is not None:
        register_merged(ctx, out, name, digests, record)
        record = ctx.catalog.merges.record(record.model_copy(update={"name": name}))
    return record


def adapter_input(ctx: Context, spec: str) -> tuple[AdapterInput, compat.AdapterSide, str | None]:
    """``ref[@weight]`` or ``folder[@weight]``: the adapter's facts, layout and weights file
    (checked against its digest), how it describes itself to ``compat``, and the registered
    base it was pushed against."""
    from lora_hub.merge.plan import AdapterInput

    target, weight = split_weight(spec)
    if Path(target).is_dir():
        folder = read_adapter_dir(target)
        entries = [FileEntry(path=r, digest=hash_file(p)[0], size=p.stat().st_size) for r, p in folder.files.items()]
        side = compat.AdapterSide(target, folder.facts, folder.layout, folder.facts.model_type)
        item = AdapterInput(
            label=target,
            digest=manifest_digest(entries),
            weight=weight,
            facts=folder.facts,
            layout=folder.layout,
            weights_path=str(folder.files[WEIGHTS_NAME]),
        )
        return item, side, None
    version, base_model_type = ctx.catalog.adapters.trained_on(Ref.parse(target))
    assert version.layout is not None
    model_type = base_model_type or version.facts.model_type
    side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type, version.base_fingerprint)
    entry = next(f for f in version.files if f.path == WEIGHTS_NAME)
    try:
        path = ctx.local_copy(entry.digest, verify=True)
    except IntegrityError as exc:
        raise IntegrityError(
            f"the weights of {version.ref} are missing or corrupted in the store ({entry.digest})",
            hint="push the adapter's folder again: the push rewrites damaged blobs",
        ) from exc
    item = AdapterInput(
        label=version.ref,
        digest=version.digest,
        weight=weight,
        facts=version.facts,
        layout=version.layout,
        weights_path=str(path),
    )
    return item, side, version.base


def merge_input(ctx: Context, spec: str, base_info: BaseModelInfo, base_label: str) -> AdapterInput:
    item, side, _ = adapter_input(ctx, spec)
    report = compat.check(side, base_info, base_label)
    if report.verdict == "incompatible":
        raise IncompatibleError(
            f"{item.label} does not fit base {base_label} ({len(report.problems)} problem(s)):",
            problems=[p.message for p in report.problems],
            hint=f"see `lorahub validate {split_weight(spec)[0]} --base {base_label}`",
        )
    return item


def reuse_merge(
    ctx: Context,
    recipe_digest: str,
    out: Path,
    name: str | None,
    replace: Replace,
    protected: Sequence[Protected],
    progress: Progress,
    *,
    into_store: bool = False,
) -> MergeResult | None:
    """The recorded output of this recipe, if it still holds what was recorded: served where it
    is when ``out`` is that folder, else copied to ``out`` (under the output rule); when the
    folder is gone, from the stored base the record names (``_reuse_stored``)."""
    record = ctx.catalog.merges.find(recipe_digest)
    if record is None:
        return None
    if not Path(record.output_path).is_dir():
        return _reuse_stored(ctx, record, out, name, replace, protected, progress, into_store=into_store)
    source = Path(record.output_path)
    try:
        model = read_model_dir(source)
        digests, _ = compat.hash_tensors(model, ctx.catalog.hashes)
    except LoraHubError:
        return None
    if compat.describe_model(model, digests).content_fingerprint != record.content_fingerprint:
        return None
    if source.resolve() != out.resolve():
        out = prepare_output(out, replace=replace, protected=protected)
        details = {"recipe_digest": recipe_digest, "copied_from": str(source)}
        with staged_output(out, kind="merge", replace=replace, registry=ctx.partials(), details=details) as tmp:
            copy_tree(source, tmp, progress)
    if name is not None and (name != record.name or not ctx.catalog.bases.has(name)):
        register_merged(ctx, out, name, digests, record)
        record = ctx.catalog.merges.record(record.model_copy(update={"name": name}))
    return MergeResult(path=str(out), record=record, reused=True, registered=name, peak_rss_bytes=peak_rss())


def _reuse_stored(
    ctx: Context,
    record: MergeRecord,
    out: Path,
    name: str | None,
    replace: Replace,
    protected: Sequence[Protected],
    progress: Progress,
    *,
    into_store: bool,
) -> MergeResult | None:
    """The record's output as the stored base it was registered as, if that base is in the blob
    store with the recorded content: nothing written for ``into_store`` under the same name,
    else pulled to ``out`` (each file checked against its digest) and registered as ``name``."""
    stored = _stored_output(ctx, record)
    if stored is None:
        return None
    if into_store and name == record.name:
        return MergeResult(path="", record=record, reused=True, registered=name, peak_rss_bytes=peak_rss())
    bases.write_stored(ctx, stored, out, replace=replace, protected=protected, progress=progress)
    if name is not None and name != record.name:
        digests, _ = compat.hash_tensors(read_model_dir(out), ctx.catalog.hashes)
        register_merged(ctx, out, name, digests, record)
        record = ctx.catalog.merges.record(record.model_copy(update={"name": name}))
    return MergeResult(path=str(out), record=record, reused=True, registered=name, peak_rss_bytes=peak_rss())


def stored_record(
    ctx: Context,
    base: str,
    adapters: Sequence[str],
    *,
    name: str,
    method: str = "linear",
    params: Mapping[str, Any] | None = None,
    dtype: str = "auto",
    shard_size: str | int = "5GB",
) -> MergeResult | None:
    """What ``merge(..., name=name, into_store=True)`` returns without merging, known from the
    catalog alone (no tensor read, no blob fetched): the record of this recipe when its output
    is the stored base ``name`` with the recorded content. None when that is not known for
    certain from the catalog: an input that is a folder, a base or adapter not registered, a
    recipe not recorded, or recorded under another output; the merge then decides as always."""
    from lora_hub.core.common import is_base_name
    from lora_hub.merge.plan import make_recipe, parse_size

    if not (is_base_name(base) and ctx.catalog.bases.has(base)) or not ctx.catalog.bases.has(name):
        return None
    inputs = []
    for spec in adapters:
        target, weight = split_weight(spec)
        if Path(target).exists():
            return None
        try:
            version = ctx.catalog.adapters.get(Ref.parse(target))
        except LoraHubError:
            return None
        inputs.append((version.ref, version.digest, weight))
    fingerprint = ctx.catalog.bases.get(base, with_tensors=False).content_fingerprint
    recipe = make_recipe(fingerprint, inputs, method=method, params=dict(params or {}), dtype=dtype,
                         shard_size=parse_size(shard_size))  # fmt: skip
    record = ctx.catalog.merges.find(recipe.digest)
    if record is None or record.name != str(AdapterName.parse(name)) or _stored_output(ctx, record) is None:
        return None
    return MergeResult(path="", record=record, reused=True, registered=record.name)


def _stored_output(ctx: Context, record: MergeRecord) -> BaseModelInfo | None:
    """The base the record names, if it is in the blob store with the recorded content."""
    if not record.name or not ctx.catalog.bases.has(record.name):
        return None
    stored = ctx.catalog.bases.get(record.name, with_tensors=False)
    return stored if stored.stored and stored.content_fingerprint == record.content_fingerprint else None


def register_merged(ctx: Context, out: Path, name: str, digests: Mapping[str, str], record: MergeRecord) -> None:
    model = read_model_dir(out)
    info = compat.describe_model(model, digests, name=name).model_copy(
        update={
            "lineage": {
                "recipe_digest": record.recipe_digest,
                "recipe": record.recipe,
                "report": record.report.model_dump(mode="json"),
                "versions": record.versions,
            }
        }
    )
    ctx.catalog.bases.add(info)
    fits.record_fits_for_base(ctx, name, info)


def plan_bytes(plan: MergePlan) -> int:
    from lora_hub.formats.dtypes import ITEMSIZE as DTYPE_SIZES

    return sum(math.prod(t.shape) * DTYPE_SIZES[t.dtype_out] for t in plan.tensors)


def set_config_dtype(folder: Path, dtype: str) -> None:
    config = folder / "config.json"
    if dtype == "auto" or not config.is_file():
        return
    doc = json.loads(config.read_text())
    # transformers 5 writes ``dtype``, older releases ``torch_dtype``; every release reads the latter.
    keys = [k for k in ("torch_dtype", "dtype") if k in doc] or ["torch_dtype"]
    for key in keys:
        doc[key] = dtype
    config.write_text(json.dumps(doc, indent=2) + "\n")


def merge_report(stats: Any) -> MergeReport:
    worst = max(stats.errors, key=lambda k: stats.errors[k]) if stats.errors else None
    return MergeReport(
        verified_tensors=len(stats.errors),
        worst_error=stats.errors[worst] if worst else None,
        worst_tensor=worst,
        errors=stats.errors,
        tolerances=stats.tolerances,
        passed=all(stats.errors[k] <= stats.tolerances[k] for k in stats.errors),
        error_kind="fraction_of_bound",
        checks=stats.checks,
        rows_checked=stats.rows_checked,
        entries_checked=stats.entries_checked,
        ambiguous=stats.ambiguous,
        thresholds=stats.thresholds,
        not_verified=stats.not_verified,
    )


def merge_record(ctx: Context, recipe_digest: str) -> MergeRecord | None:
    return ctx.catalog.merges.find(recipe_digest)


def methods() -> list[dict[str, Any]]:
    from lora_hub.merge.methods import METHODS

    return [m.describe() for m in METHODS.values()]
