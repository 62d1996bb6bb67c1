"""Combining adapters into a new adapter (``lorahub combine``), module by module.

For each module that any input targets, with coefficients ``c_i`` (the method's, from the weights)
and ``delta_i = s_i B_i A_i``:

- ``cat``: ``B' = [c_1 s_1 B_1, c_2 s_2 B_2, ...]``, ``A' = [A_1; A_2; ...]``: exactly
  ``B'A' = sum_i c_i delta_i``, at rank ``sum_i r_i``.
- other linear methods (``linear``, ``task_arithmetic``, ``svd``): the same product ``L R`` is
  re-factored by an SVD that never forms the dense matrix: ``L = Q_L T_L``, ``R^T = Q_R T_R``,
  ``T_L T_R^T = U S V^T``, so ``L R = (Q_L U) S (Q_R V)^T``, exact up to the rank cut, whose
  relative Frobenius error is ``sqrt(sum_{j>k} S_j^2 / sum_j S_j^2)``.
- non-linear methods (TIES, DARE, magnitude prune): the dense ``combine(delta_1..delta_n)``
  (computed in float32, or in float64 for a float64 output) is truncated to rank ``k`` by SVD
  (randomized, with power iterations, where ``k`` is small next to the matrix; exact otherwise),
  and the error ``||D - B'A'||_F / ||D||_F`` is measured.

Every output module gets ``alpha = rank``, so its LoRA scale is exactly 1 (also for rsLoRA
inputs, whose scales are already inside ``delta_i``): ``B'A'`` *is* the update.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open

from lora_hub.errors import IncompatibleError, InvalidArgumentError, NotSupportedError
from lora_hub.formats.dtypes import BY_NAME, torch_dtype
from lora_hub.formats.peft import lora_keys, saved_key
from lora_hub.merge.methods import Method, generator_for
from lora_hub.merge.plan import AdapterInput
from lora_hub.types import LoraModule

FLOAT32_MAX = 3.4028234663852886e38
TORCH = {name: torch_dtype(name) for name in BY_NAME}


@dataclass(frozen=True)
class Combined:
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    errors: dict[str, float]
    ranks: dict[str, int]


def _keys(m: LoraModule) -> tuple[str, str]:
    return lora_keys(m.path, embedding=m.kind == "embedding")


def _svd_of_product(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, V) with ``left @ right == U diag(S) V^T``, from two thin QRs and a small SVD."""
    q_l, t_l = torch.linalg.qr(left)
    q_r, t_r = torch.linalg.qr(right.t())
    u, s, vh = torch.linalg.svd(t_l @ t_r.t())
    return q_l @ u, s, q_r @ vh.t()


def _randomized_svd(
    d: torch.Tensor, k: int, gen: torch.Generator, oversample: int = 10, iters: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Halko, Martinsson & Tropp (2011), with power iterations; the sketch comes from ``gen``."""
    q = min(k + oversample, *d.shape)
    omega = torch.randn(d.shape[1], q, generator=gen, dtype=torch.float64).to(d)
    y = d @ omega
    for _ in range(iters):
        y, _ = torch.linalg.qr(y)
        y = d @ (d.t() @ y)
    basis, _ = torch.linalg.qr(y)
    u_b, s, vh = torch.linalg.svd(basis.t() @ d, full_matrices=False)
    return basis @ u_b, s, vh.t()


def _split(u: torch.Tensor, s: torch.Tensor, v: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced factors of the rank-k truncation: ``B = U_k S_k^1/2``, ``A = S_k^1/2 V_k^T``."""
    root = s[:k].clamp(min=0).sqrt()
    return (root[:, None] * v[:, :k].t()), (u[:, :k] * root[None, :])


def _layout_family(paths: Sequence[str]) -> str:
    """The first component of most module paths (``model`` for Llama, ``bert`` or ``encoder`` for
    BERT, ``transformer`` for GPT-2): adapters of one architecture share it."""
    heads = Counter(p.split(".", 1)[0] for p in paths)
    return heads.most_common(1)[0][0] if heads else ""


def _check_same_architecture(inputs: Sequence[AdapterInput], model_types: Sequence[str | None]) -> None:
    known = {t for t in model_types if t}
    if len(known) > 1:
        pairs = ", ".join(f"{a.label} ({t or '?'})" for a, t in zip(inputs, model_types, strict=False))
        raise IncompatibleError(
            f"the adapters are for different architectures: {pairs}", hint="combine adapters of one base model"
        )
    families = {a.label: _layout_family([m.path for m in a.layout.modules]) for a in inputs}
    if len(set(families.values())) > 1:
        shown = ", ".join(f"{label} ({family or '-'})" for label, family in families.items())
        raise IncompatibleError(
            f"the adapters target modules of different model layouts: {shown}",
            hint="combine adapters of one base model",
        )


Factors = list[tuple[int, LoraModule, torch.Tensor, torch.Tensor]]  # (input, module, A, B) in float64


def combine_adapters(
    inputs: Sequence[AdapterInput],
    method: Method,
    params: Mapping[str, Any],
    *,
    rank: int | None,
    dtype: str = "auto",
    device: torch.device | None = None,
    model_types: Sequence[str | None] = (),
) -> Combined:
    """The combined adapter's tensors and config, and the relative error of each module.

    Inputs must be for one architecture: their ``model_types`` (where known) agree, and their
    modules come from one model's layout (the leading parts of the module paths agree), else
    ``IncompatibleError``."""
    device = device or torch.device("cpu")
    coefficients = method.coefficients([a.weight for a in inputs], params) if method.coefficients else None
    by_path, saved = _check_inputs(inputs, method, rank, dtype, model_types, coefficients)
    handles = [safe_open(a.weights_path, framework="pt") for a in inputs]
    stored = {h.get_slice(_keys(a.layout.modules[0])[0]).get_dtype() for h, a in zip(handles, inputs, strict=True)}
    auto = {"BF16": torch.bfloat16, "F16": torch.float16}.get(next(iter(stored)), torch.float32)
    out_dtype = TORCH[dtype] if dtype != "auto" else (auto if len(stored) == 1 else torch.float32)
    tensors: dict[str, torch.Tensor] = {}
    errors: dict[str, float] = {}
    ranks: dict[str, int] = {}
    for path in sorted(by_path):
        entries = by_path[path]
        factors: Factors = []
        for i, m in entries:
            a_key, b_key = _keys(m)
            factors.append(
                (i, m, handles[i].get_tensor(a_key).to(device, torch.float64),
                 handles[i].get_tensor(b_key).to(device, torch.float64))
            )  # fmt: skip
        new_a, new_b, err = _combine_module(path, factors, inputs, method, params, coefficients, rank, out_dtype)
        a_key, b_key = _keys(entries[0][1])
        tensors[a_key] = new_a.to(out_dtype).contiguous().cpu()
        tensors[b_key] = new_b.to(out_dtype).contiguous().cpu()
        if not (torch.isfinite(tensors[a_key]).all() and torch.isfinite(tensors[b_key]).all()):
            raise InvalidArgumentError(
                f"{path}: the combined factors are not finite in {out_dtype} (the update overflows)",
                hint="use smaller weights, or --dtype float32",
            )
        errors[path] = err
        ranks[path] = new_a.shape[0]
    _carry_saved(inputs, saved, handles, tensors)
    config = _peft_config(inputs, ranks, saved[0] if saved else None)
    return Combined(tensors=tensors, config=config, errors=errors, ranks=ranks)


def _check_inputs(
    inputs: Sequence[AdapterInput],
    method: Method,
    rank: int | None,
    dtype: str,
    model_types: Sequence[str | None],
    coefficients: Sequence[float] | None,
) -> tuple[dict[str, list[tuple[int, LoraModule]]], list[AdapterInput]]:
    """Everything refused before a tensor is read; the modules by path, and the input whose saved
    tensors (``modules_to_save``) the result carries."""
    if dtype != "auto" and dtype not in TORCH:
        raise InvalidArgumentError(f"unknown dtype {dtype!r}", hint=f"choose one of auto, {', '.join(TORCH)}")
    if "combine" not in method.outputs:
        raise InvalidArgumentError(f"method {method.name} cannot produce an adapter")
    if method.name == "cat" and rank is not None:
        raise InvalidArgumentError("cat is exact at rank sum_i r_i; drop --rank, or use --method svd")
    if rank is not None and rank < 1:
        raise InvalidArgumentError(f"--rank must be at least 1, got {rank}")
    _check_same_architecture(inputs, model_types)
    if len({a.facts.fan_in_fan_out for a in inputs}) > 1:
        raise IncompatibleError("the adapters disagree on fan_in_fan_out; they cannot be for the same base")
    dora = [a.label for a in inputs if a.facts.use_dora]
    if dora:
        raise InvalidArgumentError(f"DoRA adapters cannot be combined into a LoRA: {', '.join(dora)}")
    # PEFT's copies of the base weight under a LoRA layer (saved with embedding layers) are not
    # updates: they are carried over when every input that has one agrees on its bytes.
    saved = [a for a in inputs if any(not st.base_layer for st in a.layout.saved_tensors)]
    if len(saved) > 1:
        raise InvalidArgumentError(
            f"{', '.join(a.label for a in saved)} each save full tensors (modules_to_save); combine at most one such"
        )
    by_path: dict[str, list[tuple[int, LoraModule]]] = defaultdict(list)
    for i, a in enumerate(inputs):
        for m in a.layout.modules:
            if m.kind == "conv":
                raise NotSupportedError(
                    f"{a.label}: {m.path} is a convolution; combining conv LoRA is not supported yet"
                )
            if m.bias:
                raise InvalidArgumentError(
                    f"{a.label}: {m.path} has a LoRA bias, which a combined adapter cannot carry"
                )
            by_path[m.path].append((i, m))
            coef = (coefficients[i] if coefficients else a.weight) * m.scale
            if not abs(coef) < FLOAT32_MAX:
                raise InvalidArgumentError(
                    f"the weight {a.weight:g} of {a.label} scales {m.path}'s update by {coef:g}, beyond float32",
                    hint="use a weight of a sensible size",
                )
    for path, entries in by_path.items():
        shapes = {(m.kind, m.in_features, m.out_features) for _, m in entries}
        if len(shapes) > 1:
            raise IncompatibleError(f"{path}: the adapters disagree on its shape {sorted(shapes)}; not the same base")
    return by_path, saved


def _combine_module(
    path: str,
    factors: Factors,
    inputs: Sequence[AdapterInput],
    method: Method,
    params: Mapping[str, Any],
    coefficients: Sequence[float] | None,
    rank: int | None,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """One module's new (A, B) and the relative error of its rank cut: exact for ``cat``, the SVD of
    the product of factors for the other linear methods, a (randomized) SVD of the dense result of
    the non-linear ones."""
    if method.name == "cat":
        assert coefficients is not None
        new_a = torch.cat([a for _, _, a, _ in factors], dim=0)
        new_b = torch.cat([b * (coefficients[i] * m.scale) for i, m, _, b in factors], dim=1)
        return new_a, new_b, 0.0
    if coefficients is not None:
        left = torch.cat([b * (coefficients[i] * m.scale) for i, m, _, b in factors], dim=1)
        right = torch.cat([a for _, _, a, _ in factors], dim=0)
        u, s, v = _svd_of_product(left, right)
        k = min(rank or left.shape[1], s.numel())
        new_a, new_b = _split(u, s, v, k)
        total = float((s**2).sum())
        return new_a, new_b, (math.sqrt(float((s[k:] ** 2).sum()) / total) if total > 0 else 0.0)
    # Dense updates in float32 unless the output is float64: one rounding at the end costs less
    # than the float64 arithmetic over millions of entries per update.
    assert method.combine is not None
    work = torch.float64 if out_dtype == torch.float64 else torch.float32
    deltas = [(b.to(work) @ a.to(work)).mul_(m.scale) for _, m, a, b in factors]
    gen = generator_for(int(params.get("seed", 0)), path)
    dense = method.combine(deltas, [inputs[i].weight for i, _, _, _ in factors], params, gen)
    k = min(rank or sum(m.rank for _, m, _, _ in factors), *dense.shape)
    if k * 4 < min(dense.shape):
        u, s, v = _randomized_svd(dense, k, generator_for(int(params.get("seed", 0)), "svd:" + path))
    else:
        u, s, vh = torch.linalg.svd(dense, full_matrices=False)
        v = vh.t()
    new_a, new_b = _split(u, s, v, k)
    norm = float(torch.linalg.matrix_norm(dense))
    return new_a, new_b, (float(torch.linalg.matrix_norm(dense - new_b @ new_a)) / norm if norm > 0 else 0.0)


def _carry_saved(
    inputs: Sequence[AdapterInput], saved: list[AdapterInput], handles: list[Any], tensors: dict[str, torch.Tensor]
) -> None:
    """The saved tensors the result keeps: one input's ``modules_to_save``, and PEFT's copies of
    base weights under LoRA layers, which all inputs that carry one must agree on."""
    if saved:
        i = inputs.index(saved[0])
        for st in saved[0].layout.saved_tensors:
            if not st.base_layer:
                tensors[saved_key(st.name)] = handles[i].get_tensor(st.file_key)
    for i, a in enumerate(inputs):
        for st in a.layout.saved_tensors:
            if st.base_layer:
                copy = handles[i].get_tensor(st.file_key)
                if st.file_key in tensors and not torch.equal(tensors[st.file_key], copy):
                    raise IncompatibleError(
                        f"the adapters carry different copies of the base weight {st.name}; "
                        "they were not trained on the same base"
                    )
                tensors[st.file_key] = copy


def _peft_config(inputs: Sequence[AdapterInput], ranks: dict[str, int], saved: AdapterInput | None) -> dict[str, Any]:
    """The combined adapter's ``adapter_config.json``: ``alpha = rank`` per module (scale 1)."""
    r = max(ranks.values())
    pattern = {p: k for p, k in ranks.items() if k != r}
    first = inputs[0].facts
    return {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": r,
        "rank_pattern": pattern,
        "alpha_pattern": {p: float(k) for p, k in pattern.items()},
        "target_modules": sorted({p.rsplit(".", 1)[-1] for p in ranks}),
        "fan_in_fan_out": first.fan_in_fan_out,
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "lora_dropout": 0.0,
        "modules_to_save": saved.facts.modules_to_save if saved else None,
        "task_type": first.task_type if len({a.facts.task_type for a in inputs}) == 1 else None,
        "base_model_name_or_path": first.base_model_name_or_path,
        "revision": first.revision,
        "inference_mode": True,
        "init_lora_weights": True,
    }
