"""Fixtures of the merge tests: one zoo of tiny models and PEFT adapters per session, and a
private SQLite hub per test where the catalog does not matter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_hub import Hub
from tests.merge.models import Zoo


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def sqlite_hub(tmp_path: Path) -> Iterator[Hub]:
    with Hub(tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'c.db'}") as h:
        yield h
