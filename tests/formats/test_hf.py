"""Hugging Face model folders: single-file and sharded saves read strictly, and every refusal."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from lora_hub.errors import InvalidModelError
from lora_hub.formats.hf import read_model_dir
from tests.helpers import TouchOnUnpickle, save_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")

INDEX = "model.safetensors.index.json"
S1, S2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny random LlamaForCausalLM saved by transformers: (one file, 50 KB shards with an index)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    single, sharded = tmp_path_factory.mktemp("single"), tmp_path_factory.mktemp("sharded")
    return save_llama(single, seed=0, sharded=sharded), sharded


def shapes_in(shard: Path) -> dict[str, tuple[int, ...]]:
    with safe_open(str(shard), framework="numpy") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def test_single_file_folder(saved: tuple[Path, Path]) -> None:
    folder, _ = saved
    model = read_model_dir(folder)
    expected = shapes_in(folder / "model.safetensors")
    assert model.root == folder
    assert model.shards == ["model.safetensors"]
    assert {n: (s, t.shape) for n, (s, t) in model.tensors.items()} == {
        n: ("model.safetensors", shape) for n, shape in expected.items()
    }
    assert set(model.files) == {"config.json", "generation_config.json", "model.safetensors"}
    assert model.files["model.safetensors"] == folder / "model.safetensors"
    assert (model.model_type, model.architectures) == ("llama", ["LlamaForCausalLM"])
    assert model.config["hidden_size"] == 32
    assert model.weight_bytes == (folder / "model.safetensors").stat().st_size


def test_sharded_folder(saved: tuple[Path, Path]) -> None:
    single, folder = saved
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
    model = read_model_dir(folder)
    assert len(model.shards) >= 3
    assert model.shards == list(dict.fromkeys(weight_map.values()))
    assert {n: s for n, (s, _) in model.tensors.items()} == weight_map
    for shard in model.shards:
        in_file = shapes_in(folder / shard)
        assert {n: t.shape for n, (s, t) in model.tensors.items() if s == shard} == in_file
        assert model.headers[shard].path == folder / shard
    assert {n for n, _ in model.tensors.items()} == set(shapes_in(single / "model.safetensors"))
    assert INDEX in model.files and "config.json" in model.files
    assert model.weight_bytes == sum((folder / s).stat().st_size for s in model.shards)


# --- folders built by hand ----------------------------------------------------------------------------------------


def tensor(n: int = 4) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


def write_shards(folder: Path, shards: dict[str, list[str]], *, index: dict[str, str] | None = None) -> Path:
    """``shards``: file name -> tensor names in it; ``index``: the weight_map written (none when None)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    for shard, names in shards.items():
        (folder / shard).parent.mkdir(parents=True, exist_ok=True)
        save_file({n: tensor() for n in names}, str(folder / shard))
    if index is not None:
        (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": index}))
    return folder


def refused(folder: Path, *phrases: str, file: str | None = None) -> InvalidModelError:
    """``read_model_dir(folder)`` raises InvalidModelError naming the folder (or ``file`` in it) and ``phrases``."""
    with pytest.raises(InvalidModelError) as info:
        read_model_dir(folder)
    err = info.value
    where = str(folder / file) if file else str(folder)
    assert err.path == where
    assert err.message.startswith(f"{where}: ")
    for phrase in phrases:
        assert phrase in err.message
    return err


def test_hand_built_sharded_folder(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {S1: ["a", "b"], S2: ["c"]}, index={"a": S1, "b": S1, "c": S2})
    model = read_model_dir(folder)
    assert model.shards == [S1, S2]
    assert {n: s for n, (s, _) in model.tensors.items()} == {"a": S1, "b": S1, "c": S2}


def test_shards_in_a_subfolder(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {"w/x.safetensors": ["a"]}, index={"a": "w/x.safetensors"})
    assert read_model_dir(folder).tensors["a"][0] == "w/x.safetensors"


def test_files_leave_out_hidden_entries_and_pickles(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {"model.safetensors": ["a"]})
    (folder / ".cache").mkdir()
    (folder / ".cache" / "x").write_text("x")
    (folder / ".hidden").write_text("x")
    (folder / "training_args.bin").write_bytes(b"\x80\x04K\x01.")
    (folder / "sub").mkdir()
    (folder / "sub" / "notes.txt").write_text("x")
    assert set(read_model_dir(folder).files) == {"config.json", "model.safetensors", "sub/notes.txt"}


def test_refuses_a_missing_folder_or_a_file(tmp_path: Path) -> None:
    refused(tmp_path / "nothing", "no such folder")
    (tmp_path / "file").write_text("x")
    refused(tmp_path / "file", "is not a folder")


def test_refuses_a_folder_without_config_and_lists_what_it_found(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    save_file({"a": tensor()}, str(folder / "model.safetensors"))
    (folder / "README.md").write_text("hi")
    err = refused(
        folder, "not a Hugging Face model folder", "config.json missing (found: README.md, model.safetensors)"
    )
    assert err.hint is not None and "save_pretrained" in err.hint
    empty = tmp_path / "empty"
    empty.mkdir()
    refused(empty, "config.json missing (found: nothing)")


@pytest.mark.parametrize(
    ("text", "phrase", "file"),
    [
        ("{not json", "config.json is not valid JSON", "config.json"),
        ("[1, 2]", "config.json must hold a JSON object", None),
    ],
)
def test_refuses_a_config_that_is_not_a_json_object(tmp_path: Path, text: str, phrase: str, file: str | None) -> None:
    folder = write_shards(tmp_path / "m", {"model.safetensors": ["a"]})
    (folder / "config.json").write_text(text)
    refused(folder, phrase, file=file)


def test_refuses_pickled_weights_without_unpickling(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {})
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps({"w": TouchOnUnpickle(marker)}))
    err = refused(folder, "has only pickled weights (pytorch_model.bin)", "safetensors only")
    assert err.hint is not None
    assert "torch.load('pytorch_model.bin'" in err.hint and "safe_serialization=True" in err.hint
    assert not marker.exists()


def test_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    refused(write_shards(tmp_path / "m", {}), "no model.safetensors and no model.safetensors.index.json")


def test_refuses_a_broken_index(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "a", {S1: ["a"]})
    (folder / INDEX).write_text("{oops")
    refused(folder, f"{INDEX} is not valid JSON", file=INDEX)
    folder = write_shards(tmp_path / "b", {S1: ["a"]})
    (folder / INDEX).write_text(json.dumps({"metadata": {}}))
    refused(folder, f"{INDEX} has no weight_map")


def test_refuses_an_index_naming_a_missing_shard(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {S1: ["a"]}, index={"a": S1, "b": S2})
    refused(folder, f"shard {S2} listed in {INDEX} is missing")


def test_refuses_an_index_that_puts_a_tensor_in_the_wrong_shard(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {S1: ["a", "b"], S2: ["c"]}, index={"a": S1, "b": S2, "c": S2})
    refused(folder, f"{INDEX} disagrees with the shards", f"not where the index says: b (index says {S2})")


def test_refuses_a_tensor_missing_from_the_index(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {S1: ["a"], S2: ["c", "d"]}, index={"a": S1, "c": S2})
    err = refused(folder, f"{INDEX} disagrees with the shards", "missing from the index: d")
    assert "not where" not in err.message


def test_refuses_an_index_naming_a_tensor_no_shard_has(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {S1: ["a"]}, index={"a": S1, "ghost": S1})
    refused(folder, f"not where the index says: ghost (index says {S1})")


def test_refuses_a_tensor_in_two_shards(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {S1: ["a"], S2: ["a", "b"]}, index={"a": S1, "b": S2})
    refused(folder, f"tensor a is in both {S1} and {S2}")


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/../../outside.safetensors", "/abs.safetensors"])
def test_refuses_a_shard_outside_the_folder(tmp_path: Path, shard: str) -> None:
    save_file({"a": tensor()}, str(tmp_path / "outside.safetensors"))
    save_file({"a": tensor()}, str(tmp_path / "abs.safetensors"))
    folder = write_shards(tmp_path / "m", {}, index={"a": shard.replace("/abs", str(tmp_path / "abs"))})
    refused(folder, "is outside the folder")


def test_refuses_a_damaged_shard(tmp_path: Path) -> None:
    folder = write_shards(tmp_path / "m", {"model.safetensors": ["a"]})
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:-3])
    refused(folder, "model.safetensors: truncated")


def test_refuses_a_pickle_named_safetensors(tmp_path: Path) -> None:
    """Like any other unreadable shard: an InvalidModelError that names the folder and the file."""
    folder = write_shards(tmp_path / "m", {})
    marker = tmp_path / "unpickled"
    (folder / "model.safetensors").write_bytes(pickle.dumps({"w": TouchOnUnpickle(marker)}, protocol=4))
    err = refused(folder, "model.safetensors: ", "pickle")
    assert err.hint is not None and not marker.exists()
