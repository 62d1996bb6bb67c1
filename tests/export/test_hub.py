"""``Hub.export``: MODEL as a registered base (its content fingerprint goes into the result and
the key), as a folder, or a base whose weights are gone; outputs inside lora-hub's data refused."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_hub import Hub
from lora_hub.errors import InvalidArgumentError, InvalidModelError, ProtectedPathError
from tests.export.models import Sources, leftovers

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.fixture
def sqlite_hub(tmp_path: Path) -> Iterator[Hub]:
    with Hub(tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'c.db'}") as h:
        yield h


def test_registered_base_and_folder_give_the_same_fingerprint_and_key(
    sqlite_hub: Hub, sources: Sources, tmp_path: Path
) -> None:
    folder = sources("gpt2").merged
    info = sqlite_hub.base_add(folder, "acme/gpt2-merged").base
    by_name = sqlite_hub.export("acme/gpt2-merged", tmp_path / "a", "torchscript")
    by_folder = sqlite_hub.export(folder, tmp_path / "b", "torchscript")
    assert by_name.record.plan.source_fingerprint == info.content_fingerprint
    assert by_name.record.plan.key == by_folder.record.plan.key is not None


def test_a_base_whose_weights_are_gone(sqlite_hub: Hub, sources: Sources, tmp_path: Path) -> None:
    copy = shutil.copytree(sources("gpt2").merged, tmp_path / "copy")
    stored = shutil.copytree(sources("gpt2").merged, tmp_path / "stored")
    sqlite_hub.base_add(copy, "acme/gone")
    sqlite_hub.base_add(stored, "acme/stored", store=True)
    shutil.rmtree(copy)
    shutil.rmtree(stored)
    with pytest.raises(InvalidModelError, match="the weights of this base are not at hand"):
        sqlite_hub.export("acme/gone", tmp_path / "out", "torchscript")
    assert leftovers(tmp_path / "out") == []
    # a stored base exports from its blobs
    result = sqlite_hub.export("acme/stored", tmp_path / "out", "torchscript")
    assert result.record.parity.passed


def test_refusals_before_the_base_is_read(sqlite_hub: Hub, sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown export format"):
        sqlite_hub.export("acme/none", tmp_path / "out", "tflite")
    with pytest.raises(InvalidArgumentError, match="bad export option: max_batch"):
        sqlite_hub.export("acme/none", tmp_path / "out", "onnx", max_batch=0)
    with pytest.raises(ProtectedPathError, match="lora-hub home"):
        sqlite_hub.export(sources("gpt2").merged, sqlite_hub.settings.home / "x", "torchscript")


def test_exporters_say_what_works_here(sqlite_hub: Hub) -> None:
    infos = {e.name: e for e in sqlite_hub.exporters()}
    assert list(infos) == ["torchscript", "torch-export", "aoti", "onnx", "tensorrt"]
    assert infos["torchscript"].available and infos["torch-export"].with_cache and infos["aoti"].with_cache
    assert not infos["onnx"].with_cache and "drops its KV state" in (infos["onnx"].no_cache_reason or "")
    import torch

    if not torch.cuda.is_available():
        assert not infos["tensorrt"].available and "needs a CUDA GPU" in (infos["tensorrt"].reason or "")
