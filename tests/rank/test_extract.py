"""``Hub.extract``: LoRA adapters from dense fine-tunes whose change is known (``tests/rank/models.py``).
The references: ``D = W_tuned - W_base`` and its SVD in float64, computed here; PEFT loading the
extracted folder and its logits against the tuned model's; ``validate`` against the base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_hub import Hub
from lora_hub.errors import IncompatibleError, InvalidArgumentError, NotFoundError
from tests.rank.conftest import Finetunes
from tests.rank.models import (
    GPT2_LINEAR,
    adapter_updates,
    eckart_young,
    logits,
    model_tensors,
    peft_model,
    rank_keeping,
    save_finetune,
)

IDS = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))


def deltas(base: Path, tuned: Path, *, transposed: bool = False) -> dict[str, torch.Tensor]:
    """``{module path: the update [out, in]}`` of every 2-D weight that differs."""
    wb, wt = model_tensors(base), model_tensors(tuned)
    out = {}
    for key, w in wt.items():
        if key.endswith(".weight") and w.ndim == 2 and not torch.equal(w, wb[key]):
            d = w.double() - wb[key].double()
            out[key.removesuffix(".weight")] = d.t() if transposed else d
    return out


def pulled(hub: Hub, ref: str, tmp_path: Path) -> Path:
    out = tmp_path / ref.replace("/", "_").replace(":", "_")
    hub.pull(ref, out)
    return out


def test_a_finetune_of_known_rank_is_recovered_exactly(hub: Hub, finetunes: Finetunes, tmp_path: Path) -> None:
    hub.base_add(finetunes.base, "tiny")
    result = hub.extract("tiny", str(finetunes.exact), "acme/ft", rank=3)
    true = deltas(finetunes.base, finetunes.exact)
    assert set(result.ranks) == set(true) and len(true) == 14  # 7 projections x 2 layers
    assert set(result.ranks.values()) == {3}
    assert result.max_error < 1e-5
    assert result.not_captured == [] and result.saved == [] and result.unchanged == []
    folder = pulled(hub, "acme/ft:1", tmp_path)
    got = adapter_updates(folder)
    for path, d in true.items():
        assert float((got[path] - d).norm() / d.norm()) < 1e-5
    # PEFT loads it, and the logits are the tuned model's.
    tuned = logits(finetunes.exact, IDS)
    torch.testing.assert_close(logits(peft_model(finetunes.base, folder), IDS), tuned, rtol=0, atol=1e-4)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["base_model_name_or_path"] == "tiny"
    assert config["fan_in_fan_out"] is False and config["r"] == config["lora_alpha"] == 3
    assert hub.validate("acme/ft", "tiny").verdict == "exact"
    lineage = hub.show("acme/ft:1").lineage or {}
    assert lineage["kind"] == "extract" and lineage["params"]["rank"] == 3
    assert [i["role"] for i in lineage["inputs"]] == ["base", "tuned"]
    assert lineage["inputs"][0]["digest"] == hub.base_show("tiny").content_fingerprint


def test_truncation_error_is_the_eckart_young_bound_and_merges_within_it(
    hub: Hub, finetunes: Finetunes, tmp_path: Path
) -> None:
    """Rank 2 of a rank-4-plus-noise change: exact SVDs here (the matrices are small)."""
    result = hub.extract(str(finetunes.base), str(finetunes.noisy), "acme/cut", rank=2)
    true = {p: d for p, d in deltas(finetunes.base, finetunes.noisy).items() if p != "lm_head"}
    folder = pulled(hub, "acme/cut:1", tmp_path)
    got = adapter_updates(folder)
    for path, d in true.items():
        bound = eckart_young(d, 2)
        assert result.errors[path] == pytest.approx(bound, rel=1e-5), path
        assert float((got[path] - d).norm() / d.norm()) == pytest.approx(bound, rel=1e-5)
    # PEFT's own merge: each merged weight is off the tuned one by the reported error of its update.
    merged = peft_model(finetunes.base, folder).merge_and_unload().state_dict()
    tuned = model_tensors(finetunes.noisy)
    for path, d in true.items():
        off = float((merged[path + ".weight"].double() - tuned[path + ".weight"].double()).norm() / d.norm())
        assert off == pytest.approx(result.errors[path], rel=1e-3, abs=1e-6)
    assert result.not_captured == ["lm_head.weight", "model.norm.weight"]
    assert hub.validate("acme/cut", str(finetunes.base)).verdict == "exact"


def test_randomized_svd_reaches_the_optimum_and_is_seeded(hub: Hub, finetunes: Finetunes, tmp_path: Path) -> None:
    """Hidden 64, intermediate 256, rank 4: 4k < min(out, in), so the randomized SVD runs."""
    first = hub.extract(str(finetunes.wide_base), str(finetunes.wide_tuned), "acme/wide", rank=4, seed=3)
    again = hub.extract(str(finetunes.wide_base), str(finetunes.wide_tuned), "acme/wide", rank=4, seed=3)
    assert again.push.version.ref == first.push.version.ref and not again.push.created  # byte-identical
    true = deltas(finetunes.wide_base, finetunes.wide_tuned)
    got = adapter_updates(pulled(hub, "acme/wide:1", tmp_path))
    for path, d in true.items():
        bound = eckart_young(d, 4)
        measured = float((got[path] - d).norm() / d.norm())
        assert measured == pytest.approx(first.errors[path], rel=1e-4)
        assert bound <= measured <= bound * (1 + 1e-4) + 1e-7, path


def test_energy_picks_the_smallest_rank_per_module(hub: Hub, finetunes: Finetunes) -> None:
    result = hub.extract(str(finetunes.wide_base), str(finetunes.wide_tuned), "acme/e", energy=0.9)
    true = deltas(finetunes.wide_base, finetunes.wide_tuned)
    for path, d in true.items():
        k = result.ranks[path]
        assert k == rank_keeping(d, 0.9), path
        assert result.errors[path] ** 2 <= 0.1 + 1e-6


def test_modules_to_save_keeps_the_changed_head_whole(hub: Hub, finetunes: Finetunes, tmp_path: Path) -> None:
    result = hub.extract(
        str(finetunes.base), str(finetunes.noisy), "acme/head", rank=4, modules_to_save=["lm_head", "model.norm"]
    )
    assert result.saved == ["lm_head.weight", "model.norm.weight"] and result.not_captured == []
    folder = pulled(hub, "acme/head:1", tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["lm_head", "model.norm"]
    model = peft_model(finetunes.base, folder)
    head = dict(model.named_parameters())
    tuned = model_tensors(finetunes.noisy)
    saved = next(v for k, v in head.items() if "lm_head.modules_to_save" in k)
    torch.testing.assert_close(saved.detach(), tuned["lm_head.weight"], rtol=0, atol=0)
    assert hub.validate("acme/head", str(finetunes.base)).verdict == "exact"


def test_gpt2_conv1d_weights_give_a_fan_in_fan_out_adapter(hub: Hub, tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64)).save_pretrained(
        tmp_path / "gpt2"
    )
    tuned = save_finetune(tmp_path / "gpt2", tmp_path / "gpt2-ft", rank=2, seed=1, modules=GPT2_LINEAR)
    result = hub.extract(str(tmp_path / "gpt2"), str(tuned), "acme/gpt2", rank=2)
    assert len(result.ranks) == 8 and result.max_error < 1e-5  # c_attn, attn.c_proj, c_fc, mlp.c_proj x 2
    folder = pulled(hub, "acme/gpt2:1", tmp_path)
    assert json.loads((folder / "adapter_config.json").read_text())["fan_in_fan_out"] is True
    got = adapter_updates(folder)
    for path, d in deltas(tmp_path / "gpt2", tuned, transposed=True).items():
        assert float((got[path] - d).norm() / d.norm()) < 1e-5
    ids = IDS % 128
    torch.testing.assert_close(
        logits(peft_model(tmp_path / "gpt2", folder), ids), logits(tuned, ids), rtol=0, atol=1e-4
    )
    assert hub.validate("acme/gpt2", str(tmp_path / "gpt2")).verdict == "exact"


def test_an_embedding_target_becomes_an_embedding_lora(hub: Hub, finetunes: Finetunes, tmp_path: Path) -> None:
    def embedding(name: str, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
        if name == "model.embed_tokens.weight":
            return w + torch.randn(w.shape[0], 2, generator=gen) @ torch.randn(2, w.shape[1], generator=gen)
        return None

    tuned = save_finetune(finetunes.base, tmp_path / "emb-ft", rank=2, seed=4, modules=["q_proj"], also=embedding)
    result = hub.extract(str(finetunes.base), str(tuned), "acme/emb", rank=2, targets=["embed_tokens", "q_proj"])
    assert set(result.ranks) == {"model.embed_tokens", "model.layers.0.self_attn.q_proj",
                                 "model.layers.1.self_attn.q_proj"}  # fmt: skip
    folder = pulled(hub, "acme/emb:1", tmp_path)
    got = adapter_updates(folder)
    d = deltas(finetunes.base, tuned)["model.embed_tokens"].t()  # lora_embedding_B @ A is the transpose
    assert float((got["model.embed_tokens"] - d).norm() / d.norm()) < 1e-5
    torch.testing.assert_close(logits(peft_model(finetunes.base, folder), IDS), logits(tuned, IDS), rtol=0, atol=1e-4)


def test_bad_input_is_refused_and_nothing_is_pushed(hub: Hub, finetunes: Finetunes, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import tiny_llama_shape

    other = tmp_path / "other"
    LlamaForCausalLM(LlamaConfig(**{**tiny_llama_shape(), "intermediate_size": 48})).save_pretrained(other)
    base, tuned = str(finetunes.base), str(finetunes.exact)
    cases = [
        (IncompatibleError, "shape", {"tuned": str(other), "rank": 2}),
        (InvalidArgumentError, "not both", {"rank": 2, "energy": 0.9}),
        (InvalidArgumentError, "--rank K or --energy E", {}),
        (InvalidArgumentError, "at least 1", {"rank": 0}),
        (InvalidArgumentError, "(0, 1]", {"energy": 2.0}),
        (InvalidArgumentError, "no 2-D weight", {"rank": 2, "targets": ["nope_proj"]}),
        (InvalidArgumentError, "names no module", {"rank": 2, "modules_to_save": ["nope"]}),
        (InvalidArgumentError, "no target weight", {"tuned": base, "rank": 2}),
    ]
    for error, message, kwargs in cases:
        args = {"tuned": tuned, **kwargs}
        with pytest.raises(error) as info:
            hub.extract(base, args.pop("tuned"), "acme/bad", **args)
        assert message in info.value.message, (message, info.value.message)
        assert info.value.hint or error is InvalidArgumentError
    with pytest.raises(NotFoundError):
        hub.extract("no-such-base", tuned, "acme/bad", rank=2)
    with pytest.raises(NotFoundError):
        hub.show("acme/bad")
