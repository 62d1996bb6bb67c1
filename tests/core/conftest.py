"""The core's tests use the export tests' sources (tiny models with a PEFT LoRA)."""

from __future__ import annotations

from tests.export.conftest import sources

__all__ = ["sources"]
