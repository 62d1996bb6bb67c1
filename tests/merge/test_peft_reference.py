"""The merge against an independent reference: PEFT's ``merge_and_unload`` and its unmerged
forward pass, and the float64 formula computed here from the adapters' stored tensors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_hub import Hub
from tests.merge.models import (
    CLASSES,
    VARIANTS,
    Zoo,
    adapter_config,
    adapter_tensors,
    delta64,
    forward,
    input_ids,
    load_folder,
    lora_modules,
    peft_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
FLOAT32_VARIANTS = [v for v in VARIANTS if v != "llama-embedding-peft-default-save"]


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def check_against_peft(hub: Hub, zoo: Zoo, variant: str, tmp_path: Path) -> None:
    kind = VARIANTS[variant].kind
    base_dir, adapter_dir = zoo.base(kind), zoo.adapter(variant)
    ids = input_ids()
    ref = peft_reference(base_dir, CLASSES[kind], adapter_dir, ids)
    result = hub.merge(base_dir, [str(adapter_dir)], tmp_path / "out")
    assert not result.reused and result.record.report.passed

    ours, base = load_folder(tmp_path / "out"), load_folder(base_dir)
    assert set(ours) == set(base)  # nothing lost, nothing extra
    changed = _changed(base, ref.merged)
    assert changed, "the adapter changes nothing: the test would prove nothing"
    assert _changed(base, ours) == changed
    for key, value in ours.items():
        assert value.dtype == base[key].dtype == torch.float32, key
        torch.testing.assert_close(value, ref.merged[key], atol=1e-6, rtol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    assert result.tensors_merged == len(changed)

    merged_model = CLASSES[kind].from_pretrained(tmp_path / "out")
    torch.testing.assert_close(forward(merged_model, ids), ref.outputs, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("variant", FLOAT32_VARIANTS)
def test_float32_merge_matches_peft(sqlite_hub: Hub, zoo: Zoo, variant: str, tmp_path: Path) -> None:
    check_against_peft(sqlite_hub, zoo, variant, tmp_path)


def test_variants_exercise_what_they_claim(zoo: Zoo) -> None:
    """The PEFT configurations really produce the features under test."""
    patterned = adapter_tensors(zoo.adapter("llama-rank-alpha-pattern"))
    p = "base_model.model.model.layers"
    assert patterned[f"{p}.0.self_attn.q_proj.lora_A.weight"].shape[0] == 2
    assert patterned[f"{p}.1.mlp.down_proj.lora_A.weight"].shape[0] == 8
    assert patterned[f"{p}.0.mlp.down_proj.lora_A.weight"].shape[0] == 4
    cfg = adapter_config(zoo.adapter("llama-rank-alpha-pattern"))
    assert cfg["alpha_pattern"] == {"v_proj": 3, "model.layers.0.self_attn.o_proj": 32}
    assert adapter_config(zoo.adapter("llama-rslora"))["use_rslora"] is True
    assert any("lora_magnitude_vector" in k for k in adapter_tensors(zoo.adapter("llama-dora")))
    assert any("lora_magnitude_vector" in k for k in adapter_tensors(zoo.adapter("gpt2-dora")))
    assert any(k.endswith("lora_B.bias") for k in adapter_tensors(zoo.adapter("gpt2-lora-bias")))
    assert adapter_config(zoo.adapter("gpt2-conv1d"))["fan_in_fan_out"] is True
    assert {"base_model.model.classifier.weight", "base_model.model.classifier.bias"} <= set(
        adapter_tensors(zoo.adapter("bert-seq-cls"))
    )
    assert any("lora_embedding_A" in k for k in adapter_tensors(zoo.adapter("llama-embedding")))
    assert any(".base_layer." in k for k in adapter_tensors(zoo.adapter("llama-embedding-peft-default-save")))


def test_embedding_adapter_saved_with_peft_defaults_merges_like_peft(sqlite_hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    """``PeftModel.save_pretrained`` of an adapter that targets ``embed_tokens`` also saves the
    embedding matrix itself (``...embed_tokens.base_layer.weight``) unless told not to. That is the
    same adapter as with ``save_embedding_layers=False``; PEFT merges it, and so must we."""
    check_against_peft(sqlite_hub, zoo, "llama-embedding-peft-default-save", tmp_path)


@pytest.mark.parametrize(
    ("kind", "variant"),
    [("llama", "llama-all-linear"), ("llama", "llama-embedding"), ("gpt2", "gpt2-conv1d")],
)
def test_bfloat16_merge_is_at_least_as_close_to_float64_as_peft(
    sqlite_hub: Hub, zoo: Zoo, kind: str, variant: str, tmp_path: Path
) -> None:
    """A bf16 base: our merged weights are no farther from ``W + s B A`` computed in float64
    (from the bf16 base and the adapter as stored) than PEFT's ``merge_and_unload`` in bf16, and
    within half a bf16 ulp of it (one rounding)."""
    base_dir, adapter_dir = zoo.base(kind, "bfloat16"), zoo.adapter(variant)
    cfg = adapter_config(adapter_dir)
    ref = peft_reference(base_dir, CLASSES[kind], adapter_dir, input_ids(), dtype=torch.bfloat16)
    sqlite_hub.merge(base_dir, [str(adapter_dir)], tmp_path / "out")
    ours, base = load_folder(tmp_path / "out"), load_folder(base_dir)
    assert {v.dtype for v in ours.values()} == {torch.bfloat16}
    modules = lora_modules(adapter_dir)
    assert modules
    for module in modules:
        key = module + ".weight"
        transposed = cfg["fan_in_fan_out"] or "embed" in module
        want = base[key].double() + delta64(
            adapter_dir, module, scale=cfg["lora_alpha"] / cfg["r"], transposed=transposed
        )
        ours_err = (ours[key].double() - want).abs()
        peft_err = (ref.merged[key].double() - want).abs()
        assert ours_err.max() <= peft_err.max() * (1 + 1e-6) + 1e-12, key
        assert torch.linalg.vector_norm(ours_err) <= torch.linalg.vector_norm(peft_err) * (1 + 1e-6) + 1e-12, key
        assert (ours_err <= 2.0**-8 * want.abs() + 1e-6).all(), key
    for key in set(base) - {m + ".weight" for m in modules}:
        assert torch.equal(ours[key], base[key]), key


def test_two_weighted_adapters_of_different_ranks_match_float64_formula(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path
) -> None:
    """``acme/a@0.7 acme/b@0.3``: W + 0.7 s_a B_a A_a + 0.3 s_b B_b A_b, float64, computed here."""
    base_dir = zoo.base("llama")
    a = zoo.custom_adapter("two-a", "llama", seed=11, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    b = zoo.custom_adapter(
        "two-b", "llama", seed=12, r=8, lora_alpha=4, target_modules=["q_proj", "k_proj", "down_proj"]
    )
    sqlite_hub.push(a, "acme/a")
    sqlite_hub.push(b, "acme/b")
    result = sqlite_hub.merge(base_dir, ["acme/a@0.7", "acme/b@0.3"], tmp_path / "out")
    adapters = result.record.recipe["adapters"]
    assert [(x["ref"], x["weight"]) for x in adapters] == [("acme/a:1", 0.7), ("acme/b:1", 0.3)]

    base = load_folder(base_dir)
    want = {k: v.double() for k, v in base.items()}
    for folder, weight, scale in ((a, 0.7, 8 / 4), (b, 0.3, 4 / 8)):
        for module in lora_modules(folder):
            want[module + ".weight"] += weight * delta64(folder, module, scale=scale, transposed=False)
    ours = load_folder(tmp_path / "out")
    assert set(ours) == set(base)
    for key, value in ours.items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value.double(), want[key], atol=1e-6, rtol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    touched = {m + ".weight" for f in (a, b) for m in lora_modules(f)}
    assert len(touched) == 8  # q, k, v and down_proj of 2 layers (q from both adapters)
    assert set(result.record.report.errors) == touched
    assert result.tensors_merged == len(touched)
