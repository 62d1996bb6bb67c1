"""How several adapters' updates of one tensor become one: a registry of named methods.

Each method is a pure function of the per-adapter updates ``delta_i = s_i * B_i @ A_i`` of one
tensor (all the same shape), their weights ``w_i``, the method's parameters and, for the random
ones, a ``torch.Generator``. Everything happens in delta space, so adapters of different ranks
mix freely, and rsLoRA's ``s_i = alpha_i / sqrt(r_i)`` is already inside ``delta_i``.

=================  =====================================================================
``linear``         ``sum_i w_i delta_i``
``task_arithmetic````lambda * sum_i w_i delta_i``                    (Ilharco et al. 2023)
``magnitude_prune````sum_i w_i trim_d(delta_i)``
``ties``           ``t_i = w_i trim_d(delta_i)``; ``g = sign(sum_i t_i)`` (``sum``) or
                   ``sign(sum_i sign(t_i))`` (``count``); result
                   ``sum_{i: sign t_i = g} t_i / sum_{i: sign t_i = g} w_i``   (Yadav et al. 2023)
``dare_linear``    ``sum_i w_i (m_i * delta_i) / d``, ``m_i ~ Bernoulli(d)``  (Yu et al. 2023)
``dare_ties``      ``ties`` without the trim, on the DARE-rescaled ``m_i * delta_i / d``
``cat``            exact, as an adapter of rank ``sum_i r_i`` (``B' = [w_i s_i B_i]``, ``A' = [A_i]``)
``svd``            ``sum_i w_i delta_i`` re-factored to rank ``k`` by truncated SVD
=================  =====================================================================

``trim_d`` keeps the fraction ``d`` (the density) of entries largest in magnitude and zeroes the
rest. Where we differ from the reference tools, on purpose:

- PEFT's ``add_weighted_adapter`` combines A and B separately for most types, so its
  ``B'A' != sum c_i B_i A_i`` (peft #3004); we combine the products ``delta_i`` exactly. Its SVD
  types apply the LoRA scale twice (peft #3111) and, before PEFT 0.22, rsLoRA inputs came out
  scaled by ``sqrt(r')`` (peft #3761); our outputs carry ``alpha = r`` per module, so the scale
  is exactly 1. It draws masks from the global RNG; we use a ``torch.Generator`` seeded from
  ``(seed, module path)``, the same in ``merge`` and ``combine``.
- PEFT's TIES divides the agreeing sum by the *count* of agreeing adapters; mergekit (and we)
  divide by the sum of their *weights*, which equals the paper's mean when weights are equal and
  keeps a weighted average a weighted average.
- mergekit works on dense models only; we apply the same formulas to LoRA deltas.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lora_hub.errors import InvalidArgumentError

# torch is imported inside the functions that compute: planning a merge reads this registry, and
# the merge starts on its output files (``lora_hub.merge.writer.OutputFiles``) while torch loads.
if TYPE_CHECKING:
    import torch

    Deltas = Sequence[torch.Tensor]
    # ``fn(deltas, weights, params, generator, used=None)``: with a dict as ``used``, the methods
    # that trim record there what they cut at (``used["thresholds"]``, one per delta), for the
    # merge's verification (``lora_hub.merge.verify``) to check.
    CombineFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None  # exclusive lower bound
    high: float | None = None  # inclusive upper bound


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    formula: str
    reference: str | None
    params: tuple[Param, ...] = ()
    random: bool = False
    # Linear methods are ``sum_i c_i delta_i``: merged without forming any delta, and re-factored
    # exactly (by the SVD of a product of factors) for adapter output.
    coefficients: Callable[[Sequence[float], Mapping[str, Any]], list[float]] | None = None
    combine: CombineFn | None = None
    outputs: tuple[str, ...] = ("merge", "combine")
    notes: tuple[str, ...] = field(default_factory=tuple)

    def describe(self) -> dict[str, Any]:
        """The method as plain data (``lorahub methods --json``): every parameter a user can pass,
        ``seed`` included for the random methods, with its type, default, range and choices."""
        params = [
            {
                "name": p.name,
                "type": p.kind.__name__,
                "default": p.default,
                "help": p.help,
                "choices": list(p.choices) or None,
                "min_exclusive": p.low,
                "max": p.high,
            }
            for p in self.params
        ]
        if self.random:
            params.append({"name": "seed", "type": "int", "default": 0, "help": "seed of the random draws",
                           "choices": None, "min_exclusive": None, "max": None})  # fmt: skip
        return {
            "name": self.name,
            "summary": self.summary,
            "formula": self.formula,
            "reference": self.reference,
            "random": self.random,
            "outputs": list(self.outputs),
            "params": params,
        }

    def check_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults filled in, types and ranges checked; unknown parameters refused."""
        known = {p.name: p for p in self.params}
        extra = sorted(set(params) - set(known) - {"seed"})
        if extra:
            allowed = ", ".join(known) or "no parameters"
            raise InvalidArgumentError(f"method {self.name} takes {allowed}; not {', '.join(extra)}")
        out: dict[str, Any] = {}
        for p in self.params:
            value = params.get(p.name, p.default)
            try:
                value = p.kind(value)
            except (TypeError, ValueError):
                raise InvalidArgumentError(
                    f"{self.name}: {p.name} must be a {p.kind.__name__}, got {value!r}"
                ) from None
            if p.choices and value not in p.choices:
                raise InvalidArgumentError(f"{self.name}: {p.name} must be one of {', '.join(p.choices)}")
            if (p.low is not None and not value > p.low) or (p.high is not None and not value <= p.high):
                raise InvalidArgumentError(f"{self.name}: {p.name} must be in ({p.low}, {p.high}], got {value}")
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidArgumentError(f"{self.name}: {p.name} must be a finite number, got {value}")
            out[p.name] = value
        if self.random:
            seed = params.get("seed", 0)
            if isinstance(seed, str) and seed.strip().isdigit():
                seed = int(seed)  # ``--param seed=7`` arrives as text
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise InvalidArgumentError(f"{self.name}: seed must be a non-negative integer")
            out["seed"] = seed
        return out


def generator_for(seed: int, key: str) -> torch.Generator:
    """A CPU generator per (seed, key): the same draws on every run, device and tensor order."""
    import torch

    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``round(density * n)`` entries largest in magnitude (ties at the threshold kept)."""
    import torch

    return torch.where(delta.abs() >= _trim_threshold(delta, density), delta, torch.zeros_like(delta))


def _trim_threshold(delta: torch.Tensor, density: float) -> torch.Tensor:
    """The magnitude at which ``trim`` cuts: ``trim(d) == where(|d| >= threshold, d, 0)``."""
    import torch

    n = delta.numel()
    k = round(density * n)
    if k >= n:
        return torch.tensor(-math.inf, dtype=delta.dtype, device=delta.device)
    if k <= 0:
        return torch.tensor(math.inf, dtype=delta.dtype, device=delta.device)
    return kth_largest(delta.abs().flatten(), k)


def kth_largest(values: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th largest of ``values`` (1-D), exactly. A full selection over millions of
    entries is slow (0.3 s for 11.5M); a sample brackets the answer, one counting pass
    checks the bracket, and the selection runs inside it. A bracket that misses falls back to the
    full selection, so the sample only decides the speed."""
    import torch

    n = values.numel()
    if n <= 1 << 20:
        return values.kthvalue(n - k + 1).values
    # A fixed pseudo-random sample: a strided one can follow the structure of a low-rank update.
    picks = torch.randint(0, n, (1 << 16,), generator=torch.Generator().manual_seed(n))
    sample = values[picks.to(values.device)].sort().values
    m = sample.numel()
    q = (n - k + 0.5) / n  # the answer's quantile, ascending
    margin = max(64, int(6 * math.sqrt(m * q * (1 - q))) + 1)
    lo = sample[max(0, int(q * m) - margin)]
    hi = sample[min(m - 1, int(q * m) + margin)]
    above = int(torch.count_nonzero(values > hi))
    inside = values[(values >= lo) & (values <= hi)]
    need = k - above  # the answer is the need-th largest inside the bracket
    if 1 <= need <= inside.numel():
        return inside.kthvalue(inside.numel() - need + 1).values
    return values.kthvalue(n - k + 1).values


def bernoulli_mask(shape: torch.Size, density: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Keep each entry with probability ``density``, drawn on the CPU so any device agrees."""
    import torch

    return (torch.rand(shape, generator=gen, dtype=torch.float32) < density).to(device)


def _linear(
    deltas: Deltas, weights: Sequence[float], params: Mapping[str, Any], _: torch.Generator | None, used: Any = None
) -> torch.Tensor:
    import torch

    scale = params.get("lambda", 1.0)
    return sum((d * (w * scale) for d, w in zip(deltas, weights, strict=True)), torch.zeros_like(deltas[0]))


_CHUNK = 1 << 17  # elements: temporaries of 1 MB are recycled; fresh 90 MB ones page-fault anew


def _disjoint_merge(
    weighted: Callable[[int, slice], torch.Tensor], like: torch.Tensor, weights: Sequence[float], majority: str
) -> torch.Tensor:
    """TIES' sign election and disjoint mean over ``weighted(i, chunk) = (w_i t_i).flatten()[chunk]``.
    Computed chunk by chunk: elementwise passes over whole float64 updates (eight of a 5632x2048
    projection are 740 MB) spent most of their time page-faulting fresh temporaries."""
    import torch

    out = torch.empty_like(like)
    flat = out.view(-1)
    for start in range(0, flat.numel(), _CHUNK):
        chunk = slice(start, min(flat.numel(), start + _CHUNK))
        items = [weighted(i, chunk) for i in range(len(weights))]
        votes = sum(((torch.sign(t) if majority == "count" else t) for t in items[1:]),
                    torch.sign(items[0]) if majority == "count" else items[0].clone())  # fmt: skip
        elected = torch.sign(votes)
        num = torch.zeros_like(elected)
        den = torch.zeros_like(elected)
        for t, w in zip(items, weights, strict=True):
            agree = (torch.sign(t) == elected) & (t != 0)
            num.add_(torch.where(agree, t, 0.0))
            den.add_(agree.to(den.dtype), alpha=w)
        nonzero = den != 0
        flat[chunk] = torch.where(nonzero, num / torch.where(nonzero, den, torch.ones_like(den)), 0.0)
    return out


def _magnitude_prune(
    deltas: Deltas, weights: Sequence[float], params: Mapping[str, Any], _: Any, used: dict[str, Any] | None = None
) -> torch.Tensor:
    import torch

    thresholds = [_trim_threshold(d, params["density"]) for d in deltas]
    if used is not None:
        used["thresholds"] = thresholds
    return _linear(
        [torch.where(d.abs() >= t, d, 0.0) for d, t in zip(deltas, thresholds, strict=True)], weights, {}, None
    )


def _ties(
    deltas: Deltas, weights: Sequence[float], params: Mapping[str, Any], _: Any, used: dict[str, Any] | None = None
) -> torch.Tensor:
    import torch

    thresholds = [_trim_threshold(d, params["density"]) for d in deltas]
    if used is not None:
        used["thresholds"] = thresholds

    def weighted(i: int, chunk: slice) -> torch.Tensor:  # w_i trim_d(delta_i)
        d = deltas[i].reshape(-1)[chunk]
        return torch.where(d.abs() >= thresholds[i], d, 0.0).mul_(weights[i])

    return _disjoint_merge(weighted, deltas[0], weights, params["majority_sign"])


def _dare(deltas: Deltas, gen: torch.Generator | None, density: float) -> list[torch.Tensor]:
    assert gen is not None
    return [d * bernoulli_mask(d.shape, density, gen, d.device) / density for d in deltas]


def _dare_linear(
    deltas: Deltas, weights: Sequence[float], params: Mapping[str, Any], gen: Any, used: Any = None
) -> torch.Tensor:
    return _linear(_dare(deltas, gen, params["density"]), weights, {}, None)


def _dare_ties(
    deltas: Deltas, weights: Sequence[float], params: Mapping[str, Any], gen: Any, used: Any = None
) -> torch.Tensor:
    dropped = _dare(deltas, gen, params["density"])
    return _disjoint_merge(
        lambda i, chunk: dropped[i].reshape(-1)[chunk] * weights[i], deltas[0], weights, params["majority_sign"]
    )


DENSITY = Param("density", float, 1.0, "fraction of each update kept", low=0.0, high=1.0)
MAJORITY = Param("majority_sign", str, "sum", "sign election: by summed mass or by count", choices=("sum", "count"))
LAMBDA = Param("lambda", float, 1.0, "scale of the summed update")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "linear",
            "weighted sum of the updates, exact",
            "sum_i w_i delta_i",
            None,
            coefficients=lambda w, p: list(w),
            combine=_linear,
        ),
        Method(
            "task_arithmetic",
            "weighted sum of the updates, scaled by lambda",
            "lambda * sum_i w_i delta_i",
            "Ilharco et al. 2023, Editing Models with Task Arithmetic, arXiv:2212.04089",
            params=(LAMBDA,),
            coefficients=lambda w, p: [x * p["lambda"] for x in w],
            combine=_linear,
        ),
        Method(
            "magnitude_prune",
            "keep the largest entries of each update, then sum",
            "sum_i w_i trim_d(delta_i)",
            None,
            params=(DENSITY,),
            combine=_magnitude_prune,
        ),
        Method(
            "ties",
            "trim, elect a sign per entry, average the updates that agree",
            "t_i = w_i trim_d(delta_i); g = sign(sum t_i); sum_{sign t_i = g} t_i / sum_{sign t_i = g} w_i",
            "Yadav et al. 2023, TIES-Merging, arXiv:2306.01708",
            params=(DENSITY, MAJORITY),
            combine=_ties,
        ),
        Method(
            "dare_linear",
            "drop entries at random, rescale by 1/d, sum",
            "sum_i w_i (m_i * delta_i) / d, m_i ~ Bernoulli(d)",
            "Yu et al. 2023, Language Models are Super Mario (DARE), arXiv:2311.03099",
            params=(DENSITY,),
            random=True,
            combine=_dare_linear,
        ),
        Method(
            "dare_ties",
            "DARE's random drop and rescale, then TIES' sign election and disjoint mean",
            "ties without trim on (m_i * delta_i) / d",
            "Yu et al. 2023 (DARE) with Yadav et al. 2023 (TIES)",
            params=(DENSITY, MAJORITY),
            random=True,
            combine=_dare_ties,
        ),
        Method(
            "cat",
            "concatenate the adapters: exact, rank sum_i r_i",
            "B' = [w_1 s_1 B_1, ...], A' = [A_1; ...], so B'A' = sum_i w_i delta_i",
            None,
            coefficients=lambda w, p: list(w),
            combine=_linear,
        ),
        Method(
            "svd",
            "weighted sum re-factored to rank k by truncated SVD (error reported)",
            "U_k S_k V_k^T of sum_i w_i delta_i; B' = U_k S_k^1/2, A' = S_k^1/2 V_k^T",
            None,
            coefficients=lambda w, p: list(w),
            combine=_linear,
            outputs=("combine",),
        ),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown method {name!r}", hint=f"choose one of {', '.join(METHODS)} (see `lorahub methods`)"
        ) from None
