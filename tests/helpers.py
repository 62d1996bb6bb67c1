"""Builders shared by the tests: small PEFT-format adapter folders written with numpy (no torch,
so that subprocess tests start fast), the tiny random Llama of the model tests (torch and
transformers imported only when one is built), a few file-level utilities, and the CLI run as
a subprocess up to an armed fault point."""

from __future__ import annotations

import builtins
import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

PREFIX = "base_model.model."
LLAMA_MODULES = {  # module path -> (in_features, out_features), as in the tiny Llama fixtures
    "model.layers.0.self_attn.q_proj": (32, 32),
    "model.layers.0.self_attn.v_proj": (32, 16),
    "model.layers.1.self_attn.q_proj": (32, 32),
    "model.layers.1.self_attn.v_proj": (32, 16),
}


def adapter_tensors(
    modules: dict[str, tuple[int, int]] | None = None,
    *,
    rank: int = 4,
    seed: int = 0,
    dtype: Any = np.float32,
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {}
    for path, (fin, fout) in (modules or LLAMA_MODULES).items():
        tensors[f"{PREFIX}{path}.lora_A.weight"] = rng.standard_normal((rank, fin)).astype(dtype)
        tensors[f"{PREFIX}{path}.lora_B.weight"] = rng.standard_normal((fout, rank)).astype(dtype)
    return tensors


def adapter_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "v_proj"],
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "tiny-llama",
        "revision": None,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    config.update(overrides)
    return config


def write_adapter(
    folder: Path,
    *,
    tensors: dict[str, np.ndarray] | None = None,
    config: dict[str, Any] | None = None,
    seed: int = 0,
    rank: int = 4,
    extra_files: dict[str, bytes] | None = None,
) -> Path:
    """A PEFT adapter folder: adapter_config.json + adapter_model.safetensors (+ extra files)."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = tensors if tensors is not None else adapter_tensors(rank=rank, seed=seed)
    save_file(tensors, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(config or adapter_config(r=rank), indent=2))
    for name, data in (extra_files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def tiny_llama_shape(*, layers: int = 2, hidden: int = 32) -> dict[str, int]:
    """The config arguments of the tiny Llama (also given to the Mistral built with Llama's shapes)."""
    return {
        "hidden_size": hidden,
        "intermediate_size": 64,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 128,
    }


def tiny_llama(*, layers: int = 2, hidden: int = 32) -> Any:
    """A freshly initialised tiny LlamaForCausalLM (float32), drawn from torch's global generator."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(**tiny_llama_shape(layers=layers, hidden=hidden)))


def save_llama(folder: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, sharded: Path | None = None) -> Path:
    """``tiny_llama`` after ``torch.manual_seed(seed)``, saved to ``folder`` as an HF folder (and, with
    ``sharded``, the same weights in 50 KB shards with an index there)."""
    import torch

    torch.manual_seed(seed)
    model = tiny_llama(layers=layers, hidden=hidden)
    model.save_pretrained(folder)
    if sharded is not None:
        model.save_pretrained(sharded, max_shard_size="50KB")
    return folder


class TouchOnUnpickle:
    """Unpickling this creates ``path`` (``open(path, "w")``): proof that something was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (builtins.open, (self.path, "w"))


def raw_safetensors(header: dict[str, Any] | bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """Bytes of a safetensors file built by hand, so that tests can break any part of it."""
    head = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


OUTPUT_MARK = ".lorahub-output.json"  # lora-hub's marker in a folder it wrote (lora_hub._fs), not user content


def listing(folder: Path) -> list[str]:
    """The names in ``folder``, sorted, lora-hub's marker excepted."""
    return sorted(p.name for p in folder.iterdir() if p.name != OUTPUT_MARK)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (lora-hub's own marker file excepted)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != OUTPUT_MARK
    }


def run_until_hang(args: list[str], env: dict[str, str], point: str, marker: Path) -> subprocess.Popen[bytes]:
    """Start the CLI with a fault point armed; return once it is parked there."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "lora_hub", *args],
        env={**os.environ, **env, "LORAHUB_TEST_HANG_AT": point, "LORAHUB_TEST_HANG_FILE": str(marker)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not marker.exists():  # a wait for an event, not a timing assertion
        if proc.poll() is not None:
            raise AssertionError(f"exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("never reached the fault point")
        time.sleep(0.05)
    return proc


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL a process parked by ``run_until_hang`` and check that the signal is what ended it."""
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def blob_path(home: Path, digest: str) -> Path:
    """Where the local blob store keeps ``digest`` (``<home>/blobs/sha256/<2 hex>/<64 hex>``, as the README says)."""
    hexd = digest.removeprefix("sha256:")
    return Path(home) / "blobs" / "sha256" / hexd[:2] / hexd


def store_of(hub: Any) -> Any:
    """The Hub's blob store (private: tests that check what is stored, or make the store fail)."""
    return hub._ctx.store
