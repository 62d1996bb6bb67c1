"""The merge plan: pure data, computed without reading a single tensor's bytes.

For every tensor of the output it says where the bytes come from (a base shard, or an adapter
for a new task head), which dtype they are written in, and which operations apply::

    factor   W' += weight * scale * B @ A      (stored transposed for fan_in_fan_out and embeddings)
    dora     W' = m / ||W + scale*B@A||_row * (W + scale*B@A)   (Liu et al. 2024, as PEFT merges it)
    bias     b' += weight * scale * lora_B.bias
    replace  W' = the adapter's saved tensor   (modules_to_save)

The recipe (base fingerprint, adapters by digest and weight, method, parameters, dtype, shard
size) is hashed into ``recipe_digest``: the same recipe always names the same output.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_hub.compat import choose_key_map
from lora_hub.errors import IncompatibleError, InvalidArgumentError
from lora_hub.formats.dtypes import BY_NAME, FLOAT_DTYPES
from lora_hub.formats.hf import ModelDir, side_files
from lora_hub.hashing import hash_bytes
from lora_hub.merge.methods import get_method
from lora_hub.merge.writer import Entry, OutputFiles, shard_names, split_into_shards
from lora_hub.types import AdapterFacts, AdapterLayout

PLAN_FORMAT = 2  # bump when the same recipe would produce different bytes
MAX_SIZE = 10**18  # bytes: a shard size above it is a typo
DTYPES: dict[str, str | None] = {"auto": None, **BY_NAME}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AdapterInput(_Frozen):
    """One adapter of a merge. ``weights_path`` says where its tensors are read from; it is not
    part of the recipe."""

    label: str
    digest: str
    weight: float = 1.0
    facts: AdapterFacts
    layout: AdapterLayout
    weights_path: str


class RecipeAdapter(_Frozen):
    ref: str
    digest: str
    weight: float


class Recipe(_Frozen):
    base_fingerprint: str
    adapters: list[RecipeAdapter]
    method: str
    params: dict[str, Any] = Field(default_factory=dict)
    dtype: str = "auto"
    shard_size: int
    format: int = PLAN_FORMAT

    @property
    def digest(self) -> str:
        """sha256 of the recipe without the adapters' labels: the same content under another
        name or path is the same recipe."""
        body = self.model_dump(mode="json", exclude={"adapters": {"__all__": {"ref"}}})
        return hash_bytes(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


class FactorOp(_Frozen):
    """``weight`` is the method's coefficient for linear methods, else the adapter's weight."""

    kind: Literal["factor"] = "factor"
    adapter: int
    module: str
    weight: float
    scale: float
    transposed: bool


class DoraOp(_Frozen):
    kind: Literal["dora"] = "dora"
    adapter: int
    module: str
    scale: float
    transposed: bool


class BiasOp(_Frozen):
    kind: Literal["bias"] = "bias"
    adapter: int
    module: str
    weight: float
    scale: float


class ReplaceOp(_Frozen):
    """The adapter's saved tensor replaces the base tensor; with ``base_layer`` (PEFT's copy of the
    weight under a LoRA layer) the same adapter's LoRA update then applies on top of it."""

    kind: Literal["replace"] = "replace"
    adapter: int
    tensor: str  # key in the adapter's safetensors file
    base_layer: bool = False


Op = Annotated[FactorOp | DoraOp | BiasOp | ReplaceOp, Field(discriminator="kind")]


class TensorPlan(_Frozen):
    name: str
    source: str | None = Field(description="base shard holding it; null for a tensor the adapter adds")
    dtype_in: str
    dtype_out: str
    shape: list[int]
    ops: list[Op] = Field(default_factory=list)

    @property
    def copy_as_is(self) -> bool:
        return not self.ops and self.dtype_in == self.dtype_out and self.source is not None


class MergePlan(_Frozen):
    recipe: Recipe
    recipe_digest: str
    tensors: list[TensorPlan]
    shards: list[list[str]] = Field(description="tensor names per output shard, in file order")
    shard_files: list[str]
    copy_files: list[str] = Field(description="non-weight files of the base to copy (config, tokenizer...)")

    @property
    def touched(self) -> int:
        return sum(1 for t in self.tensors if t.ops)


def open_output(plan: MergePlan, folder: Path, *, direct: bool = True) -> OutputFiles:
    """Create the plan's output shards in ``folder`` (see ``OutputFiles``), each shard's metadata
    naming the recipe. Not fsynced: a merged folder can be recomputed from its recipe, and the
    catalog checks its content fingerprint before serving it again."""
    by_name = {t.name: t for t in plan.tensors}
    shards = [[Entry(n, by_name[n].dtype_out, tuple(by_name[n].shape)) for n in names] for names in plan.shards]
    metadata = {"format": "pt", "lorahub_recipe": plan.recipe_digest}
    return OutputFiles(folder, plan.shard_files, shards, metadata, direct=direct)


def parse_size(text: str | int) -> int:
    """``5GB``, ``500MB``, ``2GiB``, ``1e9`` or a plain number of bytes."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([kmgt]?i?b?)\s*", text.lower())
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
             "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}  # fmt: skip
    if m is None or m.group(2) not in units:
        raise InvalidArgumentError(f"cannot read the size {text[:40]!r}", hint="e.g. 5GB, 500MB, 2GiB")
    try:
        value = int(float(m.group(1)) * units[m.group(2)])
    except (ValueError, OverflowError):
        raise InvalidArgumentError(f"cannot read the size {text[:40]!r}", hint="e.g. 5GB, 500MB, 2GiB") from None
    if value > MAX_SIZE:
        raise InvalidArgumentError(f"size {text[:40]!r} is larger than any disk", hint="e.g. 5GB")
    if value < 1:
        raise InvalidArgumentError(f"size {text!r} must be positive")
    return value


Ops = dict[str, list[FactorOp | DoraOp | BiasOp | ReplaceOp]]
NewTensors = dict[str, tuple[int, str, str, list[int]]]  # name -> (adapter, file key, dtype, shape)


def make_recipe(
    base_fingerprint: str,
    adapters: Sequence[tuple[str, str, float]],
    *,
    method: str = "linear",
    params: dict[str, Any] | None = None,
    dtype: str = "auto",
    shard_size: int = 5 * 10**9,
) -> Recipe:
    """The recipe of a merge of ``adapters`` (label, manifest digest, weight) into the base with
    ``base_fingerprint``, its method's parameters checked: what names the merge's output
    (``Recipe.digest``), known before any tensor is read."""
    if dtype not in DTYPES:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}", hint=f"choose one of {', '.join(DTYPES)}")
    if not adapters:
        raise InvalidArgumentError("name at least one adapter to merge")
    spec = get_method(method)
    if "merge" not in spec.outputs:
        raise InvalidArgumentError(
            f"method {method} produces an adapter, not a merged model", hint=f"use `lorahub combine --method {method}`"
        )
    return Recipe(
        base_fingerprint=base_fingerprint,
        adapters=[RecipeAdapter(ref=label, digest=digest, weight=weight) for label, digest, weight in adapters],
        method=method,
        params=spec.check_params(params or {}),
        dtype=dtype,
        shard_size=shard_size,
    )


def plan_merge(
    model: ModelDir,
    base_fingerprint: str,
    adapters: Sequence[AdapterInput],
    *,
    method: str = "linear",
    params: dict[str, Any] | None = None,
    dtype: str = "auto",
    shard_size: int = 5 * 10**9,
) -> MergePlan:
    """Decide every output tensor's source, dtype and operations. Reads headers only."""
    recipe = make_recipe(base_fingerprint, [(a.label, a.digest, a.weight) for a in adapters], method=method,
                         params=params, dtype=dtype, shard_size=shard_size)  # fmt: skip
    spec = get_method(method)
    params = recipe.params
    coefficients = (
        spec.coefficients([a.weight for a in adapters], params) if spec.coefficients else [a.weight for a in adapters]
    )
    ops, new_tensors, problems = _collect_ops(model, adapters, coefficients)
    problems += _conflicts(ops, linear=spec.coefficients is not None)
    if problems:
        raise IncompatibleError(
            f"these adapters cannot be merged into this base ({len(problems)} problem(s)):",
            problems=problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else []),
            hint="see `lorahub validate ADAPTER --base BASE` for each adapter",
        )
    tensors = _tensor_plans(model, ops, new_tensors, DTYPES[dtype])
    entries = [Entry(t.name, t.dtype_out, tuple(t.shape)) for t in tensors]
    groups = split_into_shards(entries, shard_size)
    return MergePlan(
        recipe=recipe,
        recipe_digest=recipe.digest,
        tensors=tensors,
        shards=[[e.name for e in g] for g in groups],
        shard_files=shard_names(len(groups)),
        copy_files=side_files(model),
    )


def _collect_ops(
    model: ModelDir, adapters: Sequence[AdapterInput], coefficients: Sequence[float]
) -> tuple[Ops, NewTensors, list[str]]:
    """Each adapter's operations, by the base tensor they apply to (through the key map that
    fits it best), the saved tensors the base lacks (new heads), and what cannot be planned."""
    names = model.tensors.keys()
    ops: Ops = defaultdict(list)
    new_tensors: NewTensors = {}
    problems: list[str] = []
    for i, a in enumerate(adapters):
        keys = [m.path + ".weight" for m in a.layout.modules] + [s.name for s in a.layout.saved_tensors]
        km = choose_key_map(keys, names)
        for m in a.layout.modules:
            key = km.resolve(m.path + ".weight", names)
            if key is None:
                problems.append(f"{a.label}: {m.path} has no base tensor")
                continue
            if m.kind == "conv":
                problems.append(f"{a.label}: {m.path} is a convolution; merging conv LoRA is not supported yet")
                continue
            transposed = m.kind == "embedding" or a.facts.fan_in_fan_out
            if m.dora:
                if coefficients[i] != 1.0:
                    # W' = m / ||W + sBA|| (W + sBA) is not linear in the update: a weight has no meaning.
                    problems.append(
                        f"{a.label}: {m.path} is a DoRA module, which merges at weight 1 only "
                        f"(its coefficient here is {coefficients[i]:g})"
                    )
                ops[key].append(DoraOp(adapter=i, module=m.path, scale=m.scale, transposed=transposed))
            else:
                ops[key].append(
                    FactorOp(adapter=i, module=m.path, weight=coefficients[i], scale=m.scale, transposed=transposed)
                )
            if m.bias:
                bias_key = km.resolve(m.path + ".bias", names)
                if bias_key is None:
                    problems.append(f"{a.label}: {m.path} has a LoRA bias but the base layer has no bias")
                else:
                    ops[bias_key].append(BiasOp(adapter=i, module=m.path, weight=coefficients[i], scale=m.scale))
        for s in a.layout.saved_tensors:
            key = km.resolve(s.name, names)
            op = ReplaceOp(adapter=i, tensor=s.file_key, base_layer=s.base_layer)
            if key is None:
                # the adapter's own name, without the task model's prefix (e.g. ``classifier.weight``)
                name = s.name[len(km.strip) :] if km.strip and s.name.startswith(km.strip) else s.name
                if name in new_tensors:
                    problems.append(f"{s.name} is saved by two adapters; merge them one at a time")
                new_tensors[name] = (i, op.tensor, s.dtype, s.shape)
            else:
                ops[key].append(op)
    return ops, new_tensors, problems


def _conflicts(ops: Ops, *, linear: bool) -> list[str]:
    """Operations that cannot apply to one tensor together."""
    problems = []
    for key, key_ops in ops.items():
        kinds = [o.kind for o in key_ops]
        replaced = [o for o in key_ops if isinstance(o, ReplaceOp)]
        if len(replaced) > 1 or (replaced and len(kinds) > 1 and not replaced[0].base_layer):
            problems.append(f"{key} is replaced by a saved tensor and changed by another adapter")
        elif replaced and any(o.kind != "factor" for o in key_ops if o is not replaced[0]):
            problems.append(f"{key}: only plain LoRA updates can apply on top of a saved base layer")
        if "dora" in kinds and len(kinds) > 1:
            problems.append(f"{key}: a DoRA module can only be merged on its own, not summed with other adapters")
        if "dora" in kinds and not linear:
            problems.append(f"{key}: DoRA modules merge with the linear method only")
    return problems


def _tensor_plans(model: ModelDir, ops: Ops, new_tensors: NewTensors, target: str | None) -> list[TensorPlan]:
    """Every output tensor in the base's file order, then the new ones by name."""
    tensors: list[TensorPlan] = []
    ordered = sorted(model.tensors.items(), key=lambda kv: (model.shards.index(kv[1][0]), kv[1][1].start))
    for name, (shard, info) in ordered:
        out = target if (target and info.dtype in FLOAT_DTYPES) else info.dtype
        if ops.get(name) and info.dtype not in FLOAT_DTYPES:
            raise IncompatibleError(f"{name} is {info.dtype}; lora-hub merges into floating-point weights only")
        tensors.append(
            TensorPlan(
                name=name,
                source=shard,
                dtype_in=info.dtype,
                dtype_out=out,
                shape=list(info.shape),
                ops=ops.get(name, []),
            )
        )
    for name, (i, tensor, sdtype, shape) in sorted(new_tensors.items()):
        din = BY_NAME.get(sdtype, "F32")
        tensors.append(
            TensorPlan(
                name=name,
                source=None,
                dtype_in=din,
                dtype_out=target or din,
                shape=shape,
                ops=[ReplaceOp(adapter=i, tensor=tensor)],
            )
        )
    return tensors
