"""Merge-and-export pipelines: ``lorahub run PIPELINE.yaml`` and ``lorahub merge ... --export``.

A pipeline file follows mergekit's habits (``base_model``, ``merge_method``, ``models`` with
``parameters``) and adds where the results go::

    base_model: llama-3.2-1b            # a registered base or a model folder
    merge_method: ties                  # default linear; see `lorahub methods`
    parameters: {density: 0.5, seed: 7} # the method's parameters
    models:
      - model: acme/sql:3               # an adapter reference or folder
        parameters: {weight: 0.7}       # (or `weight: 0.7`)
      - model: acme/chat
        weight: 0.3
    dtype: bfloat16                     # default auto (the base's)
    output: ./merged                    # relative paths are relative to the file; left out,
                                        # a job through a server stores the model as base `name`
    name: acme/llama-sql-chat           # register the merged model as a base (optional)
    exports:
      - format: onnx                    # output default: <output>-<format>
      - format: torch-export
        with_cache: true
        max_seq: 256

Each step is recorded and served from its record when it is unchanged (the merge by its recipe,
each export by its key), so running an unchanged pipeline again does no work.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, model_validator

from lora_hub._context import Context
from lora_hub._fs import Replace, prepare_output
from lora_hub.core import exporting, merging
from lora_hub.core.common import input_folders, is_base_name, split_weight
from lora_hub.errors import ExportError, InvalidArgumentError, LoraHubError
from lora_hub.export.plan import ModelFacts
from lora_hub.export.run import ExportResult, inspect_model
from lora_hub.hubsync.types import HubExportResult
from lora_hub.progress import Progress
from lora_hub.types import MergeResult

MAX_PIPELINE_BYTES = 1 << 20


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Spec):
    model: str = Field(description="an adapter reference or folder")
    weight: float | None = None
    parameters: dict[str, Any] = Field(default_factory=dict, description="mergekit's spelling: {weight: w}")

    @property
    def spec(self) -> str:
        weight = self.weight if self.weight is not None else self.parameters.get("weight", 1.0)
        return self.model if weight == 1.0 else f"{self.model}@{weight}"

    @model_validator(mode="after")
    def _one_weight(self) -> ModelSpec:
        unknown = set(self.parameters) - {"weight"}
        if unknown:
            raise ValueError(f"per-model parameters other than weight are not supported: {', '.join(sorted(unknown))}")
        if self.weight is not None and "weight" in self.parameters:
            raise ValueError("give the weight once: `weight:` or `parameters: {weight:}`")
        return self


class ExportSpec(_Spec):
    format: str
    output: str | None = Field(default=None, description="default: the merge's output followed by -<format>")
    dtype: str = "auto"
    device: str = "auto"
    max_batch: int | None = None
    max_seq: int | None = None
    opset: int | None = None
    with_cache: bool = False


class PushSpec(_Spec):
    """Where the merged model goes on the Hugging Face Hub (``lorahub hub export``'s arguments)."""

    repo_id: str = Field(description="the Hub model repo, ORG/NAME")
    revision: str | None = Field(default=None, description="the branch (default main)")
    private: bool = False
    create: bool = Field(default=False, description="create the repo (and the branch) if missing")


class PipelineSpec(_Spec):
    """One merge and its exports, as data (``lorahub run`` reads it from YAML)."""

    base_model: str
    models: list[ModelSpec] = Field(min_length=1)
    merge_method: str = "linear"
    parameters: dict[str, Any] = Field(default_factory=dict)
    dtype: str = "auto"
    shard_size: str | int = "5GB"
    output: str = Field(
        default="",
        description="the merged model's folder; left out, a job submitted through a server stores it as the "
        "base `name` (pull it with `lorahub base pull NAME -o DIR`); a local run needs it",
    )
    name: str | None = None
    exports: list[ExportSpec] = Field(default_factory=list)
    push: PushSpec | None = Field(default=None, description="then export the merged model to the Hub (needs name)")

    @model_validator(mode="after")
    def _push_needs_a_name(self) -> PipelineSpec:
        if self.push is not None and not self.name:
            raise ValueError("`push:` exports the registered merged model: give it a `name:` too")
        return self


class PipelineResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    merge: MergeResult
    exports: list[ExportResult] = Field(default_factory=list)
    pushed: HubExportResult | None = Field(default=None, description="the Hub export of `push:`")

    @computed_field(description="false when every step was served from its record")  # type: ignore[prop-decorator]
    @property
    def work_done(self) -> bool:
        pushed = self.pushed is not None and self.pushed.created_commit
        return not self.merge.reused or any(not e.reused for e in self.exports) or pushed


def load(path: str | os.PathLike[str]) -> PipelineSpec:
    """The pipeline in a YAML file, its relative paths made relative to the file's folder."""
    import yaml

    file = Path(path)
    try:
        if file.stat().st_size > MAX_PIPELINE_BYTES:
            raise InvalidArgumentError(f"{file}: a pipeline file is at most {MAX_PIPELINE_BYTES:,} bytes")
        doc = yaml.safe_load(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgumentError(f"{file}: no such pipeline file") from None
    except UnicodeDecodeError as exc:
        raise InvalidArgumentError(f"{file}: not a text file ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidArgumentError(f"{file}: not valid YAML: {where}{problem}") from None
    if not isinstance(doc, dict):
        raise InvalidArgumentError(f"{file}: a pipeline is a mapping (base_model, models, output, ...)")
    try:
        spec = PipelineSpec.model_validate(doc)
    except ValidationError as exc:
        problems = [f"{'.'.join(map(str, e['loc'])) or 'pipeline'}: {e['msg']}" for e in exc.errors()]
        raise InvalidArgumentError(
            f"{file}: {len(problems)} problem(s): " + "; ".join(problems[:10]),
            hint="see `lorahub run --help` for the fields",
        ) from None
    return _relative_to(spec, file.resolve().parent)


def _relative_to(spec: PipelineSpec, folder: Path) -> PipelineSpec:
    def resolve(value: str) -> str:
        looks_like_path = value.startswith((".", "/", "~")) or (folder / value).exists()
        return str((folder / Path(value).expanduser()).resolve()) if looks_like_path else value

    models = [m.model_copy(update={"model": resolve(m.model)}) for m in spec.models]
    exports = [e.model_copy(update={"output": resolve(e.output)}) if e.output else e for e in spec.exports]
    return spec.model_copy(
        update={
            "base_model": resolve(spec.base_model),
            "models": models,
            "output": resolve(spec.output) if spec.output else "",
            "exports": exports,
        }
    )


def run(
    ctx: Context,
    spec: PipelineSpec,
    *,
    device: str = "auto",
    recompute: bool = False,
    force: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    into_store: bool = False,
) -> PipelineResult:
    """Merge, then export the merged model in each format: each step served from its record when
    unchanged (``recompute`` does them again); ``force``/``overwrite`` apply to every output.
    ``into_store``: the merged model is to be stored as the base ``name`` (``merging.merge``).
    Every export's format, options and output folder are checked before the merge starts."""
    from lora_hub.export.exporter import RECORD_FILE

    if not spec.output:
        raise InvalidArgumentError(
            "the pipeline has no `output:` folder for the merged model",
            hint="add `output: ./merged`, or submit it through a server (LORAHUB_URL, --submit) with a `name:` "
            "to store the merged model there as a base",
        )
    outputs = check(ctx, spec)
    # every output checked now, rather than after a merge of minutes (a recorded export's folder
    # may be served as it is: its export checks it again)
    replace = Replace.of(force=force, overwrite=overwrite)
    protected = ctx.protected(input_folders([spec.base_model, *(m.model for m in spec.models)]))
    for out in outputs:
        if recompute or not (Path(out) / RECORD_FILE).is_file():
            prepare_output(Path(out), replace=replace, protected=protected)
    merged = merging.merge(
        ctx,
        spec.base_model,
        [m.spec for m in spec.models],
        spec.output,
        name=spec.name,
        method=spec.merge_method,
        params=spec.parameters,
        dtype=spec.dtype,
        device=device,
        shard_size=spec.shard_size,
        recompute=recompute,
        force=force,
        overwrite=overwrite,
        progress=progress,
        into_store=into_store,
    )
    source = merged.registered or merged.path
    exports = [
        exporting.export(
            ctx,
            source,
            out,
            e.format,
            dtype=e.dtype,
            device=e.device,
            max_batch=e.max_batch,
            max_seq=e.max_seq,
            opset=e.opset,
            with_cache=e.with_cache,
            recompute=recompute,
            force=force,
            overwrite=overwrite,
            progress=progress,
        )
        for e, out in zip(spec.exports, outputs, strict=True)
    ]
    pushed = None
    if spec.push is not None and merged.registered:
        from lora_hub.core import hubsync

        p = spec.push
        pushed = hubsync.export(ctx, merged.registered, p.repo_id, revision=p.revision, private=p.private,
                                create=p.create, progress=progress)  # fmt: skip
    return PipelineResult(merge=merged, exports=exports, pushed=pushed)


def check(ctx: Context, spec: PipelineSpec) -> list[str]:
    """The exports' output folders, after checking that each format exists with its options,
    that each export's plan works on the merged model (planned on the base's config, with the
    merge's dtype: a merge only changes weights), and that no two steps write the same folder (or
    one inside another)."""
    from lora_hub.export import get_exporter
    from lora_hub.export.environment import probe_environment
    from lora_hub.export.plan import make_options, plan_export

    outputs: list[str] = []
    env = probe_environment() if spec.exports else None
    facts = _merged_facts(ctx, spec) if spec.exports else None
    for i, e in enumerate(spec.exports):
        try:
            exporter = get_exporter(e.format)
            options = make_options(dtype=e.dtype, device=e.device, max_batch=e.max_batch, max_seq=e.max_seq,
                                   opset=e.opset, with_cache=e.with_cache)  # fmt: skip
            if facts is not None and env is not None:
                plan_export(spec.output, facts, exporter, options, env)
        except (InvalidArgumentError, ExportError) as exc:
            cls = ExportError if isinstance(exc, ExportError) else InvalidArgumentError
            raise cls(
                f"exports[{i}] ({e.format}): {exc.message}",
                hint=(exc.hint + "; " if exc.hint else "") + "nothing was merged",
            ) from None
        reason = exporter.unavailable(env, None if e.device == "auto" else e.device) if env is not None else None
        if reason is not None:
            raise ExportError(
                f"exports[{i}]: cannot export to {e.format} on this machine: {reason}",
                hint="run `lorahub exporters` to see which formats work here; nothing was merged",
            )
        outputs.append(os.path.abspath(e.output or f"{spec.output}-{e.format}"))
    folders = [Path(os.path.abspath(spec.output)), *map(Path, outputs)]
    for i, a in enumerate(folders):
        for b in folders[i + 1 :]:
            if a == b or a in b.parents or b in a.parents:
                raise InvalidArgumentError(
                    f"two steps of the pipeline write {a} and {b}: each needs a folder of its own",
                    hint="give the exports distinct `output:` folders, outside the merge's",
                )
    return outputs


def _merged_facts(ctx: Context, spec: PipelineSpec) -> ModelFacts | None:
    """The facts an export plan needs of the merged model, read from the base's folder (None for
    a base kept only in the blob store: each export plans itself after the merge then)."""
    base = spec.base_model
    if is_base_name(base) and ctx.catalog.bases.has(base):
        base = ctx.catalog.bases.get(base).path or ""
    if not base or not (Path(base) / "config.json").is_file():
        return None
    try:
        facts = inspect_model(base)
    except LoraHubError:
        return None  # the merge itself says what is wrong with the base
    if spec.dtype in ("float32", "bfloat16", "float16"):
        facts = facts.model_copy(update={"config_dtype": spec.dtype})
    return facts


def merge_spec(
    base: str,
    adapters: Sequence[str],
    output: str | os.PathLike[str],
    *,
    formats: Sequence[str],
    name: str | None = None,
    method: str = "linear",
    params: dict[str, Any] | None = None,
    dtype: str = "auto",
    shard_size: str | int = "5GB",
) -> PipelineSpec:
    """The pipeline of ``lorahub merge ... --export FORMAT,...``: the merge, then one export per
    format at ``<output>-<format>``."""
    models = []
    for a in adapters:
        target, weight = split_weight(a)
        models.append(ModelSpec(model=target, weight=weight))
    return PipelineSpec(
        base_model=str(base),
        models=models,
        merge_method=method,
        parameters=dict(params or {}),
        dtype=dtype,
        shard_size=shard_size,
        output=str(Path(os.path.abspath(output))),
        name=name,
        exports=[ExportSpec(format=f) for f in dict.fromkeys(formats)],  # a format given twice: once
    )
