"""``Hub.combine``: adapters combined into a new PEFT adapter (``lora_hub.merge.combine``).

Every expectation is computed here in float64 from the inputs' stored A, B and configs (``delta_i =
s_i B_i A_i``, ``s = alpha / r`` or ``alpha / sqrt(r)`` under rsLoRA), with ``torch.linalg.svd``
for the rank cuts, and PEFT as the second opinion: the combined folder must load in PEFT and
``merge_and_unload`` to ``W + sum_i w_i delta_i``. Also shown: PEFT's own ``linear``
``add_weighted_adapter`` has cross terms ``B_i A_j`` that ours does not.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lora_hub import Hub
from lora_hub.errors import DestinationExistsError, IncompatibleError, InvalidArgumentError
from lora_hub.merge.methods import METHODS
from tests.helpers import adapter_config as helper_config
from tests.helpers import adapter_tensors, listing, write_adapter
from tests.merge.test_methods import (
    PREFIX,
    adapter_deltas,
    build_models,
    read_model,
    read_tensors,
    ref_combine,
    save_peft_adapter,
    seeded,
)
from tests.merge.test_methods import Models as MethodsModels

LLAMA_IN_OUT = {"q_proj": (32, 32), "k_proj": (32, 16), "v_proj": (32, 16), "o_proj": (32, 32), "down_proj": (64, 32)}


@dataclass(frozen=True)
class Models(MethodsModels):
    """test_methods' base and adapters a, b, c, and more adapters of the same base."""

    a2: Path  # r=4, alpha=16: q, k, v, o (same rank and modules as a)
    dora: Path  # DoRA r=4: q, v
    emb1: Path  # r=4: embed_tokens, q
    emb2: Path  # r=2: embed_tokens


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    root = tmp_path_factory.mktemp("combine-models")
    first = build_models(root)
    attn = ["q_proj", "k_proj", "v_proj", "o_proj"]

    def adapter(name: str, seed: int, r: int, alpha: int, targets: list[str], **kw: Any) -> Path:
        return save_peft_adapter(
            first.base, root / name, seed=seed, r=r, lora_alpha=alpha, target_modules=targets, **kw
        )

    return Models(
        **asdict(first),
        a2=adapter("a2", 4, 4, 16, attn),
        dora=adapter("dora", 5, 4, 8, ["q_proj", "v_proj"], use_dora=True),
        emb1=adapter("emb1", 6, 4, 8, ["embed_tokens", "q_proj"]),
        emb2=adapter("emb2", 7, 2, 2, ["embed_tokens"]),
    )


@pytest.fixture(scope="module")
def lhub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    tmp = tmp_path_factory.mktemp("combine-hub")
    with Hub(tmp / "home", database_url=f"sqlite:///{tmp}/c.db") as h:
        yield h


_counter = iter(range(10**6))


def fresh_name() -> str:
    return f"acme/combined-{next(_counter)}"


def expected_sum(inputs: Sequence[tuple[Path, float]]) -> dict[str, torch.Tensor]:
    """``{module: sum_i w_i delta_i}`` in float64 over the modules any input targets."""
    out: dict[str, torch.Tensor] = {}
    for folder, w in inputs:
        for path, d in adapter_deltas(folder).items():
            out[path] = out.get(path, torch.zeros_like(d)) + w * d
    return out


def combined_products(folder: Path) -> dict[str, torch.Tensor]:
    """``{module: B' @ A'}`` in float64 from a combined folder (whose scale must be exactly 1)."""
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["use_rslora"] is False
    tensors = read_tensors(folder / "adapter_model.safetensors")
    out = {}
    for key, a in tensors.items():
        for a_suffix, b_suffix in ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B")):
            if key.endswith(a_suffix):
                path = key[len(PREFIX) : -len(a_suffix)]
                r = a.shape[0]
                alpha = (config.get("alpha_pattern") or {}).get(path, config["lora_alpha"])
                assert r == (config.get("rank_pattern") or {}).get(path, config["r"])
                assert alpha == r, (path, alpha, r)
                out[path] = tensors[PREFIX + path + b_suffix].double() @ a.double()
    return out


def rel(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(x - y) / torch.linalg.matrix_norm(y))


def peft_merged(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def assert_model_is(got: dict[str, torch.Tensor], base: Path, updates: dict[str, torch.Tensor], atol: float) -> None:
    """``got == W + updates`` for every tensor of ``base`` (weights as stored: ``[out, in]``;
    embeddings ``[vocab, dim]``, their update transposed)."""
    weights = read_model(base)
    for name, w in weights.items():
        if name not in got:
            assert name == "lm_head.weight"  # tied, and left out by some savers
            continue
        module = name.removesuffix(".weight")
        ref = w.double()
        if module in updates:
            upd = updates[module]
            ref = ref + (upd.t() if upd.shape != ref.shape else upd)
        scale = float(ref.abs().max())
        torch.testing.assert_close(got[name].double(), ref, rtol=0, atol=atol * scale, msg=name)


# --- cat ----------------------------------------------------------------------------------------


def test_cat_folder_layout_config_and_exact_product(lhub: Hub, models: Models, tmp_path: Path) -> None:
    out = tmp_path / "ab"
    result = lhub.combine([f"{models.a}@0.6", f"{models.b}@0.4"], fresh_name(), method="cat", output=out)
    assert listing(out) == ["adapter_config.json", "adapter_model.safetensors"]
    paths = [f"model.layers.{i}.{kind}.{m}" for i in (0, 1) for kind, m in
             [("self_attn", "q_proj"), ("self_attn", "k_proj"), ("self_attn", "v_proj"), ("self_attn", "o_proj"),
              ("mlp", "down_proj")]]  # fmt: skip
    ranks = {p: 4 + 8 if p.endswith(("q_proj", "v_proj")) else 8 if "down" in p else 4 for p in paths}
    assert result.ranks == ranks
    assert result.errors == dict.fromkeys(paths, 0.0) and result.max_error == 0 and result.mean_error == 0
    assert result.method == "cat" and result.push.created

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 12 and config["lora_alpha"] == 12
    assert config["rank_pattern"] == {p: r for p, r in ranks.items() if r != 12}
    assert config["alpha_pattern"] == {p: float(r) for p, r in ranks.items() if r != 12}
    assert config["target_modules"] == ["down_proj", "k_proj", "o_proj", "q_proj", "v_proj"]
    assert config["use_rslora"] is False and config["use_dora"] is False and config["fan_in_fan_out"] is False

    tensors = read_tensors(out / "adapter_model.safetensors")
    assert set(tensors) == {f"{PREFIX}{p}.lora_{x}.weight" for p in paths for x in "AB"}
    for p in paths:
        fin, fout = LLAMA_IN_OUT[p.rsplit(".", 1)[1]]
        assert tensors[f"{PREFIX}{p}.lora_A.weight"].shape == (ranks[p], fin)
        assert tensors[f"{PREFIX}{p}.lora_B.weight"].shape == (fout, ranks[p])
        assert tensors[f"{PREFIX}{p}.lora_A.weight"].dtype == torch.float32

    expected = expected_sum([(models.a, 0.6), (models.b, 0.4)])
    got = combined_products(out)
    assert set(got) == set(expected)
    for p in paths:
        assert rel(got[p], expected[p]) < 1e-6, p
    # the folder as pushed is the folder kept
    version = lhub.show(result.push.version.ref)
    assert version.facts.rank == 12 and {f.path for f in version.files} == {
        "adapter_config.json",
        "adapter_model.safetensors",
    }


def test_cat_merged_is_the_sum_of_the_separate_merges_and_loads_in_peft(
    lhub: Hub, models: Models, tmp_path: Path
) -> None:
    combined = tmp_path / "ab"
    lhub.combine([f"{models.a}@0.6", f"{models.b}@0.4"], fresh_name(), method="cat", output=combined)
    updates = expected_sum([(models.a, 0.6), (models.b, 0.4)])
    lhub.merge(models.base, [str(combined)], tmp_path / "merged")
    assert_model_is(read_model(tmp_path / "merged"), models.base, updates, atol=1e-5)
    # the same as merging the two adapters at once
    lhub.merge(models.base, [f"{models.a}@0.6", f"{models.b}@0.4"], tmp_path / "direct")
    direct, merged = read_model(tmp_path / "direct"), read_model(tmp_path / "merged")
    for name in direct:
        torch.testing.assert_close(merged[name], direct[name], rtol=0, atol=1e-6)
    # "The folder loads in peft", and PEFT's merge of it is the same sum
    assert_model_is(peft_merged(models.base, combined), models.base, updates, atol=1e-5)


def test_cat_of_embedding_adapters_loads_in_peft(lhub: Hub, models: Models, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    result = lhub.combine([f"{models.emb1}@0.7", f"{models.emb2}@-0.5"], fresh_name(), method="cat", output=out)
    assert result.ranks["model.embed_tokens"] == 6
    keys = set(read_tensors(out / "adapter_model.safetensors"))
    assert {f"{PREFIX}model.embed_tokens.lora_embedding_A", f"{PREFIX}model.embed_tokens.lora_embedding_B"} <= keys
    updates = expected_sum([(models.emb1, 0.7), (models.emb2, -0.5)])
    got = combined_products(out)
    for p, upd in updates.items():
        assert rel(got[p], upd) < 1e-6, p
    assert_model_is(peft_merged(models.base, out), models.base, updates, atol=1e-5)


# --- rsLoRA and mixed ranks --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["cat", "linear", "svd"])
def test_rslora_inputs_come_out_with_scale_one(lhub: Hub, models: Models, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    result = lhub.combine([f"{models.a}@0.5", f"{models.c}@0.5"], fresh_name(), method=method, output=out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is False
    assert config["lora_alpha"] == config["r"] == 12
    assert config["alpha_pattern"] == {p: float(r) for p, r in config["rank_pattern"].items()}
    expected = expected_sum([(models.a, 0.5), (models.c, 0.5)])
    got = combined_products(out)  # checks alpha == r for every module
    for p in expected:
        assert rel(got[p], expected[p]) < 1e-6, p
    # the rsLoRA scale alpha/sqrt(r) matters: alpha/r would be far off
    c_plain = {p: d * math.sqrt(8) / 8 for p, d in adapter_deltas(models.c).items()}
    q = "model.layers.0.self_attn.q_proj"
    wrong = 0.5 * adapter_deltas(models.a)[q] + 0.5 * c_plain[q]
    assert rel(got[q], wrong) > 0.05
    assert max(result.errors.values()) < 1e-6


# --- svd: exact at full rank, optimal below ----------------------------------------------------


def test_svd_at_or_above_the_sum_of_ranks_is_exact(lhub: Hub, models: Models, tmp_path: Path) -> None:
    inputs = [(models.a, 0.6), (models.b, 0.4)]
    expected = expected_sum(inputs)
    for rank in (12, 40):
        out = tmp_path / f"r{rank}"
        result = lhub.combine([f"{p}@{w}" for p, w in inputs], fresh_name(), method="svd", rank=rank, output=out)
        # a module's rank is that of the exact sum: at most sum_i r_i of the adapters that target it
        assert result.ranks == {
            p: 12 if p.endswith(("q_proj", "v_proj")) else 8 if "down" in p else 4 for p in expected
        }
        assert result.max_error < 1e-6
        got = combined_products(out)
        for p, d in expected.items():
            assert float((got[p] - d).abs().max()) <= 1e-6 * max(1.0, float(d.abs().max())), p


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_svd_below_full_rank_reports_the_discarded_singular_values(
    lhub: Hub, models: Models, tmp_path: Path, rank: int
) -> None:
    inputs = [(models.a, 0.6), (models.b, 0.3), (models.c, 0.1)]
    out = tmp_path / "svd"
    result = lhub.combine(
        [f"{p}@{w}" for p, w in inputs], fresh_name(), method="svd", rank=rank, dtype="float64", output=out
    )
    got = combined_products(out)
    for p, d in expected_sum(inputs).items():
        s = torch.linalg.svdvals(d)
        k = min(rank, int((s > 1e-12 * s[0]).sum()))
        assert result.ranks[p] == k
        cut = math.sqrt(float((s[k:] ** 2).sum())) / math.sqrt(float((s**2).sum()))
        assert result.errors[p] == pytest.approx(cut, rel=1e-6, abs=1e-12), p
        # Eckart–Young: B'A' is the best rank-k approximation, whose error is exactly the cut
        assert float(torch.linalg.matrix_norm(d - got[p])) == pytest.approx(
            cut * float(torch.linalg.matrix_norm(d)), rel=1e-6, abs=1e-12
        ), p
        # and it is the truncation itself: the top-k singular triplets of D
        u, sv, vh = torch.linalg.svd(d)
        torch.testing.assert_close(got[p], u[:, :k] @ torch.diag(sv[:k]) @ vh[:k], rtol=0, atol=1e-10)
    assert result.max_error == max(result.errors.values()) > 0.0


def test_svd_in_float32_output_reports_the_same_cut(lhub: Hub, models: Models, tmp_path: Path) -> None:
    inputs = [(models.a, 0.6), (models.b, 0.4)]
    result = lhub.combine([f"{p}@{w}" for p, w in inputs], fresh_name(), method="svd", rank=3, output=tmp_path / "o")
    got = combined_products(tmp_path / "o")
    for p, d in expected_sum(inputs).items():
        s = torch.linalg.svdvals(d)
        cut = math.sqrt(float((s[3:] ** 2).sum() / (s**2).sum()))
        assert result.errors[p] == pytest.approx(cut, rel=1e-6)
        assert rel(got[p], d) == pytest.approx(cut, rel=1e-4)


# --- dense methods at reduced rank ---------------------------------------------------------------

DENSE = [
    ("ties", {"density": 0.5}, 2),
    ("ties", {"density": 0.25, "majority_sign": "count"}, 6),
    ("magnitude_prune", {"density": 0.5}, 5),
    ("dare_linear", {"density": 0.5, "seed": 1}, None),
    ("dare_ties", {"density": 0.5, "seed": 7}, 3),
]


@pytest.mark.parametrize(("method", "params", "rank"), DENSE, ids=[f"{m}-{p}-{r}" for m, p, r in DENSE])
def test_dense_method_error_is_measured_against_the_formula(
    lhub: Hub, models: Models, tmp_path: Path, method: str, params: dict[str, Any], rank: int | None
) -> None:
    inputs = [(models.a, 0.5), (models.b, 0.3), (models.c, 0.2)]
    out = tmp_path / "dense"
    result = lhub.combine(
        [f"{p}@{w}" for p, w in inputs],
        fresh_name(),
        method=method,
        params=params,
        rank=rank,
        dtype="float64",
        output=out,
    )
    checked = METHODS[method].check_params(params)
    deltas = [adapter_deltas(p) for p, _ in inputs]
    got = combined_products(out)
    assert set(got) == {p for d in deltas for p in d}
    for p, product in got.items():
        present = [(d[p].numpy(), w) for d, (_, w) in zip(deltas, inputs, strict=True) if p in d]
        # the masks of a combine are drawn from the generator of the module's path
        gen = seeded(checked.get("seed", 0), p)
        dense = torch.from_numpy(ref_combine(method, [x for x, _ in present], [w for _, w in present], checked, gen))
        input_ranks = {"a": 4, "b": 8, "c": 8}
        k = min(
            rank or sum(input_ranks[f.name] for (f, _), d in zip(inputs, deltas, strict=True) if p in d), *dense.shape
        )
        assert result.ranks[p] == k, p
        measured = rel(product, dense)
        assert result.errors[p] == pytest.approx(measured, rel=1e-6, abs=1e-9), p
        # the cut is (near) optimal: no better than the truncated SVD, and not much worse
        s = torch.linalg.svdvals(dense)
        best = math.sqrt(float((s[k:] ** 2).sum() / (s**2).sum()))
        assert best - 1e-9 <= measured <= best * 1.02 + 1e-9, (p, measured, best)


def test_dense_method_at_full_matrix_rank_is_exact(lhub: Hub, models: Models, tmp_path: Path) -> None:
    inputs = [(models.a, 0.5), (models.b, 0.5)]
    params = {"density": 0.5}
    result = lhub.combine(
        [f"{p}@{w}" for p, w in inputs],
        fresh_name(),
        method="ties",
        params=params,
        rank=64,
        dtype="float64",
        output=tmp_path / "o",
    )
    deltas = [adapter_deltas(p) for p, _ in inputs]
    checked = METHODS["ties"].check_params(params)
    for p, product in combined_products(tmp_path / "o").items():
        present = [(d[p].numpy(), w) for d, (_, w) in zip(deltas, inputs, strict=True) if p in d]
        dense = torch.from_numpy(ref_combine("ties", [x for x, _ in present], [w for _, w in present], checked))
        assert result.ranks[p] == min(dense.shape)
        assert rel(product, dense) < 1e-10 and result.errors[p] < 1e-10


# --- PEFT's linear: cross terms ------------------------------------------------------------------


def test_peft_linear_has_cross_terms_and_ours_has_none(lhub: Hub, models: Models, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(models.base, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, models.a, adapter_name="one")
    model.load_adapter(models.a2, adapter_name="two")
    model.add_weighted_adapter(["one", "two"], [0.5, 0.5], combination_type="linear", adapter_name="mix")
    model.add_weighted_adapter(["one", "two"], [0.5, 0.5], combination_type="cat", adapter_name="mix_cat")
    expected = expected_sum([(models.a, 0.5), (models.a2, 0.5)])
    peft_linear, peft_cat = {}, {}
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "mix" in module.lora_A:
            for adapter, into in (("mix", peft_linear), ("mix_cat", peft_cat)):
                b = module.lora_B[adapter].weight.detach().double()
                a = module.lora_A[adapter].weight.detach().double()
                into[name] = b @ a * module.scaling[adapter]
    assert set(peft_linear) == set(expected)
    for p, d in expected.items():
        assert rel(peft_cat[p], d) < 1e-6, p  # PEFT's cat agrees with our float64 sum
        assert rel(peft_linear[p], d) > 0.05, p  # its linear does not: B'A' has B_a A_b and B_b A_a

    for method in ("linear", "cat"):
        out = tmp_path / method
        lhub.combine([f"{models.a}@0.5", f"{models.a2}@0.5"], fresh_name(), method=method, output=out)
        got = combined_products(out)
        for p, d in expected.items():
            assert rel(got[p], d) < 1e-6, (method, p)


def test_peft_svd_of_an_rslora_input_is_scaled_by_sqrt_r_before_0_22_and_ours_is_not(
    lhub: Hub, models: Models, tmp_path: Path
) -> None:
    """Before PEFT 0.22, its ``svd`` output kept the first input's ``use_rslora`` with
    ``alpha = r'``, so its scale was ``sqrt(r')`` instead of 1 (peft #3761, fixed by peft PR
    #3449); from 0.22 on it agrees with the float64 sum. Ours carries ``alpha = r``,
    ``use_rslora = false`` with any PEFT."""
    import peft
    from packaging.version import Version
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    fixed = Version(peft.__version__) >= Version("0.22")

    model = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(models.base), models.c, adapter_name="rs")
    model.load_adapter(models.a, adapter_name="one")
    model.add_weighted_adapter(["rs", "one"], [0.5, 0.5], combination_type="svd", svd_rank=12, adapter_name="mix")
    expected = expected_sum([(models.c, 0.5), (models.a, 0.5)])
    for name, module in model.base_model.model.named_modules():
        if hasattr(module, "lora_A") and "mix" in module.lora_A:
            b, a = module.lora_B["mix"].weight.detach().double(), module.lora_A["mix"].weight.detach().double()
            theirs = b @ a * module.scaling["mix"]
            if fixed:
                assert rel(theirs, expected[name]) < 1e-5, (peft.__version__, name)
            else:
                assert rel(theirs, expected[name]) > 1.0
                assert rel(theirs / math.sqrt(12), expected[name]) < 1e-5
    out = tmp_path / "svd"
    lhub.combine([f"{models.c}@0.5", f"{models.a}@0.5"], fresh_name(), method="svd", rank=12, output=out)
    got = combined_products(out)
    for p, d in expected.items():
        assert rel(got[p], d) < 1e-6, p


# --- determinism -----------------------------------------------------------------------------------


def test_combine_with_a_seed_is_byte_identical(lhub: Hub, models: Models, tmp_path: Path) -> None:
    adapters = [f"{models.a}@0.5", f"{models.b}@0.3", f"{models.c}@0.2"]
    params = {"density": 0.5, "seed": 7}
    name = fresh_name()
    first = lhub.combine(adapters, name, method="dare_ties", params=params, rank=4, output=tmp_path / "1")
    again = lhub.combine(adapters, name, method="dare_ties", params=params, rank=4, output=tmp_path / "2")
    other = lhub.combine(
        adapters, name, method="dare_ties", params={**params, "seed": 8}, rank=4, output=tmp_path / "3"
    )
    one, two, three = ((tmp_path / d / "adapter_model.safetensors").read_bytes() for d in "123")
    assert one == two and one != three
    assert again.push.created is False and again.push.version.ref == first.push.version.ref
    assert again.errors == first.errors
    assert other.push.created is True and other.push.version.version == first.push.version.version + 1
    # every module differs with another seed
    t1, t3 = (
        read_tensors(tmp_path / "1" / "adapter_model.safetensors"),
        read_tensors(tmp_path / "3" / "adapter_model.safetensors"),
    )
    assert all(not torch.equal(t1[k], t3[k]) for k in t1)


def test_merge_with_a_seed_is_byte_identical(lhub: Hub, models: Models, tmp_path: Path) -> None:
    adapters = [f"{models.a}@0.5", f"{models.b}@0.3", f"{models.c}@0.2"]
    runs = {}
    for label, seed in (("1", 7), ("2", 7), ("3", 8)):
        result = lhub.merge(
            models.base,
            adapters,
            tmp_path / label,
            method="dare_ties",
            params={"density": 0.5, "seed": seed},
            recompute=True,
        )
        assert not result.reused
        runs[label] = result
    shards = sorted(p.name for p in (tmp_path / "1").glob("*.safetensors"))
    assert shards == sorted(p.name for p in (tmp_path / "2").glob("*.safetensors"))
    assert runs["1"].record.recipe_digest == runs["2"].record.recipe_digest != runs["3"].record.recipe_digest
    for shard in shards:
        assert (tmp_path / "1" / shard).read_bytes() == (tmp_path / "2" / shard).read_bytes()
        with safe_open(str(tmp_path / "1" / shard), "pt") as f1, safe_open(str(tmp_path / "3" / shard), "pt") as f3:
            assert f1.metadata()["lorahub_recipe"] == runs["1"].record.recipe_digest
            assert f3.metadata()["lorahub_recipe"] == runs["3"].record.recipe_digest
    one, two, three = (read_model(tmp_path / x) for x in "123")
    base = read_model(models.base)
    for name in base:
        b1 = one[name].numpy().tobytes()
        assert b1 == two[name].numpy().tobytes(), name
        changed = not torch.equal(one[name], base[name])
        assert (b1 != three[name].numpy().tobytes()) == changed, name


# --- lineage in the catalog (SQLite and PostgreSQL) -------------------------------------------


def test_lineage_is_recorded_with_the_version(hub: Hub, models: Models, tmp_path: Path) -> None:
    hub.push(models.a, "acme/a")
    hub.push(models.b, "acme/b")
    hub.push(models.c, "acme/c")
    result = hub.combine(
        ["acme/a:1@0.6", "acme/b:1@0.4"],
        "acme/ab",
        method="ties",
        params={"density": 0.5},
        rank=4,
        description="a and b",
        tags=["mix"],
    )
    version = hub.show("acme/ab:mix")
    assert version.ref == "acme/ab:1" == result.push.version.ref
    assert version.description == "a and b" and version.facts.rank == 4 and version.facts.use_rslora is False
    lineage = version.lineage
    assert lineage is not None
    assert lineage["kind"] == "combine" and lineage["method"] == "ties" and lineage["rank"] == 4
    assert lineage["params"] == {"density": 0.5, "majority_sign": "sum"}
    assert lineage["inputs"] == [
        {"ref": "acme/a:1", "digest": hub.show("acme/a:1").digest, "weight": 0.6},
        {"ref": "acme/b:1", "digest": hub.show("acme/b:1").digest, "weight": 0.4},
    ]
    assert lineage["errors"] == pytest.approx(result.errors) and set(lineage["errors"]) == set(result.ranks)
    assert set(lineage["versions"]) >= {"lora_hub", "torch", "safetensors"}

    random = hub.combine(["acme/a", "acme/c@2"], "acme/ac", method="dare_linear", params={"density": 0.5, "seed": 3})
    lineage = hub.show(random.push.version.ref).lineage
    assert lineage is not None and lineage["params"] == {"density": 0.5, "seed": 3} and lineage["rank"] is None
    assert [(i["ref"], i["weight"]) for i in lineage["inputs"]] == [("acme/a:1", 1.0), ("acme/c:1", 2.0)]
    # the pulled folder is the combined adapter
    hub.pull("acme/ac:1", tmp_path / "pulled")
    assert listing(tmp_path / "pulled") == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]


# --- dtypes ----------------------------------------------------------------------------------------


def half_copy(source: Path, dest: Path, dtype: torch.dtype) -> Path:
    shutil.copytree(source, dest)
    tensors = {k: v.to(dtype) for k, v in read_tensors(source / "adapter_model.safetensors").items()}
    save_file(tensors, str(dest / "adapter_model.safetensors"))
    return dest


def test_output_dtype_follows_the_inputs(lhub: Hub, models: Models, tmp_path: Path) -> None:
    a16 = half_copy(models.a, tmp_path / "a16", torch.float16)
    b16 = half_copy(models.b, tmp_path / "b16", torch.float16)
    bbf = half_copy(models.b, tmp_path / "bbf", torch.bfloat16)

    def dtypes(*adapters: Path, dtype: str = "auto") -> set[torch.dtype]:
        out = tmp_path / f"o{next(_counter)}"
        lhub.combine([str(p) for p in adapters], fresh_name(), method="cat", dtype=dtype, output=out)
        return {t.dtype for t in read_tensors(out / "adapter_model.safetensors").values()}

    assert dtypes(a16, b16) == {torch.float16}
    assert dtypes(bbf) == {torch.bfloat16}
    assert dtypes(a16, bbf) == {torch.float32}
    assert dtypes(a16, models.b) == {torch.float32}
    assert dtypes(models.a, models.b, dtype="bfloat16") == {torch.bfloat16}


# --- refusals --------------------------------------------------------------------------------------


def names_in(h: Hub) -> set[str]:
    return {f"{v.namespace}/{v.name}" for v in h.list_versions(limit=10_000)}


@pytest.mark.parametrize(
    ("method", "params", "rank", "error", "message"),
    [
        ("svd", {"density": 0.5}, 4, InvalidArgumentError, "method svd takes no parameters; not density"),
        ("ties", {"majority": "sum"}, None, InvalidArgumentError, "not majority"),
        ("ties", {"density": 1.5}, None, InvalidArgumentError, "density must be in"),
        ("dare_ties", {"density": 0}, None, InvalidArgumentError, "density must be in"),
        ("cat", {}, 8, InvalidArgumentError, "cat is exact"),
        ("svd", {}, 0, InvalidArgumentError, "--rank must be at least 1"),
        ("ties", {}, -2, InvalidArgumentError, "--rank must be at least 1"),
        ("slerp", {}, None, InvalidArgumentError, "unknown method"),
    ],
)
def test_bad_arguments_are_refused_and_nothing_is_pushed(
    lhub: Hub,
    models: Models,
    tmp_path: Path,
    method: str,
    params: dict[str, Any],
    rank: int | None,
    error: type[Exception],
    message: str,
) -> None:
    name = fresh_name()
    with pytest.raises(error, match=message):
        lhub.combine(
            [str(models.a), str(models.b)], name, method=method, params=params, rank=rank, output=tmp_path / "o"
        )
    assert name not in names_in(lhub)
    assert not (tmp_path / "o").exists()


def test_unknown_output_dtype_is_an_argument_error(lhub: Hub, models: Models, tmp_path: Path) -> None:
    """``merge --dtype fp8`` says "unknown dtype"; ``combine`` must too, not raise a KeyError."""
    name = fresh_name()
    with pytest.raises(InvalidArgumentError, match="dtype"):
        lhub.combine([str(models.a), str(models.b)], name, method="cat", dtype="fp8")
    assert name not in names_in(lhub)


def test_dora_input_is_refused(lhub: Hub, models: Models) -> None:
    name = fresh_name()
    with pytest.raises(InvalidArgumentError, match="DoRA adapters cannot be combined") as info:
        lhub.combine([str(models.a), str(models.dora)], name, method="linear")
    assert str(models.dora) in str(info.value)
    assert name not in names_in(lhub)


def test_adapters_that_disagree_on_fan_in_fan_out_are_refused(lhub: Hub, models: Models, tmp_path: Path) -> None:
    flipped = shutil.copytree(models.a2, tmp_path / "flipped")
    config = json.loads((flipped / "adapter_config.json").read_text())
    config["fan_in_fan_out"] = True
    (flipped / "adapter_config.json").write_text(json.dumps(config))
    for method in ("cat", "svd", "ties"):
        with pytest.raises(IncompatibleError, match="disagree on fan_in_fan_out"):
            lhub.combine([str(models.a), str(flipped)], fresh_name(), method=method)


def test_adapters_of_another_shape_or_with_a_lora_bias_are_refused(lhub: Hub, models: Models, tmp_path: Path) -> None:
    wide = write_adapter(
        tmp_path / "wide",
        tensors=adapter_tensors({"model.layers.0.self_attn.q_proj": (64, 64)}),
        config=helper_config(r=4, target_modules=["q_proj"]),
    )
    with pytest.raises(IncompatibleError, match=r"model.layers.0.self_attn.q_proj: the adapters disagree on its shape"):
        lhub.combine([str(models.a), str(wide)], fresh_name(), method="cat")
    biased = save_peft_adapter(models.base, tmp_path / "bias", seed=8, r=4, lora_alpha=8, target_modules=["q_proj"],
                               lora_bias=True)  # fmt: skip
    with pytest.raises(InvalidArgumentError, match="has a LoRA bias, which a combined adapter cannot carry"):
        lhub.combine([str(models.a), str(biased)], fresh_name(), method="linear")


def test_no_adapters_and_occupied_output_are_refused(lhub: Hub, models: Models, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="at least one adapter"):
        lhub.combine([], fresh_name())
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(DestinationExistsError):
        lhub.combine([str(models.a)], fresh_name(), output=tmp_path / "busy")


def test_single_adapter_combine_is_the_adapter(lhub: Hub, models: Models, tmp_path: Path) -> None:
    """One input, weight 2, linear: the update is doubled, and rank stays 8."""
    result = lhub.combine([f"{models.b}@2"], fresh_name(), method="linear", output=tmp_path / "o")
    assert set(result.ranks.values()) == {8}
    got = combined_products(tmp_path / "o")
    for p, d in adapter_deltas(models.b).items():
        assert rel(got[p], 2 * d) < 1e-6
    np.testing.assert_array_less(np.array(list(result.errors.values())), 1e-6)


def test_dare_combine_at_full_rank_then_merged_equals_the_dare_merge(lhub: Hub, models: Models, tmp_path: Path) -> None:
    """``merge`` and ``combine`` draw DARE's masks from the same generator (seed, module path): a
    full-rank ``combine`` merged afterwards is the direct ``merge`` with the same seed."""
    inputs = [f"{models.a}@0.5", f"{models.b}@0.5"]
    params = {"density": 0.5, "seed": 5}
    lhub.combine(inputs, fresh_name(), method="dare_linear", params=params, rank=64, dtype="float64",
                 output=tmp_path / "c")  # fmt: skip
    lhub.merge(models.base, [str(tmp_path / "c")], tmp_path / "via-combine")
    lhub.merge(models.base, inputs, tmp_path / "direct", method="dare_linear", params=params)
    direct, via = read_model(tmp_path / "direct"), read_model(tmp_path / "via-combine")
    for name in direct:
        torch.testing.assert_close(via[name], direct[name], rtol=0, atol=1e-6)


def test_embedding_adapters_saved_with_peft_defaults_combine(lhub: Hub, models: Models, tmp_path: Path) -> None:
    """PEFT's default save of an embedding adapter also writes the embedding itself
    (``...embed_tokens.base_layer.weight``). Two such adapters of one base carry the same copy:
    that is not two ``modules_to_save``, and the copy is carried over so PEFT loads the result."""
    root = tmp_path / "in"
    emb, both = ["embed_tokens"], ["embed_tokens", "q_proj"]
    e1 = save_peft_adapter(
        models.base, root / "e1", seed=8, r=4, lora_alpha=8, target_modules=emb, save_embedding_layers=True
    )
    e2 = save_peft_adapter(
        models.base, root / "e2", seed=9, r=2, lora_alpha=2, target_modules=both, save_embedding_layers=True
    )
    copy_key = f"{PREFIX}model.embed_tokens.base_layer.weight"
    assert copy_key in read_tensors(e1 / "adapter_model.safetensors")
    out = tmp_path / "out"
    lhub.combine([f"{e1}@0.6", f"{e2}@0.4"], fresh_name(), method="cat", output=out)
    assert copy_key in read_tensors(out / "adapter_model.safetensors")
    updates = expected_sum([(e1, 0.6), (e2, 0.4)])
    assert_model_is(peft_merged(models.base, out), models.base, updates, atol=1e-5)
    # and merged by us, like PEFT
    lhub.merge(models.base, [str(out)], tmp_path / "merged")
    assert_model_is(read_model(tmp_path / "merged"), models.base, updates, atol=1e-5)
