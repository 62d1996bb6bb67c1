"""Fixtures of the export tests: the sources (tiny Llama, GPT-2 with Conv1D, the real
all-MiniLM-L6-v2, each with a PEFT LoRA merged by PEFT) built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest

from tests.export.models import Sources


@pytest.fixture(scope="session")
def sources(tmp_path_factory: pytest.TempPathFactory) -> Sources:
    return Sources(tmp_path_factory.mktemp("export-sources"))
