"""Tiny models for the rank tests: a base and "fine-tunes" of it whose change is known exactly, and
the float64 references (dense updates from the stored tensors, their SVD) that the tests compare with.

Everything is built with torch and transformers from configs, offline; nothing here calls
``lora_hub.rank``."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

LLAMA_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GPT2_LINEAR = ["c_attn", "c_proj", "c_fc"]
PREFIX = "base_model.model."


def read_all(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


def model_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        out.update(read_all(shard))
    return out


def planted_change(
    shape: Sequence[int], rank: int, gen: torch.Generator, *, size: float, noise: float = 0.0
) -> torch.Tensor:
    """``U diag(sigma) V^T`` of the given rank, singular values ``size * 0.7^j``, plus Gaussian noise of
    Frobenius norm ``noise`` (float64)."""
    rows, cols = shape
    u, _ = torch.linalg.qr(torch.randn(rows, rank, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, rank, generator=gen, dtype=torch.float64))
    sigma = size * torch.tensor([0.7**j for j in range(rank)], dtype=torch.float64)
    change = (u * sigma) @ v.t()
    if noise:
        n = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
        change += n * (noise / float(n.norm()))
    return change


def save_finetune(
    base: Path,
    out: Path,
    *,
    rank: int,
    seed: int,
    modules: Sequence[str] = LLAMA_LINEAR,
    noise: float = 0.0,
    also: Callable[[str, torch.Tensor, torch.Generator], torch.Tensor | None] | None = None,
    model_cls: Any = None,
) -> Path:
    """A copy of the model at ``base`` whose weights named ``*.<module>.weight`` get a planted change of
    ``rank`` (size 0.5 on top of weights of about 0.02 per entry), and other tensors ``also(name, w,
    gen)`` where it returns a tensor."""
    from transformers import AutoModelForCausalLM

    model = (model_cls or AutoModelForCausalLM).from_pretrained(base, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2 and name.endswith(".weight") and name.rsplit(".", 2)[-2] in modules:
                p += planted_change(p.shape, rank, gen, size=0.5, noise=noise).to(p.dtype)
            elif also is not None and (changed := also(name, p.detach().clone(), gen)) is not None:
                p.copy_(changed)
    model.save_pretrained(out)
    return out


def adapter_updates(folder: Path) -> dict[str, torch.Tensor]:
    """``{module path: s * B @ A}`` (float64) from a PEFT folder's tensors and config, with
    ``s = alpha / r`` or ``alpha / sqrt(r)`` (rsLoRA), rank/alpha patterns matched as PEFT does
    (a key ``k`` names the paths matching ``(.*\\.)?(k)$``); conv kernels flattened."""
    import re

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = read_all(folder / "adapter_model.safetensors")

    def pattern(patterns: dict[str, Any], default: float, path: str) -> float:
        for key, value in patterns.items():
            if re.match(rf"(.*\.)?({key})$", path):
                return value
        return default

    out = {}
    for key, a in tensors.items():
        for a_part, b_part in ((".lora_A.weight", ".lora_B.weight"), (".lora_embedding_A", ".lora_embedding_B")):
            if key.endswith(a_part):
                path = key[len(PREFIX) : -len(a_part)]
                b = tensors[PREFIX + path + b_part]
                r = a.shape[0]
                assert r == pattern(config.get("rank_pattern") or {}, config["r"], path)
                alpha = pattern(config.get("alpha_pattern") or {}, config["lora_alpha"], path)
                s = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
                out[path] = s * (b.double().reshape(b.shape[0], -1) @ a.double().reshape(r, -1))
    return out


def eckart_young(d: torch.Tensor, k: int) -> float:
    """``sqrt(sum_{j>k} S_j^2) / ||D||_F`` from ``torch.linalg.svd`` in float64."""
    s = torch.linalg.svdvals(d.double())
    return math.sqrt(float((s[k:] ** 2).sum() / (s**2).sum()))


def rank_keeping(d: torch.Tensor, energy: float) -> int:
    """The smallest k whose cut keeps ``energy`` of ``||D||_F^2`` (float64 SVD)."""
    s2 = torch.linalg.svdvals(d.double()) ** 2
    kept = torch.cumsum(s2, 0) / s2.sum()
    return int((kept < energy - 1e-12).sum()) + 1


def logits(model_dir_or_model: Any, ids: torch.Tensor) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    model = model_dir_or_model
    if isinstance(model, str | Path):
        model = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(ids).logits.double()


def peft_model(base: Path, adapter: Path) -> Any:
    """PEFT's own loading of the adapter onto the base (the independent reference)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter)
