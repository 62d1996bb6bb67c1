"""The PEFT folder that ``reduce`` and ``extract`` write: per-module ranks and alphas as patterns."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from lora_hub.formats.dtypes import BY_NAME, NAME, torch_dtype
from lora_hub.formats.peft import write_adapter_dir

TORCH_DTYPES = {name: torch_dtype(name) for name in BY_NAME}
STORED = NAME


def check_dtype(dtype: str, *, allow_auto: bool = True) -> None:
    from lora_hub.errors import InvalidArgumentError

    if dtype not in TORCH_DTYPES and not (allow_auto and dtype == "auto"):
        choices = (["auto"] if allow_auto else []) + list(TORCH_DTYPES)
        raise InvalidArgumentError(f"unknown dtype {dtype!r}", hint=f"choose one of {', '.join(choices)}")


def lora_config(
    ranks: Mapping[str, int],
    alphas: Mapping[str, float],
    **fields: Any,
) -> dict[str, Any]:
    """A LoRA ``adapter_config.json``: ``r`` and ``lora_alpha`` are the most common (rank, alpha) pair;
    every module that differs gets its full path in ``rank_pattern`` / ``alpha_pattern`` (PEFT
    matches a key ``k`` to a module path by the regex ``(.*\\.)?(k)$``). ``use_rslora`` is off, so a
    module's scale is ``alpha / rank``."""
    pairs = Counter((ranks[p], float(alphas[p])) for p in ranks)
    r, alpha = max(pairs.items(), key=lambda kv: (kv[1], kv[0][0]))[0] if pairs else (1, 1.0)
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": int(alpha) if float(alpha).is_integer() else alpha,
        "rank_pattern": {p: k for p, k in sorted(ranks.items()) if k != r},
        "alpha_pattern": {p: float(a) for p, a in sorted(alphas.items()) if float(a) != alpha},
        "target_modules": sorted({p.rsplit(".", 1)[-1] for p in ranks}),
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "lora_dropout": 0.0,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    config.update(fields)
    return config


def write_folder(folder: Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> None:
    """``adapter_model.safetensors`` and ``adapter_config.json`` in ``folder`` (which must exist)."""
    write_adapter_dir(folder, dict(tensors), dict(config))
