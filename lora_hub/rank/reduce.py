"""Truncating an adapter to a smaller rank (``lorahub reduce``), module by module.

For each module, ``dW = s * B @ A = U S V^T`` exactly (``lora_hub.rank.spectrum``). The cut keeps
``k`` directions: ``k = min(K, r)`` for ``--rank K``, or the smallest ``k`` that keeps the energy
``E`` (``sum_{j>k} S_j^2 <= (1 - E) sum_j S_j^2``) for ``--energy E``. By Eckart-Young the
truncated SVD is the best rank-k approximation, with relative error
``sqrt(sum_{j>k} S_j^2) / ||dW||_F``, and it is stored as ``B' = U_k S_k^1/2``, ``A' = S_k^1/2 V_k^T``
with ``alpha = k``, so its scale is exactly 1. A module kept at its full rank (``k >= r``) keeps
its factors as they are, with ``alpha = s * r``, so it is bit-for-bit the same update: a
reduction to ``K >= r`` is lossless.

The error reported per module is that of the stored result, ``||dW - s' B' A'||_F / ||dW||_F``,
computed exactly from the factors (``spectrum.product_distance``), after rounding to the output
dtype; in float32 it equals the Eckart-Young bound to about 1e-7.

DoRA adapters are refused: their magnitude vector normalises ``W + dW`` column by column, so a
cut of ``dW`` alone is not the best approximation of what the adapter does. So are LoRA biases,
which a reduced adapter does not carry. Saved tensors (``modules_to_save``) are carried over as
they are.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from safetensors import safe_open

from lora_hub.errors import InvalidArgumentError
from lora_hub.merge.combine import _keys, _split, _svd_of_product
from lora_hub.rank.output import STORED, TORCH_DTYPES, check_dtype, lora_config
from lora_hub.rank.spectrum import eckart_young_error, factors, product_distance, rank_for_energy
from lora_hub.types import AdapterFacts, AdapterLayout


@dataclass(frozen=True)
class Reduced:
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    ranks: dict[str, int]
    ranks_before: dict[str, int]
    errors: dict[str, float]
    bounds: dict[str, float]
    params_before: int
    params_after: int


def check_target(rank: int | None, energy: float | None) -> None:
    """Exactly one of ``rank >= 1`` and ``energy`` in (0, 1]."""
    if rank is not None and energy is not None:
        raise InvalidArgumentError("give --rank or --energy, not both", hint="--rank K cuts every module to K")
    if rank is None and energy is None:
        raise InvalidArgumentError(
            "say how far to cut: --rank K or --energy E",
            hint="see `lorahub analyze REF` for the ranks each energy needs",
        )
    if rank is not None and (isinstance(rank, bool) or rank < 1):
        raise InvalidArgumentError(f"--rank must be at least 1, got {rank}")
    if energy is not None and not (0 < energy <= 1 and math.isfinite(energy)):
        raise InvalidArgumentError(
            f"--energy must be in (0, 1], got {energy:g}", hint="e.g. --energy 0.95 keeps 95% of ||dW||_F^2"
        )


def check_reducible(label: str, facts: AdapterFacts, layout: AdapterLayout) -> None:
    if facts.use_dora or any(m.dora for m in layout.modules):
        raise InvalidArgumentError(
            f"{label} is a DoRA adapter; reduce truncates plain LoRA updates only",
            hint="its magnitude vector depends on the whole update; `lorahub analyze` shows the LoRA part's spectra",
        )
    biased = [m.path for m in layout.modules if m.bias]
    if biased:
        raise InvalidArgumentError(f"{label}: {biased[0]} has a LoRA bias (lora_B.bias), which reduce cannot carry")


def reduce_adapter(
    label: str,
    weights_path: str,
    facts: AdapterFacts,
    layout: AdapterLayout,
    *,
    rank: int | None = None,
    energy: float | None = None,
    dtype: str = "auto",
    advance: Callable[[int], None] | None = None,
) -> Reduced:
    """The truncated adapter's tensors and config, and each module's error (see the module doc)."""
    check_target(rank, energy)
    check_dtype(dtype)
    check_reducible(label, facts, layout)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    alphas: dict[str, float] = {}
    errors: dict[str, float] = {}
    bounds: dict[str, float] = {}
    params_before = params_after = 0
    with safe_open(weights_path, framework="pt") as handle:
        stored = handle.get_slice(_keys(layout.modules[0])[0]).get_dtype() if layout.modules else "F32"
        out_dtype = TORCH_DTYPES[dtype if dtype != "auto" else STORED.get(stored, "float32")]
        for m in layout.modules:
            a_key, b_key = _keys(m)
            a, b = factors(m, handle)
            left = b * m.scale
            u, s, v = _svd_of_product(left, a)
            k = min(rank, m.rank) if rank is not None else max(rank_for_energy(s, energy or 1.0), 1)
            side = a.shape[1] + b.shape[0]
            params_before += m.rank * side
            params_after += k * side
            if k >= m.rank:
                # Kept whole: the same factors, with alpha = s * r so that the scale is unchanged.
                new_a = handle.get_tensor(a_key).to(out_dtype)
                new_b = handle.get_tensor(b_key).to(out_dtype)
                alpha = m.scale * m.rank
            else:
                flat_a, flat_b = _split(u, s, v, k)
                new_a = flat_a.to(out_dtype).reshape(k, *m.a_shape[1:])
                new_b = flat_b.to(out_dtype).reshape(m.b_shape[0], k, *m.b_shape[2:])
                alpha = float(k)
            scale = alpha / k
            norm = math.sqrt(float((s**2).sum()))
            got_a, got_b = new_a.double().reshape(k, -1), new_b.double().reshape(new_b.shape[0], -1)
            dist = product_distance(left, a, got_b * scale, got_a)
            errors[m.path] = dist / norm if norm > 0 else 0.0
            bounds[m.path] = eckart_young_error(s, k)
            tensors[a_key], tensors[b_key] = new_a.contiguous(), new_b.contiguous()
            ranks[m.path], alphas[m.path] = k, alpha
            if advance:
                advance(1)
        for st in layout.saved_tensors:
            tensors[st.file_key] = handle.get_tensor(st.file_key)
    config = lora_config(
        ranks,
        alphas,
        fan_in_fan_out=facts.fan_in_fan_out,
        modules_to_save=facts.modules_to_save or None,
        task_type=facts.task_type,
        base_model_name_or_path=facts.base_model_name_or_path,
        revision=facts.revision,
    )
    return Reduced(
        tensors=tensors,
        config=config,
        ranks=ranks,
        ranks_before={m.path: m.rank for m in layout.modules},
        errors=errors,
        bounds=bounds,
        params_before=params_before,
        params_after=params_after,
    )
