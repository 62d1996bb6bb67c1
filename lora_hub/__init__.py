"""lora-hub: a registry and merge service for LoRA adapters.

from lora_hub import Hub
hub = Hub()                                   # LORAHUB_HOME, default ~/.lorahub
hub.push("./my-adapter", "acme/sql-lora", metrics={"accuracy": 0.81})
hub.pull("acme/sql-lora:1", "./out")
"""

from lora_hub.api import Hub
from lora_hub.errors import LoraHubError

__version__ = "0.1.0"
__all__ = ["Hub", "LoraHubError", "__version__"]
