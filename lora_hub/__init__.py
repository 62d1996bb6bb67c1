"""lora-hub: a registry and merge service for LoRA adapters.

from lora_hub import Hub
hub = Hub()                                   # LORAHUB_HOME, default ~/.lorahub
hub.push("./my-adapter", "acme/sql-lora", metrics={"accuracy": 0.81})
hub.pull("acme/sql-lora:1", "./out")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lora_hub.api import Hub, HubAPI, open_hub
    from lora_hub.errors import LoraHubError

from lora_hub._version import __version__

__all__ = ["Hub", "HubAPI", "LoraHubError", "__version__", "open_hub"]


def __getattr__(name: str) -> Any:
    # Loaded on first use, so that ``lorahub`` can set up the interpreter before the heavy imports.
    if name in ("Hub", "HubAPI", "open_hub"):
        from lora_hub import api

        return getattr(api, name)
    if name == "LoraHubError":
        from lora_hub.errors import LoraHubError

        return LoraHubError
    raise AttributeError(f"module 'lora_hub' has no attribute {name!r}")
