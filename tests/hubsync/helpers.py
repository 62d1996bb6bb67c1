"""Repos on the loopback Hub, built from the adapter folders of ``tests.helpers``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.helpers import tree_bytes, write_adapter
from tests.hubsim import HubSim

CARD = """---
license: mit
base_model: meta-llama/Llama-3.2-1B
model-index:
- name: sql-lora
  results:
  - task:
      type: text-generation
    dataset:
      type: spider
      name: Spider
    metrics:
    - type: accuracy
      value: 0.81
    - type: exact_match
      value: 0.5
---
# SQL adapter

My own words about it.
"""


def adapter_files(tmp: Path, *, seed: int = 0, card: str | None = CARD, **kw: Any) -> dict[str, bytes]:
    """The files of a PEFT adapter repo (adapter_config.json, adapter_model.safetensors, README.md)."""
    files = tree_bytes(write_adapter(tmp / f"adapter-{seed}", seed=seed, **kw))
    if card is not None:
        files["README.md"] = card.encode()
    return files


def publish(hf_hub: HubSim, repo: str, files: dict[str, bytes], *, create: bool = True) -> str:
    """Commit ``files`` to ``repo`` on the emulator (server side, not logged); returns the commit sha."""
    if create:
        hf_hub.create_repo(repo)
    return hf_hub.commit(repo, files)


def row(version: Any) -> dict[str, Any]:
    """What a version holds, without its name, number and time."""
    return version.model_dump(mode="json", exclude={"namespace", "name", "ref", "version", "created_at", "tags"})
