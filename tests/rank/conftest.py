"""Session-wide tiny models of the rank tests (see ``tests/rank/models.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.helpers import save_llama
from tests.merge.test_methods import save_peft_adapter
from tests.rank.models import save_finetune


@dataclass(frozen=True)
class Adapters:
    base: Path  # the tiny Llama of tests.helpers (hidden 32, 2 layers, vocab 128)
    plain: Path  # r=8, alpha=16: q, k, v, o
    rslora: Path  # rsLoRA r=8, alpha=4, rank_pattern/alpha_pattern on v_proj (r=4, alpha=6): q, v, down
    embedding: Path  # r=4: embed_tokens, q (PEFT saves the embedding's base layer too)
    dora: Path  # DoRA r=4: q, v


@pytest.fixture(scope="session")
def adapters(tmp_path_factory: pytest.TempPathFactory) -> Adapters:
    root = tmp_path_factory.mktemp("rank-adapters")
    base = save_llama(root / "base")
    return Adapters(
        base=base,
        plain=save_peft_adapter(
            base, root / "plain", seed=1, r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        ),
        rslora=save_peft_adapter(
            base,
            root / "rslora",
            seed=2,
            r=8,
            lora_alpha=4,
            use_rslora=True,
            rank_pattern={"v_proj": 4},
            alpha_pattern={"v_proj": 6},
            target_modules=["q_proj", "v_proj", "down_proj"],
        ),
        embedding=save_peft_adapter(
            base,
            root / "embedding",
            seed=3,
            r=4,
            lora_alpha=8,
            target_modules=["embed_tokens", "q_proj"],
            save_embedding_layers=True,
        ),
        dora=save_peft_adapter(
            base, root / "dora", seed=4, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"]
        ),
    )


@dataclass(frozen=True)
class Finetunes:
    base: Path
    exact: Path  # rank-3 change on every linear projection, nothing else
    noisy: Path  # rank-4 change plus noise on every projection; lm_head and the final norm changed too
    wide_base: Path  # hidden 64, intermediate 256: a 4-rank cut is randomized (4k < min(out, in))
    wide_tuned: Path  # rank-4 change plus a little noise on every projection


def _head_and_norm(name: str, w: torch.Tensor, gen: torch.Generator) -> torch.Tensor | None:
    if name in ("lm_head.weight", "model.norm.weight"):
        return w + 0.1 * torch.randn(w.shape, generator=gen)
    return None


@pytest.fixture(scope="session")
def finetunes(adapters: Adapters, tmp_path_factory: pytest.TempPathFactory) -> Finetunes:
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("rank-finetunes")
    torch.manual_seed(5)
    wide = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=4,
            vocab_size=128,
        )
    )
    wide.save_pretrained(root / "wide-base")
    return Finetunes(
        base=adapters.base,
        exact=save_finetune(adapters.base, root / "exact", rank=3, seed=11),
        noisy=save_finetune(adapters.base, root / "noisy", rank=4, seed=12, noise=0.05, also=_head_and_norm),
        wide_base=root / "wide-base",
        wide_tuned=save_finetune(root / "wide-base", root / "wide-tuned", rank=4, seed=13, noise=0.02),
    )
