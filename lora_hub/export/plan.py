"""An export, planned as pure data before any work: the format, the resolved options, the model's
facts, the graph's contract (inputs, outputs, dynamic dimensions, cache), the target, the library
versions and the parity tolerance, and the key that identifies the artifact.

``key = sha256(canonical JSON of {source content fingerprint, format, resolved options, versions,
target})``: two exports with the same key produce interchangeable artifacts, so a catalog can serve
the second from the first. Without a content fingerprint there is no key.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lora_hub.errors import ExportError, InvalidArgumentError
from lora_hub.export.environment import Environment
from lora_hub.export.exporter import DTYPES, Exporter
from lora_hub.hashing import hash_bytes

Task = Literal["causal-lm", "masked-lm", "sequence-classification", "token-classification", "feature-extraction"]
DEFAULT_MAX_SEQ = 1024  # capped at the model's position limit
DEFAULT_MAX_BATCH = 8
MIN_CACHE_SEQ = 8


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ExportOptions(_Frozen):
    """What the user chooses. ``None`` and ``auto`` are resolved in the plan (and the resolved
    values are what the key and the record hold)."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: the dtype the model's config declares (float32 if none)"
    )
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto: cuda if present, else cpu")
    max_batch: int | None = Field(None, ge=1, le=4096, description="largest batch (with_cache: the cache's); 8, or 1")
    max_seq: int | None = Field(
        None, ge=2, le=1 << 20, description="longest sequence (with_cache: the cache length); 1024 or the model's limit"
    )
    opset: int | None = Field(None, ge=18, le=30, description="ONNX opset (onnx only); default 20")
    with_cache: bool = Field(False, description="export a static-KV-cache program for generation (decoder LMs)")
    steps: int = Field(8, ge=1, le=256, description="greedy tokens compared with HF generate() (with_cache)")
    seed: int = Field(0, ge=0, description="seed of the parity probes")


def make_options(**values: Any) -> ExportOptions:
    """``ExportOptions`` from user input, with one clear error for a bad value."""
    try:
        return ExportOptions(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'options'}: {e['msg']}" for e in exc.errors())
        raise InvalidArgumentError(f"bad export option: {problems}") from None


class ModelFacts(_Frozen):
    """The model as transformers sees it, read from its folder (no weights loaded)."""

    model_type: str
    architecture: str = Field(description="the transformers class that loads it")
    task: Task
    output: Literal["logits", "last_hidden_state"] = Field(description="the main output the artifact returns")
    decoder: bool = Field(description="a causal LM (the KV-cache export applies)")
    use_cache_kwarg: bool = Field(
        False, description="its forward takes use_cache (given False, but in the cache program)"
    )
    static_cache: bool = Field(description="whether transformers can run it with a static KV cache")
    config_dtype: str
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_labels: int | None = None
    max_positions: int | None = None
    pad_token_id: int | None = None
    weight_bytes: int = 0


class TensorSpec(_Frozen):
    name: str
    dtype: str
    shape: list[int | str] = Field(description="sizes; a name is a dynamic dimension of the contract")


class CacheSpec(_Frozen):
    batch_size: int
    max_cache_len: int
    max_prompt: int = Field(description="longest prompt taken in one call (prefill)")


class GraphContract(_Frozen):
    """How to call the artifact."""

    wrapper: Literal["main-output", "static-cache"]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    dims: dict[str, tuple[int, int]] = Field(description="dynamic dimension -> (min, max), both inclusive")
    attention_mask: bool
    cache: CacheSpec | None = None
    notes: list[str] = Field(default_factory=list)


class Tolerance(_Frozen):
    """``passed = max|a - r| <= atol + rtol * max|r|`` over the compared positions, per output."""

    dtype: str
    atol: float
    rtol: float


# Why these values: float32 artifacts differ from eager by reordered accumulation only; on the
# notes' 212M Llama that was <= 6.2e-6 with |logits| <= 3.6 (0 for trace/export), so 1e-4 + 1e-4
# * scale leaves 10x margin and still flags any wrong weight (a LoRA's effect on those logits is
# about 4). Half-precision artifacts round every intermediate (unit roundoff u = 2^-11 for
# float16, 2^-8 for bfloat16), and compiled kernels (AOTInductor, ONNX Runtime) keep some
# intermediates in float32 where eager rounds them, so they differ from eager by a few u of the
# logits' scale, growing with depth: on that 212M Llama, ONNX Runtime in float16 by 2.8e-3 of it
# (5.7 u) and AOTInductor in bfloat16 by 2.1e-2 (5.3 u). The bounds, rtol 1e-2 (20 u) and 5e-2
# (13 u), leave 3-5x margin for deeper models and stay far below a wrong weight's effect.
TOLERANCES: dict[str, Tolerance] = {
    "float32": Tolerance(dtype="float32", atol=1e-4, rtol=1e-4),
    "float16": Tolerance(dtype="float16", atol=1e-2, rtol=1e-2),
    "bfloat16": Tolerance(dtype="bfloat16", atol=5e-2, rtol=5e-2),
}


class Target(_Frozen):
    device: str
    cpu: str | None = None
    cpu_isa: list[str] = Field(default_factory=list)
    gpu: str | None = None
    compute_capability: str | None = None


class ExportPlan(_Frozen):
    source: str = Field(description="the model folder")
    source_fingerprint: str | None = Field(description="content fingerprint of the source weights, when given")
    format: str
    options: ExportOptions = Field(description="resolved: no auto or default left")
    model: ModelFacts
    contract: GraphContract
    target: Target
    versions: dict[str, str]
    tolerance: Tolerance
    key: str | None = Field(description="identity of the artifact; null without a source fingerprint")


def plan_export(
    source: str,
    facts: ModelFacts,
    exporter: Exporter,
    options: ExportOptions,
    env: Environment,
    *,
    source_fingerprint: str | None = None,
) -> ExportPlan:
    """Resolve every option and refuse what cannot work, before anything is loaded or written."""
    fmt = exporter.name
    device = _device(options.device, exporter, env)
    reason = exporter.unavailable(env, device)
    if reason is not None:
        raise ExportError(
            f"cannot export to {fmt} on this machine: {reason}",
            hint="run `lorahub exporters` to see which formats work here",
        )
    dtype = facts.config_dtype if options.dtype == "auto" else options.dtype
    if dtype not in DTYPES:
        dtype = "float32"
    if device == "cpu" and dtype not in exporter.cpu_dtypes:
        raise InvalidArgumentError(
            f"{fmt} cannot run {dtype} on the CPU: {exporter.cpu_dtype_reason}",
            hint=f"use --dtype {' or --dtype '.join(exporter.cpu_dtypes)}",
        )
    if options.with_cache:
        if not exporter.supports_cache:
            raise InvalidArgumentError(
                f"{fmt} cannot carry a KV cache: {exporter.no_cache}",
                hint="use --format torch-export --with-cache or --format aoti --with-cache",
            )
        if not facts.decoder:
            raise InvalidArgumentError(
                f"a KV-cache export is for decoder language models; {facts.architecture} is a {facts.task} model",
                hint="export it without --with-cache: the artifact returns its " + facts.output,
            )
        if not facts.static_cache:
            raise InvalidArgumentError(
                f"transformers cannot run {facts.architecture} with a static KV cache, which the cache export needs",
                hint="export it without --with-cache",
            )
    if options.opset is not None and fmt != "onnx":
        raise InvalidArgumentError(f"--opset applies to the onnx format only, not {fmt}")

    limit = facts.max_positions
    max_seq = options.max_seq or min(DEFAULT_MAX_SEQ, limit or DEFAULT_MAX_SEQ)
    if limit is not None and max_seq > limit:
        raise InvalidArgumentError(
            f"--max-seq {max_seq} is longer than the model's {limit} positions", hint=f"use --max-seq {limit} or less"
        )
    if options.with_cache and max_seq < MIN_CACHE_SEQ:
        raise InvalidArgumentError(f"a KV-cache export needs --max-seq {MIN_CACHE_SEQ} or more, not {max_seq}")
    max_batch = options.max_batch or (1 if options.with_cache else DEFAULT_MAX_BATCH)
    resolved = options.model_copy(
        update={
            "dtype": dtype,
            "device": device,
            "max_batch": max_batch,
            "max_seq": max_seq,
            "opset": (options.opset or 20) if fmt == "onnx" else None,
        }
    )
    target = _target(device, exporter, env)
    keys = ("python", "lora_hub", "torch", "transformers", "safetensors", *exporter.version_keys)
    versions = {k: env.versions[k] for k in keys if k in env.versions}
    if exporter.needs_compiler and env.compiler:
        versions["compiler"] = env.compiler
    if device.startswith("cuda") and env.cuda:
        versions["cuda"] = env.cuda
    key = None
    if source_fingerprint:
        doc = {
            "source": source_fingerprint,
            "format": fmt,
            # the parity probes' seed and length change the check, not the artifact
            "options": resolved.model_dump(mode="json", exclude={"seed", "steps"}),
            "versions": versions,
            "target": _target_key(target, exporter),
        }
        key = hash_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    return ExportPlan(
        source=source,
        source_fingerprint=source_fingerprint,
        format=fmt,
        options=resolved,
        model=facts,
        contract=_contract(facts, resolved),
        target=target,
        versions=versions,
        tolerance=TOLERANCES[dtype],
        key=key,
    )


def _device(requested: str, exporter: Exporter, env: Environment) -> str:
    if requested != "auto":
        return "cuda:0" if requested == "cuda" else requested
    if exporter.needs_cuda:
        return "cuda:0"
    if env.gpus and (exporter.cuda_runtime is None or exporter.cuda_runtime(env) is None):
        return "cuda:0"
    return "cpu"


def _target(device: str, exporter: Exporter, env: Environment) -> Target:
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        gpu = next((g for g in env.gpus if g.index == index), None)
        return Target(
            device=device,
            cpu=env.cpu,
            gpu=gpu.name if gpu else None,
            compute_capability=gpu.compute_capability if gpu else None,
        )
    return Target(device="cpu", cpu=env.cpu, cpu_isa=env.cpu_isa)


def _target_key(target: Target, exporter: Exporter) -> dict[str, Any]:
    """The part of the target an artifact depends on: the device kind always; the instruction set
    or GPU architecture for formats compiled for it."""
    doc: dict[str, Any] = {"device": target.device.partition(":")[0]}
    if exporter.target_specific:
        doc.update(cpu_isa=target.cpu_isa, compute_capability=target.compute_capability)
    return doc


def _contract(facts: ModelFacts, options: ExportOptions) -> GraphContract:
    batch, seq = int(options.max_batch or 1), int(options.max_seq or 2)
    if options.with_cache:
        prompt = seq - 1
        return GraphContract(
            wrapper="static-cache",
            inputs=[
                TensorSpec(name="input_ids", dtype="int64", shape=[batch, "seq"]),
                TensorSpec(name="cache_position", dtype="int64", shape=["seq"]),
            ],
            outputs=[TensorSpec(name="logits", dtype=options.dtype, shape=[batch, "seq", facts.vocab_size or "vocab"])],
            dims={"seq": (1, prompt)},
            attention_mask=False,
            cache=CacheSpec(batch_size=batch, max_cache_len=seq, max_prompt=prompt),
            notes=[
                "the KV cache lives in buffers of the program, updated in place by every call",
                "a call writes its tokens at cache_position (start at 0 for a new sequence; positions after "
                "the last one written are masked out)",
                f"every call takes exactly {batch} sequence(s) of the same length; there is no attention mask",
            ],
        )
    batch_dim: int | str = "batch" if batch > 1 else 1
    if facts.output == "last_hidden_state":
        out_shape: list[int | str] = [batch_dim, "seq", facts.hidden_size or "hidden"]
    elif facts.task == "sequence-classification":
        out_shape = [batch_dim, facts.num_labels or "labels"]
    elif facts.task == "token-classification":
        out_shape = [batch_dim, "seq", facts.num_labels or "labels"]
    else:
        out_shape = [batch_dim, "seq", facts.vocab_size or "vocab"]
    dims: dict[str, tuple[int, int]] = {"seq": (1, seq)}
    if batch > 1:
        dims = {"batch": (1, batch), **dims}
    return GraphContract(
        wrapper="main-output",
        inputs=[
            TensorSpec(name="input_ids", dtype="int64", shape=[batch_dim, "seq"]),
            TensorSpec(name="attention_mask", dtype="int64", shape=[batch_dim, "seq"]),
        ],
        outputs=[TensorSpec(name=facts.output, dtype=options.dtype, shape=out_shape)],
        dims=dims,
        attention_mask=True,
        notes=[
            "a batch or sequence beyond the maximum is outside the contract: torch.export and AOTInductor refuse "
            "it at call time, other runtimes may run it unchecked"
        ],
    )
