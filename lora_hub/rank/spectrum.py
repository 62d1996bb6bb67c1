"""The spectrum of a LoRA update, computed exactly without forming the dense matrix.

For a module with factors ``A [r, in]``, ``B [out, r]`` and scale ``s``, the update is
``dW = s * B @ A``. Two thin QRs, ``s*B = Q_L T_L`` and ``A^T = Q_R T_R``, reduce it to the small
``T_L T_R^T = U S V^T``: the singular values ``S_1 >= S_2 >= ...`` of ``dW`` are exactly those of the
``r x r`` core (``lora_hub.merge.combine._svd_of_product``). From them, with ``||dW||_F^2 = sum_j S_j^2``:

- energy kept by the rank-k cut: ``E(k) = sum_{j<=k} S_j^2 / sum_j S_j^2``;
- rank for an energy target ``e``: the smallest ``k`` with ``sum_{j>k} S_j^2 <= (1 - e) sum_j S_j^2``
  (up to ``1e-12`` of the total, so ``e = 1`` keeps every direction that carries energy);
- effective rank (Roy and Vetterli 2007): ``exp(H(p))``, ``H(p) = -sum_j p_j log p_j``, ``p_j = S_j / sum S``;
- stable rank: ``||dW||_F^2 / ||dW||_2^2 = sum_j S_j^2 / S_1^2``;
- Eckart-Young: the best rank-k approximation is the truncated SVD, with relative error
  ``sqrt(sum_{j>k} S_j^2) / ||dW||_F``.

A zero update has energy 1 at every rank, rank 0 for every target, and effective and stable rank 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from safetensors import safe_open

from lora_hub.compat import choose_key_map, read_tensor
from lora_hub.formats.dtypes import ITEMSIZE as DTYPE_SIZES
from lora_hub.formats.dtypes import NAME
from lora_hub.formats.hf import ModelDir
from lora_hub.merge.combine import _keys, _svd_of_product
from lora_hub.rank.types import ModuleSpectrum, RankAnalysis, RankSuggestion
from lora_hub.types import AdapterLayout, LoraModule

TOLERANCE = 1e-12  # of the total energy: what float64 cannot tell from zero


def energy_label(e: float) -> str:
    """The key of an energy target in ``rank_for``: ``0.9`` -> ``"0.9"``."""
    return f"{e:g}"


def tail_energy(s: torch.Tensor) -> torch.Tensor:
    """``t[k] = sum_{j>k} S_j^2`` for ``k = 0..n`` (summed from the small end, so the tail is exact)."""
    sq = s.double() ** 2
    rev = torch.cumsum(sq.flip(0), 0).flip(0)
    return torch.cat([rev, rev.new_zeros(1)])


def energy_curve(s: torch.Tensor) -> list[float]:
    """``E(k)`` for ``k = 1..n``."""
    tail = tail_energy(s)
    total = float(tail[0])
    if total == 0:
        return [1.0] * s.numel()
    return [1.0 - float(t) / total for t in tail[1:]]


def rank_for_energy(s: torch.Tensor, energy: float) -> int:
    """The smallest ``k`` that keeps ``energy`` of ``||dW||_F^2`` (0 for a zero update)."""
    tail = tail_energy(s)
    total = float(tail[0])
    if total == 0:
        return 0
    allowed = (1.0 - energy) * total + TOLERANCE * total
    return next(k for k in range(s.numel() + 1) if float(tail[k]) <= allowed)


def effective_rank(s: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p = S / sum S`` (Roy and Vetterli 2007)."""
    s = s.double()
    total = float(s.sum())
    if total == 0:
        return 0.0
    p = s[s > 0] / total
    return math.exp(float(-(p * p.log()).sum()))


def stable_rank(s: torch.Tensor) -> float:
    """``sum S^2 / S_1^2``."""
    s = s.double()
    top = float(s.max()) if s.numel() else 0.0
    return float((s**2).sum()) / top**2 if top > 0 else 0.0


def eckart_young_error(s: torch.Tensor, k: int) -> float:
    """Relative Frobenius error of the best rank-k approximation: ``sqrt(sum_{j>k} S_j^2) / ||dW||_F``."""
    tail = tail_energy(s)
    total = float(tail[0])
    return math.sqrt(float(tail[min(k, s.numel())]) / total) if total > 0 else 0.0


def product_distance(l1: torch.Tensor, r1: torch.Tensor, l2: torch.Tensor, r2: torch.Tensor) -> float:
    """``||l1 @ r1 - l2 @ r2||_F`` exactly, without the dense matrices: the difference is the product
    ``[l1, -l2] @ [r1; r2]``, whose Frobenius norm is that of its small QR core."""
    left = torch.cat([l1.double(), -l2.double()], dim=1)
    right = torch.cat([r1.double(), r2.double()], dim=0)
    _, t_l = torch.linalg.qr(left)
    _, t_r = torch.linalg.qr(right.t())
    return float(torch.linalg.matrix_norm(t_l @ t_r.t()))


def factors(m: LoraModule, handle: object) -> tuple[torch.Tensor, torch.Tensor]:
    """(A [r, n], B [m, r]) of a module in float64, conv kernels flattened: ``B @ A`` is the update
    (the transpose of an embedding's weight)."""
    a_key, b_key = _keys(m)
    a = handle.get_tensor(a_key).double()  # type: ignore[attr-defined]
    b = handle.get_tensor(b_key).double()  # type: ignore[attr-defined]
    return a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)


def singular_values(m: LoraModule, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The exact singular values of ``s * B @ A`` (float64, descending)."""
    _, s, _ = _svd_of_product(b * m.scale, a)
    return s


def module_spectrum(
    m: LoraModule, s: torch.Tensor, energies: Sequence[float], base_norm: float | None = None
) -> ModuleSpectrum:
    norm = math.sqrt(float((s.double() ** 2).sum()))
    return ModuleSpectrum(
        path=m.path,
        kind=m.kind,
        rank=m.rank,
        scale=m.scale,
        shape=[m.b_shape[0], math.prod(m.a_shape[1:])],
        singular_values=[float(x) for x in s],
        energy=energy_curve(s),
        rank_for={energy_label(e): rank_for_energy(s, e) for e in energies},
        effective_rank=effective_rank(s),
        stable_rank=stable_rank(s),
        norm=norm,
        relative_norm=norm / base_norm if base_norm else None,
    )


def check_energies(energies: Sequence[float]) -> list[float]:
    from lora_hub.errors import InvalidArgumentError

    out = sorted(set(float(e) for e in energies))
    if not out:
        raise InvalidArgumentError("give at least one energy target", hint="e.g. --energy 0.9,0.95,0.99")
    bad = [e for e in out if not (0 < e <= 1) or not math.isfinite(e)]
    if bad:
        raise InvalidArgumentError(
            f"an energy target must be in (0, 1], got {bad[0]:g}", hint="e.g. --energy 0.9 keeps 90% of ||dW||_F^2"
        )
    return out


def analyze_adapter(
    label: str,
    digest: str,
    weights_path: str,
    layout: AdapterLayout,
    *,
    energies: Sequence[float] = (0.9, 0.95, 0.99),
    base: ModelDir | None = None,
    base_label: str | None = None,
    advance: Callable[[int], None] | None = None,
    notes: Sequence[str] = (),
) -> RankAnalysis:
    """Every module's spectrum, and for each energy target a uniform rank and a ``rank_pattern``
    with their parameter counts and sizes. With ``base``, also ``||dW||_F / ||W||_F`` per module
    (``W`` read one tensor at a time)."""
    targets = check_energies(energies)
    key_map = choose_key_map([m.path + ".weight" for m in layout.modules], base.tensors) if base else None
    spectra: list[ModuleSpectrum] = []
    with safe_open(weights_path, framework="pt") as handle:
        first = handle.get_slice(_keys(layout.modules[0])[0]).get_dtype() if layout.modules else "F32"
        for m in layout.modules:
            a, b = factors(m, handle)
            s = singular_values(m, a, b)
            base_norm = None
            if base is not None and key_map is not None:
                key = key_map.resolve(m.path + ".weight", base.tensors)
                if key is not None:
                    shard, info = base.tensors[key]
                    base_norm = float(np.linalg.norm(read_tensor(info, base.headers[shard].path)))
            spectra.append(module_spectrum(m, s, targets, base_norm))
            if advance:
                advance(1)
    width = DTYPE_SIZES.get(first, 4)
    saved_params = sum(math.prod(t.shape) for t in layout.saved_tensors)
    sides = {m.path: m.b_shape[0] + math.prod(m.a_shape[1:]) for m in layout.modules}
    params = saved_params + sum(m.rank * sides[m.path] for m in layout.modules)
    suggestions = []
    for e in targets:
        key = energy_label(e)
        pattern = {sp.path: max(sp.rank_for[key], 1) for sp in spectra}
        uniform = max(pattern.values(), default=0)
        u_params = saved_params + sum(min(uniform, sp.rank) * sides[sp.path] for sp in spectra)
        p_params = saved_params + sum(k * sides[p] for p, k in pattern.items())
        suggestions.append(
            RankSuggestion(
                energy=e,
                uniform_rank=uniform,
                uniform_params=u_params,
                uniform_bytes=u_params * width,
                rank_pattern=pattern,
                pattern_params=p_params,
                pattern_bytes=p_params * width,
            )
        )
    return RankAnalysis(
        adapter=label,
        digest=digest,
        base=base_label,
        energies=targets,
        dtype=NAME.get(first, first),
        params=params,
        bytes=params * width,
        modules=spectra,
        suggestions=suggestions,
        notes=list(notes),
    )
