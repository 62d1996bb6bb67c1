"""Tiny transformers models and real PEFT adapters for the merge tests, and PEFT's own merge as
the independent reference. Everything is built with torch, transformers and peft, offline.

Every adapter is made with ``init_lora_weights=False`` (``B`` is not zero, so the update is not
zero), and the parts PEFT initialises to a no-op (DoRA magnitudes, saved task heads, LoRA
biases) are perturbed before saving, so that each of them is really tested.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors import safe_open
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaForCausalLM,
    PreTrainedModel,
)
from transformers.utils import logging as hf_logging

from tests.helpers import tiny_llama

hf_logging.disable_progress_bar()
hf_logging.set_verbosity_error()

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_TARGETS = ["c_attn", "c_proj", "c_fc"]
VOCAB = 128


def gpt2() -> GPT2LMHeadModel:
    return GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=64))


def bert_cls() -> BertForSequenceClassification:
    config = BertConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        vocab_size=VOCAB,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


FACTORIES: dict[str, Callable[[], PreTrainedModel]] = {"llama": tiny_llama, "gpt2": gpt2, "bert": bert_cls}
CLASSES: dict[str, type[PreTrainedModel]] = {
    "llama": LlamaForCausalLM,
    "gpt2": GPT2LMHeadModel,
    "bert": BertForSequenceClassification,
    "bert-base": BertModel,
}


def save_base(kind: str, folder: Path, *, seed: int = 0) -> Path:
    """A freshly initialised tiny model of ``kind``, saved as an HF folder (float32)."""
    torch.manual_seed(seed)
    model = FACTORIES[kind]()
    # Non-trivial norms and biases, so that nothing is accidentally an identity.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(folder)
    return folder


def save_as(source: Path, folder: Path, cls: type[PreTrainedModel], dtype: torch.dtype) -> Path:
    """The model at ``source`` converted to ``dtype`` and saved at ``folder``."""
    model = cls.from_pretrained(source, dtype=torch.float32)
    model.to(dtype).save_pretrained(folder)
    return folder


def make_adapter(
    base_dir: Path,
    cls: type[PreTrainedModel],
    config: LoraConfig,
    folder: Path,
    *,
    seed: int = 1,
    save_embedding_layers: bool | str = False,
    **load: Any,
) -> Path:
    """A PEFT adapter trained on nothing but with every part non-trivial, saved at ``folder``."""
    base = cls.from_pretrained(base_dir, dtype=torch.float32, **load)
    torch.manual_seed(seed)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand_like(p))  # DoRA: m differs from ||W||
            elif "modules_to_save" in name or ("lora_B" in name and name.endswith(".bias")):
                p.add_(0.5 * torch.randn_like(p))  # task heads and LoRA biases
    model.save_pretrained(folder, save_embedding_layers=save_embedding_layers)
    return folder


@dataclass
class PeftReference:
    """PEFT's answer: the unmerged model's outputs, and ``merge_and_unload``'s weights."""

    outputs: torch.Tensor
    merged: dict[str, torch.Tensor]


def forward(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def peft_reference(
    base_dir: Path,
    cls: type[PreTrainedModel],
    adapter_dir: Path,
    ids: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float32,
    **load: Any,
) -> PeftReference:
    base = cls.from_pretrained(base_dir, dtype=dtype, **load)
    model = PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    outputs = forward(model, ids)
    merged = model.merge_and_unload()
    return PeftReference(outputs, {k: v.detach().clone() for k, v in merged.state_dict().items()})


def load_folder(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of an HF model folder (all shards)."""
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                out[key] = f.get_tensor(key)
    return out


def shard_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def adapter_config(adapter_dir: Path) -> dict[str, Any]:
    return json.loads((adapter_dir / "adapter_config.json").read_text())


def delta64(adapter_dir: Path, module: str, *, scale: float, transposed: bool) -> torch.Tensor:
    """``scale * B @ A`` of one module in float64, from the tensors as stored (transposed for
    fan_in_fan_out and embeddings, i.e. in the base's storage orientation)."""
    t = adapter_tensors(adapter_dir)
    prefix = f"base_model.model.{module}."
    a = t.get(prefix + "lora_A.weight", t.get(prefix + "lora_embedding_A"))
    b = t.get(prefix + "lora_B.weight", t.get(prefix + "lora_embedding_B"))
    assert a is not None and b is not None, module
    d = scale * (b.double() @ a.double())
    return d.t() if transposed else d


def lora_modules(adapter_dir: Path) -> list[str]:
    """Module paths of the adapter's LoRA pairs."""
    names = adapter_tensors(adapter_dir)
    suffixes = (".lora_A.weight", ".lora_embedding_A")
    return sorted(k[len("base_model.model.") : -len(s)] for k in names for s in suffixes if k.endswith(s))


def input_ids(seed: int = 7, batch: int = 2, length: int = 9, vocab: int = VOCAB) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=gen)


@dataclass(frozen=True)
class Variant:
    """One PEFT configuration to check against PEFT's own merge."""

    kind: str  # key of FACTORIES
    lora: dict[str, Any]
    save_embedding_layers: bool | str = False


VARIANTS: dict[str, Variant] = {
    "llama-all-linear": Variant("llama", {"r": 4, "lora_alpha": 8, "target_modules": LLAMA_LINEAR}),
    "llama-embedding": Variant("llama", {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens", "q_proj"]}),
    "llama-rslora": Variant("llama", {"r": 8, "lora_alpha": 4, "use_rslora": True, "target_modules": LLAMA_LINEAR}),
    "llama-rank-alpha-pattern": Variant(
        "llama",
        {
            "r": 4,
            "lora_alpha": 8,
            "target_modules": LLAMA_LINEAR,
            "rank_pattern": {"q_proj": 2, "model.layers.1.mlp.down_proj": 8},
            "alpha_pattern": {"v_proj": 3, "model.layers.0.self_attn.o_proj": 32},
        },
    ),
    "llama-dora": Variant("llama", {"r": 4, "lora_alpha": 8, "use_dora": True, "target_modules": LLAMA_LINEAR}),
    "gpt2-conv1d": Variant("gpt2", {"r": 4, "lora_alpha": 8, "fan_in_fan_out": True, "target_modules": GPT2_TARGETS}),
    "gpt2-dora": Variant(
        "gpt2", {"r": 4, "lora_alpha": 8, "fan_in_fan_out": True, "use_dora": True, "target_modules": GPT2_TARGETS}
    ),
    "gpt2-lora-bias": Variant(
        "gpt2", {"r": 4, "lora_alpha": 8, "fan_in_fan_out": True, "lora_bias": True, "target_modules": GPT2_TARGETS}
    ),
    "bert-seq-cls": Variant(
        "bert", {"r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS", "target_modules": ["query", "value"]}
    ),
    "bert-seq-cls-lora-bias": Variant(
        "bert",
        {"r": 4, "lora_alpha": 8, "task_type": "SEQ_CLS", "lora_bias": True, "target_modules": ["query", "value"]},
    ),
    # PEFT's default save_pretrained of an adapter that targets the embeddings also writes the
    # base's embedding matrix (as <path>.base_layer.weight).
    "llama-embedding-peft-default-save": Variant(
        "llama", {"r": 4, "lora_alpha": 8, "target_modules": ["embed_tokens", "q_proj"]}, save_embedding_layers="auto"
    ),
}


class Zoo:
    """Bases and adapters built on first use and kept for the session."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def _once(self, key: str, build: Callable[[Path], Path]) -> Path:
        if key not in self._built:
            self._built[key] = build(self.root / key)
        return self._built[key]

    def base(self, kind: str, dtype: str = "float32") -> Path:
        """``kind`` of FACTORIES; ``dtype`` float32 or bfloat16 (the float32 base, rounded)."""
        if dtype == "float32":
            return self._once(f"base-{kind}", lambda p: save_base(kind, p))
        source = self.base(kind)
        return self._once(f"base-{kind}-{dtype}", lambda p: save_as(source, p, CLASSES[kind], getattr(torch, dtype)))

    def adapter(self, variant: str) -> Path:
        v = VARIANTS[variant]
        base = self.base(v.kind)
        return self._once(
            f"adapter-{variant}",
            lambda p: make_adapter(
                base,
                CLASSES[v.kind],
                LoraConfig(init_lora_weights=False, **v.lora),
                p,
                save_embedding_layers=v.save_embedding_layers,
            ),
        )

    def custom_adapter(self, key: str, kind: str, seed: int = 1, **lora: Any) -> Path:
        base = self.base(kind)
        return self._once(
            f"custom-{key}",
            lambda p: make_adapter(base, CLASSES[kind], LoraConfig(init_lora_weights=False, **lora), p, seed=seed),
        )
