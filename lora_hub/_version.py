"""The package version, in a module of its own so that any layer can read it without importing
``lora_hub`` itself (whose lazy attributes lead to the whole core API)."""

__version__ = "0.1.0"
