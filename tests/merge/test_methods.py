"""The combination methods (``lora_hub.merge.methods``) against independent float64 versions of
their formulas, written here from the papers and never by calling the code under test:

- TIES (Yadav et al. 2023, arXiv:2306.01708): trim each update to its top-``d`` entries by
  magnitude, elect a sign per entry (by summed mass, or by count), then the disjoint mean over the
  updates that agree with it; weighted here: ``sum_agree w_i t_i / sum_agree w_i``.
- DARE (Yu et al. 2023, arXiv:2311.03099): drop each entry with probability ``1 - d``, rescale the
  kept ones by ``1 / d``. The masks are reproduced from their definition: ``torch.rand(shape,
  float32) < d``, one per adapter in adapter order, from a CPU generator seeded with the first 8
  bytes (little-endian, 63 bits) of ``sha256(f"{seed}:{module}")``, ``module`` being the adapter's
  module path (the same in ``merge`` and ``combine``).

Each method is checked as a pure function on random float64 tensors, and end to end through
``Hub.merge`` into a tiny Llama: ``W' == W + formula(delta_1..delta_n)`` with adapters of ranks 4
and 8 and an rsLoRA adapter (``s = alpha / sqrt(r)``).

The reference implementations and model builders here are also used by ``test_combine.py`` and
``tests/cli/test_combine_cli.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open

from lora_hub import Hub
from lora_hub.errors import InvalidArgumentError
from lora_hub.merge.methods import METHODS, bernoulli_mask, generator_for, get_method, trim
from tests.helpers import save_llama

# --- builders: real PEFT adapters of the tiny Llama (tests.helpers.save_llama) -----------------


def save_peft_adapter(
    base: Path, folder: Path, *, seed: int, save_embedding_layers: bool | str = False, **lora: Any
) -> Path:
    """A PEFT LoRA adapter of the model at ``base`` with ``B != 0`` (``init_lora_weights=False``).
    Embedding layers are not saved unless asked (PEFT's default for embedding targets)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, LoraConfig(init_lora_weights=False, **lora))
    if lora.get("use_dora"):
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_magnitude_vector" in name:
                    p.mul_(1.1)
    peft_model.save_pretrained(folder, save_embedding_layers=save_embedding_layers)
    return folder


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def read_model(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(read_tensors(shard))
    return out


PREFIX = "base_model.model."


def adapter_deltas(folder: Path) -> dict[str, torch.Tensor]:
    """``{module path: s * B @ A}`` in float64, from the tensors and config as PEFT saved them,
    with ``s = alpha / r`` or, under rsLoRA, ``alpha / sqrt(r)`` (rank/alpha patterns honoured).
    Embeddings' ``B @ A`` is ``[dim, vocab]``, the transpose of their weight."""
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = read_tensors(folder / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        if key.endswith(".lora_A.weight"):
            path = key[len(PREFIX) : -len(".lora_A.weight")]
            b = tensors[f"{PREFIX}{path}.lora_B.weight"]
        elif key.endswith(".lora_embedding_A"):
            path = key[len(PREFIX) : -len(".lora_embedding_A")]
            b = tensors[f"{PREFIX}{path}.lora_embedding_B"]
        else:
            continue
        r = a.shape[0]

        def pattern(patterns: dict[str, Any], default: float, path: str = path) -> float:
            for k, v in patterns.items():
                if path == k or path.endswith("." + k):
                    return v
            return default

        assert r == pattern(config.get("rank_pattern") or {}, config["r"])
        alpha = pattern(config.get("alpha_pattern") or {}, config["lora_alpha"])
        s = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        out[path] = s * (b.double() @ a.double())
    return out


# --- the formulas, in numpy float64 -------------------------------------------------------------


def seeded(seed: int, name: str) -> torch.Generator:
    """The per-tensor generator, from its definition: sha256 of ``"{seed}:{name}"``, first 8 bytes
    little-endian, masked to 63 bits."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


def dare_masks(shape: Sequence[int], n: int, density: float, gen: torch.Generator) -> list[np.ndarray]:
    """DARE's keep-masks for ``n`` adapters, in adapter order: keep with probability ``density``."""
    return [torch.rand(tuple(shape), generator=gen, dtype=torch.float32).numpy() < density for _ in range(n)]


def ref_trim(x: np.ndarray, density: float) -> np.ndarray:
    """Keep the ``round(density * n)`` entries largest in magnitude, zero the rest."""
    flat = x.ravel()
    k = round(density * flat.size)
    keep = np.argsort(-np.abs(flat), kind="stable")[:k]
    out = np.zeros_like(flat)
    out[keep] = flat[keep]
    return out.reshape(x.shape)


def ref_disjoint_mean(t: Sequence[np.ndarray], w: Sequence[float], majority: str) -> np.ndarray:
    """TIES' sign election (``sign(sum_i t_i)``, or ``sign(sum_i sign t_i)`` for ``count``) and the
    weighted disjoint mean ``sum_{agree} t_i / sum_{agree} w_i`` (zero where nothing agrees)."""
    votes = list(t) if majority == "sum" else [np.sign(x) for x in t]
    elected = np.sign(np.sum(votes, axis=0))
    num = np.zeros_like(t[0])
    den = np.zeros_like(t[0])
    for x, wi in zip(t, w, strict=True):
        agree = (x != 0) & (np.sign(x) == elected)
        num += np.where(agree, x, 0.0)
        den += np.where(agree, wi, 0.0)
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def ref_combine(
    method: str,
    deltas: Sequence[np.ndarray],
    w: Sequence[float],
    params: dict[str, Any],
    gen: torch.Generator | None = None,
) -> np.ndarray:
    """The method's result from its formula (float64). ``gen`` feeds DARE's masks."""
    d = params.get("density", 1.0)
    majority = params.get("majority_sign", "sum")
    if method in ("linear", "cat", "svd"):
        return sum(wi * x for wi, x in zip(w, deltas, strict=True))
    if method == "task_arithmetic":
        return params.get("lambda", 1.0) * sum(wi * x for wi, x in zip(w, deltas, strict=True))
    if method == "magnitude_prune":
        return sum(wi * ref_trim(x, d) for wi, x in zip(w, deltas, strict=True))
    if method == "ties":
        return ref_disjoint_mean([wi * ref_trim(x, d) for wi, x in zip(w, deltas, strict=True)], w, majority)
    assert gen is not None
    masks = dare_masks(deltas[0].shape, len(deltas), d, gen)
    rescaled = [x * m / d for x, m in zip(deltas, masks, strict=True)]
    if method == "dare_linear":
        return sum(wi * x for wi, x in zip(w, rescaled, strict=True))
    if method == "dare_ties":
        return ref_disjoint_mean([wi * x for wi, x in zip(w, rescaled, strict=True)], w, majority)
    raise AssertionError(method)


# --- registry and parameters -----------------------------------------------------------------

ALL = ["linear", "task_arithmetic", "magnitude_prune", "ties", "dare_linear", "dare_ties", "cat", "svd"]


def test_registry_lists_every_method_with_its_params() -> None:
    assert list(METHODS) == ALL
    params = {name: [p.name for p in m.params] for name, m in METHODS.items()}
    assert params == {
        "linear": [],
        "task_arithmetic": ["lambda"],
        "magnitude_prune": ["density"],
        "ties": ["density", "majority_sign"],
        "dare_linear": ["density"],
        "dare_ties": ["density", "majority_sign"],
        "cat": [],
        "svd": [],
    }
    assert {n for n, m in METHODS.items() if m.random} == {"dare_linear", "dare_ties"}
    assert {n for n, m in METHODS.items() if m.coefficients} == {"linear", "task_arithmetic", "cat", "svd"}
    assert {n: m.outputs for n, m in METHODS.items() if m.outputs != ("merge", "combine")} == {"svd": ("combine",)}
    for m in METHODS.values():
        assert m.combine is not None and m.summary and m.formula
        assert get_method(m.name) is m


def test_unknown_method_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidArgumentError, match="unknown method 'slerp'") as info:
        get_method("slerp")
    assert info.value.hint is not None and "ties" in info.value.hint and "lorahub methods" in info.value.hint


@pytest.mark.parametrize(
    ("method", "given", "expected"),
    [
        ("linear", {}, {}),
        ("cat", {}, {}),
        ("linear", {"seed": 3}, {}),  # seed is ignored by methods that draw nothing
        ("task_arithmetic", {}, {"lambda": 1.0}),
        ("task_arithmetic", {"lambda": "-0.5"}, {"lambda": -0.5}),
        ("magnitude_prune", {"density": "0.25"}, {"density": 0.25}),
        ("ties", {}, {"density": 1.0, "majority_sign": "sum"}),
        ("ties", {"density": 0.3, "majority_sign": "count"}, {"density": 0.3, "majority_sign": "count"}),
        ("dare_linear", {"density": 1}, {"density": 1.0, "seed": 0}),
        ("dare_ties", {"density": 0.5, "seed": 7}, {"density": 0.5, "majority_sign": "sum", "seed": 7}),
    ],
)
def test_check_params_fills_defaults_and_converts(method: str, given: dict[str, Any], expected: dict) -> None:
    assert METHODS[method].check_params(given) == expected


@pytest.mark.parametrize(
    ("method", "given", "message"),
    [
        ("linear", {"density": 0.5}, "method linear takes no parameters; not density"),
        ("ties", {"lambda": 2.0}, "method ties takes density, majority_sign; not lambda"),
        ("dare_ties", {"densty": 0.5}, "not densty"),
        ("ties", {"density": 0.0}, "density must be in"),
        ("ties", {"density": -0.1}, "density must be in"),
        ("ties", {"density": 1.0001}, "density must be in"),
        ("dare_linear", {"density": 2}, "density must be in"),
        ("magnitude_prune", {"density": float("nan")}, "density must be in"),
        ("magnitude_prune", {"density": float("inf")}, "density must be in"),
        ("ties", {"density": "half"}, "density must be a float"),
        ("ties", {"majority_sign": "total"}, "majority_sign must be one of sum, count"),
        ("task_arithmetic", {"lambda": None}, "lambda must be a float"),
        ("dare_linear", {"seed": -1}, "seed must be a non-negative integer"),
        ("dare_ties", {"seed": True}, "seed must be a non-negative integer"),
        ("dare_ties", {"seed": 1.5}, "seed must be a non-negative integer"),
    ],
)
def test_check_params_refuses_unknown_and_out_of_range(method: str, given: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message.replace("(", r"\(")):
        METHODS[method].check_params(given)


@pytest.mark.parametrize(
    "value", [float("inf"), float("-inf"), float("nan"), "nan"], ids=["inf", "-inf", "nan", "nan-text"]
)
def test_check_params_refuses_non_finite_lambda(value: Any) -> None:
    """Adapter weights must be finite (``_split_weight``); so must ``lambda``, or a merge fails its
    own verification (blaming lora-hub) and a combine dies in ``torch.linalg.svd``."""
    with pytest.raises(InvalidArgumentError, match="lambda"):
        METHODS["task_arithmetic"].check_params({"lambda": value})


# --- the building blocks ---------------------------------------------------------------------


def test_seeding_matches_its_definition_and_differs_per_tensor() -> None:
    a = torch.rand(1000, generator=seeded(7, "model.layers.0.self_attn.q_proj.weight"))
    b = torch.rand(1000, generator=generator_for(7, "model.layers.0.self_attn.q_proj.weight"))
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(1000, generator=generator_for(8, "model.layers.0.self_attn.q_proj.weight")))
    assert not torch.equal(a, torch.rand(1000, generator=generator_for(7, "model.layers.1.self_attn.q_proj.weight")))


def test_trim_keeps_the_largest_entries() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 40, generator=gen, dtype=torch.float64)
    for density in (0.1, 0.25, 0.5, 0.9, 1.0):
        got = trim(x, density)
        np.testing.assert_array_equal(got.numpy(), ref_trim(x.numpy(), density))
        assert int((got != 0).sum()) == round(density * x.numel())
    assert int((trim(x, 1e-4) != 0).sum()) == 0  # rounds to no entry at all
    # ties at the threshold are all kept, as documented
    assert trim(torch.tensor([3.0, -3.0, 2.0, 1.0]), 0.25).tolist() == [3.0, -3.0, 0.0, 0.0]


def test_bernoulli_mask_is_torch_rand_below_density() -> None:
    mask = bernoulli_mask(torch.Size([300, 400]), 0.3, seeded(1, "t"), torch.device("cpu"))
    expected = torch.rand(300, 400, generator=seeded(1, "t"), dtype=torch.float32) < 0.3
    assert mask.dtype == torch.bool and torch.equal(mask, expected)
    assert abs(float(mask.double().mean()) - 0.3) < 0.005  # keeps about a fraction d


# --- every method as a pure function ----------------------------------------------------------

CASES = [
    ("linear", {}),
    ("cat", {}),
    ("svd", {}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("task_arithmetic", {"lambda": -1.5}),
    ("magnitude_prune", {"density": 0.25}),
    ("magnitude_prune", {"density": 1.0}),
    ("ties", {"density": 0.25}),
    ("ties", {"density": 0.5, "majority_sign": "count"}),
    ("ties", {"density": 1.0}),
    ("dare_linear", {"density": 0.5, "seed": 3}),
    ("dare_linear", {"density": 0.3, "seed": 0}),
    ("dare_ties", {"density": 0.5, "seed": 7}),
    ("dare_ties", {"density": 0.25, "majority_sign": "count", "seed": 11}),
    ("dare_ties", {"density": 1.0, "seed": 1}),
]


def random_deltas(n: int, shape: tuple[int, int], seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=gen, dtype=torch.float64) * (i + 1) for i in range(n)]


@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [1.0, 1.0], [0.6, 0.4, 1.5, 0.25]], ids=["w3", "w2", "w4"])
def test_method_matches_its_formula(method: str, params: dict[str, Any], weights: list[float]) -> None:
    spec = METHODS[method]
    checked = spec.check_params(params)
    deltas = random_deltas(len(weights), (24, 40), seed=len(weights))
    gen = seeded(checked.get("seed", 0), "some.tensor.weight") if spec.random else None
    assert spec.combine is not None
    got = spec.combine(deltas, weights, checked, gen)
    assert got.dtype == torch.float64 and got.shape == (24, 40)
    ref_gen = seeded(checked.get("seed", 0), "some.tensor.weight")
    expected = ref_combine(method, [d.numpy() for d in deltas], weights, checked, ref_gen)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    if spec.coefficients is not None:  # linear methods: the coefficients say the same
        coefs = spec.coefficients(weights, checked)
        np.testing.assert_allclose(sum(c * d.numpy() for c, d in zip(coefs, deltas, strict=True)), expected)


def test_ties_with_equal_weights_is_the_papers_disjoint_mean() -> None:
    """Entry by entry, as Yadav et al. write it: trim, elect the sign of the summed mass, average
    the entries that agree."""
    deltas = random_deltas(3, (6, 10), seed=5)
    trimmed = [ref_trim(d.numpy(), 0.5) for d in deltas]
    expected = np.zeros((6, 10))
    for i in range(6):
        for j in range(10):
            values = [t[i, j] for t in trimmed]
            sign = np.sign(sum(values))
            agreeing = [v for v in values if v != 0 and np.sign(v) == sign]
            expected[i, j] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    for w in (1.0, 0.5, 2.0):  # the weights cancel out when they are all equal
        got = METHODS["ties"].combine(deltas, [w, w, w], {"density": 0.5, "majority_sign": "sum"}, None)  # type: ignore[misc]
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_ties_at_weight_one_agrees_with_peft_merge_utils() -> None:
    """PEFT's ``ties`` divides by the count of agreeing updates; at weights 1 that is our mean."""
    from peft.utils.merge_utils import ties as peft_ties

    deltas = random_deltas(3, (16, 32), seed=9)
    ours = METHODS["ties"].combine(deltas, [1.0, 1.0, 1.0], {"density": 0.5, "majority_sign": "sum"}, None)  # type: ignore[misc]
    theirs = peft_ties(deltas, torch.ones(3, dtype=torch.float64), 0.5, "total")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


def test_dare_is_unbiased_over_seeds() -> None:
    """DARE's rescale by ``1/d`` keeps the expectation: the mean over many seeds nears the sum."""
    deltas = random_deltas(2, (10, 12), seed=2)
    exact = 0.6 * deltas[0] + 0.4 * deltas[1]
    draws = [
        METHODS["dare_linear"].combine(deltas, [0.6, 0.4], {"density": 0.5}, seeded(s, "t"))  # type: ignore[misc]
        for s in range(400)
    ]
    mean = torch.stack(draws).mean(0)
    assert float(torch.linalg.matrix_norm(mean - exact) / torch.linalg.matrix_norm(exact)) < 0.1
    assert not torch.equal(draws[0], draws[1])


def test_a_random_method_with_the_same_generator_seed_draws_the_same() -> None:
    deltas = random_deltas(3, (8, 8), seed=1)
    params = METHODS["dare_ties"].check_params({"density": 0.5, "seed": 4})
    first = METHODS["dare_ties"].combine(deltas, [1, 1, 1], params, seeded(4, "x"))  # type: ignore[misc]
    again = METHODS["dare_ties"].combine(deltas, [1, 1, 1], params, seeded(4, "x"))  # type: ignore[misc]
    other = METHODS["dare_ties"].combine(deltas, [1, 1, 1], params, seeded(4, "y"))  # type: ignore[misc]
    assert torch.equal(first, again) and not torch.equal(first, other)


# --- end to end: Hub.merge into a tiny Llama ---------------------------------------------------


@dataclass(frozen=True)
class Models:
    base: Path
    a: Path  # r=4, alpha=8: q, k, v, o
    b: Path  # r=8, alpha=16: q, v, down
    c: Path  # rsLoRA r=8, alpha=4: q, o


def build_models(root: Path) -> Models:
    base = save_llama(root / "base")
    return Models(
        base=base,
        a=save_peft_adapter(
            base, root / "a", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
        b=save_peft_adapter(
            base, root / "b", seed=2, r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"]
        ),
        c=save_peft_adapter(
            base, root / "c", seed=3, r=8, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "o_proj"]
        ),
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("methods-models"))


@pytest.fixture(scope="module")
def module_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("methods-hub")
    with Hub(tmp / "home", database_url=f"sqlite:///{tmp}/c.db") as h:
        yield h


def expected_merge(
    base: Path,
    adapters: Sequence[tuple[Path, float]],
    method: str,
    params: dict[str, Any],
    seed_name: Any = lambda module: module,
) -> dict[str, np.ndarray]:
    """``W + formula(deltas)`` in float64 for every tensor of ``base``; DARE's masks drawn from the
    generator of the module path, for the adapters that target it, in adapter order."""
    weights = read_model(base)
    deltas = [adapter_deltas(folder) for folder, _ in adapters]
    out = {}
    for name, w in weights.items():
        module = name.removesuffix(".weight")
        present = [(d[module].numpy(), wt) for d, (_, wt) in zip(deltas, adapters, strict=True) if module in d]
        result = w.double().numpy()
        if present:
            gen = seeded(params.get("seed", 0), seed_name(module))
            result = result + ref_combine(method, [p[0] for p in present], [p[1] for p in present], params, gen)
        out[name] = result
    return out


MERGE_CASES = [
    ("linear", {}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("magnitude_prune", {"density": 0.5}),
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.25, "majority_sign": "count"}),
    ("dare_linear", {"density": 0.5, "seed": 3}),
    ("dare_ties", {"density": 0.5, "seed": 7}),
    ("dare_ties", {"density": 0.75, "majority_sign": "count", "seed": 0}),
]


@pytest.mark.parametrize(("method", "params"), MERGE_CASES, ids=[f"{m}-{p}" for m, p in MERGE_CASES])
def test_merge_is_base_plus_the_formula(
    module_hub: Hub, models: Models, tmp_path: Path, method: str, params: dict[str, Any]
) -> None:
    """Mixed ranks (4 and 8), an rsLoRA input, and modules that only some adapters target."""
    adapters = [(models.a, 0.5), (models.b, 0.3), (models.c, 0.2)]
    result = module_hub.merge(
        models.base, [f"{p}@{w}" for p, w in adapters], tmp_path / "out", method=method, params=params
    )
    assert result.record.recipe["method"] == method
    assert result.record.recipe["params"] == METHODS[method].check_params(params)
    got = read_model(tmp_path / "out")
    base = read_model(models.base)
    expected = expected_merge(models.base, adapters, method, METHODS[method].check_params(params))
    assert set(got) == set(expected)
    touched = set()
    for name, ref in expected.items():
        g = got[name].double().numpy()
        assert got[name].dtype == torch.float32
        if np.array_equal(ref, base[name].double().numpy()):
            assert torch.equal(got[name], base[name]), name
            continue
        touched.add(name.split(".")[-2])
        scale = float(np.abs(ref).max())
        np.testing.assert_allclose(g, ref, rtol=0, atol=1e-5 * scale, err_msg=name)
    assert touched == {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}
    assert result.tensors_merged == 10


def test_merge_of_one_adapter_by_ties_at_density_one_is_the_plain_merge(
    module_hub: Hub, models: Models, tmp_path: Path
) -> None:
    """One adapter: the disjoint mean of a single update is the update itself (weight cancels)."""
    module_hub.merge(models.base, [f"{models.b}@0.3"], tmp_path / "ties", method="ties", params={"density": 1.0})
    module_hub.merge(models.base, [f"{models.b}"], tmp_path / "linear")
    got, ref = read_model(tmp_path / "ties"), read_model(tmp_path / "linear")
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], rtol=0, atol=1e-6)


def test_svd_is_refused_in_a_merge(module_hub: Hub, models: Models, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="produces an adapter, not a merged model") as info:
        module_hub.merge(models.base, [str(models.a), str(models.b)], tmp_path / "out", method="svd")
    assert info.value.hint is not None and "lorahub combine --method svd" in info.value.hint
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("method", "params", "message"),
    [
        ("ties", {"density": 0.0}, "density must be in"),
        ("linear", {"density": 0.5}, "method linear takes no parameters"),
        ("dare_ties", {"seed": -3}, "seed must be a non-negative integer"),
        ("nope", {}, "unknown method"),
    ],
)
def test_bad_method_or_params_are_refused_in_a_merge(
    module_hub: Hub, models: Models, tmp_path: Path, method: str, params: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        module_hub.merge(models.base, [str(models.a)], tmp_path / "out", method=method, params=params)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("density", [0.5, 0.1, 0.001, 0.999])
@pytest.mark.parametrize("kind", ["gaussian", "ties", "adversarial-sample"])
def test_kth_largest_is_exact(density: float, kind: str) -> None:
    """``trim``'s threshold comes from a sampled bracket; it must equal a full selection, also
    when many entries tie and when the sample misrepresents the data (the fallback)."""
    from lora_hub.merge.methods import kth_largest

    gen = torch.Generator().manual_seed(3)
    values = torch.randn(1_500_000, generator=gen, dtype=torch.float64).abs()
    if kind == "ties":
        values = torch.round(values * 4) / 4
    elif kind == "adversarial-sample":
        picks = torch.randint(0, values.numel(), (1 << 16,), generator=torch.Generator().manual_seed(values.numel()))
        values[picks] = 0.0  # every sampled entry is the smallest value: the bracket misses
    k = round(density * values.numel())
    expected = values.sort(descending=True).values[k - 1]
    assert float(kth_largest(values, k)) == float(expected)
