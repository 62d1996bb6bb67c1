"""Carry out an export: read the folder's facts, plan, then load the model with transformers,
compute the eager reference, build the artifact into a hidden folder beside the output, load it
back in its own runtime, pass the parity gate, write ``lorahub_export.json`` and rename the folder
into place. Any failure (or Ctrl-C) removes the hidden folder: nothing is left at the output.

The eager model is freed before the artifact is loaded back, so an export holds one copy of the
weights at a time (plus what the exporter itself needs while it runs).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lora_hub._fs import PARTIAL_MARK, PartialRegistry, Protected, Replace, prepare_output, staged_output
from lora_hub.errors import ExportError, InvalidModelError, LoraHubError
from lora_hub.export import EXPORTERS, get_exporter, parity
from lora_hub.export.environment import Environment, probe_environment
from lora_hub.export.exporter import RECORD_FILE, BuildContext, ExporterInfo
from lora_hub.export.plan import ExportOptions, ExportPlan, ModelFacts, Task, plan_export
from lora_hub.formats.hf import read_model_dir
from lora_hub.hashing import hash_file
from lora_hub.progress import NoProgress, Progress

RECORD_VERSION = 1


class ArtifactFile(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str = Field(description="relative to the output folder")
    size: int
    digest: str


class ExportRecord(BaseModel):
    """Everything an export produced and checked: what ``lorahub_export.json`` holds, and what a
    catalog would record (``plan.key`` identifies the artifact)."""

    model_config = ConfigDict(frozen=True)

    record_version: int = RECORD_VERSION
    plan: ExportPlan
    artifacts: list[ArtifactFile]
    format_facts: dict[str, Any] = Field(description="opset, compiler metadata, engine settings... per format")
    parity: parity.ParityReport
    usage: str = Field(description="the few lines that load and run the artifact")
    timings: dict[str, float] = Field(description="seconds per phase: load, reference, export, compile, check, total")
    peak_rss_bytes: int = Field(description="peak resident memory of the exporting process")
    created_at: datetime


class ExportResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    path: str
    record: ExportRecord
    reused: bool = Field(default=False, description="served from the catalog's record of the same key")


# --- the folder's facts --------------------------------------------------------------------------

_TASK_MAPPINGS: tuple[tuple[str, Task | None], ...] = (
    ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "causal-lm"),
    ("MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", None),
    ("MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES", "sequence-classification"),
    ("MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES", "token-classification"),
    ("MODEL_FOR_MASKED_LM_MAPPING_NAMES", "masked-lm"),
    ("MODEL_MAPPING_NAMES", "feature-extraction"),
)


def _names(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value or ()]


def inspect_model(folder: str | os.PathLike[str]) -> ModelFacts:
    """The model in ``folder`` as transformers would load it, from its config alone. Refuses a
    folder that is not an HF model folder (or has pickled weights only) and an architecture that
    transformers does not know."""
    model_dir = read_model_dir(folder)
    config = model_dir.config
    path = str(folder)
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise InvalidModelError("config.json has no model_type", path=path, hint="save it with save_pretrained")
    import transformers
    from transformers import CONFIG_MAPPING
    from transformers.models.auto import modeling_auto

    version = transformers.__version__
    known = (
        "lorahub export loads models with the classes built into transformers (no remote code); "
        "a newer transformers may know it"
    )
    if model_type not in CONFIG_MAPPING:
        raise InvalidModelError(f"transformers {version} does not know the model type {model_type!r}", path=path,
                                hint=known)  # fmt: skip
    archs = _names(config.get("architectures"))
    arch = archs[0] if archs else next(iter(_names(modeling_auto.MODEL_MAPPING_NAMES.get(model_type))), None)
    cls = getattr(transformers, arch, None) if arch else None
    if cls is None:
        raise InvalidModelError(f"transformers {version} has no architecture {arch!r} (model type {model_type!r})",
                                path=path, hint=known)  # fmt: skip
    task: Task | None = None
    for mapping, kind in _TASK_MAPPINGS:
        if any(arch in _names(v) for v in getattr(modeling_auto, mapping, {}).values()):
            if kind is None:
                raise InvalidModelError(
                    f"{arch} is an encoder-decoder model; lorahub export handles decoders and encoders only",
                    path=path,
                )
            task = kind
            break
    if task is None:
        raise InvalidModelError(
            f"lorahub export does not handle {arch}: it exports causal LMs, encoders, masked LMs and sequence or "
            "token classifiers",
            path=path,
        )
    try:
        with parity.quiet():  # transformers warns about configs it accepts anyway
            cfg = CONFIG_MAPPING[model_type].from_dict(config)
    except Exception as exc:
        raise InvalidModelError(f"transformers cannot read its config.json: {exc}", path=path) from exc
    text = cfg.get_text_config()
    pad = getattr(text, "pad_token_id", None)
    dtype = config.get("torch_dtype") or config.get("dtype")
    decoder = task == "causal-lm"
    try:
        takes_use_cache = "use_cache" in inspect.signature(cls.forward).parameters
    except (TypeError, ValueError):
        takes_use_cache = decoder
    return ModelFacts(
        model_type=model_type,
        architecture=arch,
        task=task,
        output="last_hidden_state" if task == "feature-extraction" else "logits",
        decoder=decoder,
        use_cache_kwarg=takes_use_cache,
        static_cache=decoder and bool(getattr(cls, "_can_compile_fullgraph", False)),
        config_dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
        vocab_size=getattr(text, "vocab_size", None),
        hidden_size=getattr(text, "hidden_size", None),
        num_labels=cfg.num_labels if task in ("sequence-classification", "token-classification") else None,
        max_positions=getattr(text, "max_position_embeddings", None),
        pad_token_id=pad if isinstance(pad, int) else None,
        weight_bytes=model_dir.weight_bytes,
    )


# --- plan and execute ----------------------------------------------------------------------------


def plan(
    folder: str | os.PathLike[str],
    format: str,
    options: ExportOptions | None = None,
    *,
    source_fingerprint: str | None = None,
    env: Environment | None = None,
) -> ExportPlan:
    """The plan of exporting ``folder`` to ``format``: refuses an unknown format, a format this
    machine cannot run, and options that do not apply, before anything is loaded."""
    exporter = get_exporter(format)
    facts = inspect_model(folder)
    return plan_export(
        str(Path(folder).absolute()),
        facts,
        exporter,
        options or ExportOptions(),
        env or probe_environment(),
        source_fingerprint=source_fingerprint,
    )


def export_model(
    folder: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str,
    options: ExportOptions | None = None,
    *,
    source_fingerprint: str | None = None,
    force: bool = False,
    overwrite: bool = False,
    protected: Sequence[Protected] = (),
    registry: PartialRegistry | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Plan and execute (see ``plan`` and ``execute``). ``output`` follows ``lora_hub._fs``'s rule:
    never the model's own folder (nor any ``protected`` path), a non-empty folder only with
    ``force`` (one lora-hub wrote) or ``overwrite`` (any); it is checked before any work."""
    get_exporter(format)
    replace = Replace.of(force=force, overwrite=overwrite)
    guarded = [*protected, Protected(Path(folder), "the model being exported")]
    out = prepare_output(Path(output), replace=replace, protected=guarded)
    planned = plan(folder, format, options, source_fingerprint=source_fingerprint)
    return execute(planned, out, replace=replace, protected=guarded, registry=registry, progress=progress)


def execute(
    plan: ExportPlan,
    output: str | os.PathLike[str],
    *,
    replace: Replace = Replace.NEVER,
    protected: Sequence[Protected] = (),
    registry: PartialRegistry | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    """Build the planned artifact at ``output``, checked by the parity gate. The files are written
    into a hidden folder beside ``output`` and renamed into place at the end
    (``lora_hub._fs.staged_output``); on any failure, Ctrl-C included, nothing is left there."""
    progress = progress or NoProgress()
    exporter = get_exporter(plan.format)
    out = prepare_output(Path(output), replace=replace, protected=[*protected, Protected(Path(plan.source),
                         "the model being exported")])  # fmt: skip
    timings: dict[str, float] = {}
    start = time.perf_counter()
    details = {"format": plan.format, "key": plan.key, "source_fingerprint": plan.source_fingerprint}
    with staged_output(out, kind="export", replace=replace, registry=registry, details=details) as tmp:
        with parity.quiet(), contextlib.redirect_stdout(sys.stderr):  # --json keeps stdout to itself
            with _timed(timings, "load_s"), progress.task("loading the model (transformers)", None, unit="step"):
                model = load_model(plan)
            with _timed(timings, "reference_s"), progress.task("running the eager model", None, unit="step"):
                ref = parity.reference(model, plan)
            ctx = BuildContext(plan=plan, model=model, folder=tmp, progress=progress, timings=timings)
            with _timed(timings, "export_s"), progress.task(f"exporting ({plan.format})", None, unit="step"):
                facts = _guarded(f"the {plan.format} export failed", exporter.build, ctx)
            facts["attn_implementation"] = getattr(model.config, "_attn_implementation", None)
            del ctx, model
            gc.collect()
            checks = len(ref.probes) + (1 if ref.generation is not None else 0)
            with _timed(timings, "check_s"), progress.task("checking parity", checks, unit="probes") as advance:
                runner = _guarded(f"the {plan.format} artifact does not load back", exporter.load, tmp, plan)
                report = _guarded(f"the {plan.format} artifact does not run", parity.check, runner, plan, ref, advance)
            del runner, ref
            gc.collect()
        if not report.passed:
            raise parity.ParityError(plan.format, report)
        artifacts = [
            ArtifactFile(path=p.relative_to(tmp).as_posix(), size=size, digest=digest)
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
            for digest, size in [hash_file(p)]
        ]
        timings["total_s"] = time.perf_counter() - start
        record = ExportRecord(
            plan=plan,
            artifacts=artifacts,
            format_facts=facts,
            parity=report,
            usage=exporter.usage(plan),
            timings={k: round(v, 3) for k, v in timings.items()},
            peak_rss_bytes=peak_rss(),
            created_at=datetime.now(UTC),
        )
        (tmp / RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n")
    return ExportResult(path=str(out), record=record)


def load_model(plan: ExportPlan) -> Any:
    """The eager model, as transformers loads it from the folder, in the plan's dtype and device."""
    import torch
    import transformers
    from transformers.utils import logging as hf_logging

    cls = getattr(transformers, plan.model.architecture)
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # lorahub draws its own progress
    try:
        model = cls.from_pretrained(plan.source, dtype=getattr(torch, plan.options.dtype))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise InvalidModelError(f"transformers cannot load it as {plan.model.architecture}: {exc}",
                                path=plan.source) from exc  # fmt: skip
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.to(plan.options.device).eval()


def _guarded(what: str, fn: Any, *args: Any) -> Any:
    """``fn(*args)``, with a failure of the exporter or runtime (anything but our own errors and an
    interrupt) turned into one ``ExportError`` that names the step."""
    try:
        return fn(*args)
    except (LoraHubError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        detail = text[0][:500] if text else ""
        raise ExportError(
            f"{what}: {type(exc).__name__}: {detail}",
            hint="LORAHUB_DEBUG=1 shows the traceback; `lorahub exporters` lists the other formats",
        ) from exc


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


def exporter_infos(env: Environment | None = None) -> list[ExporterInfo]:
    """Every format, and whether (or why not) it works on this machine."""
    env = env or probe_environment()
    return [e.describe(env) for e in EXPORTERS.values()]


# --- sources that are not one folder ---------------------------------------------------------


@contextlib.contextmanager
def linked_folder(
    files: Mapping[str, Path], parent: Path | None = None, registry: PartialRegistry | None = None
) -> Iterator[Path]:
    """A temporary model folder (in ``parent``) holding the given files (relative path -> file),
    for weights that live elsewhere, e.g. blobs in a store: transformers loads from folders only.
    Files are hard-linked where they share a filesystem with ``parent`` (no copy), else copied;
    never symlinked, since a model folder's links may not leave it. Recorded in ``registry``, so
    that ``gc`` removes the folder of an export that was killed."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_MARK}export-source-", dir=parent))
    record = registry.add(tmp) if registry is not None else None
    try:
        for rel, src in files.items():
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if record is not None:
            with contextlib.suppress(OSError):
                record.unlink()


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
