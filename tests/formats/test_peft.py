"""PEFT adapter folders: the facts read from them, cross-checked against real PEFT, and every refusal."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from lora_hub.errors import InvalidAdapterError, PickleRefusedError, SafetensorsFormatError
from lora_hub.formats.peft import list_files, lora_scale, pattern_key, read_adapter_dir
from lora_hub.types import SavedTensor
from tests.helpers import (
    LLAMA_MODULES,
    PREFIX,
    TouchOnUnpickle,
    adapter_config,
    adapter_tensors,
    tiny_llama,
    write_adapter,
)


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps({"base_model.model.x.lora_A.weight": TouchOnUnpickle(marker)}, protocol=4)


def refused(folder: Path, *phrases: str, kind: type[Exception] = InvalidAdapterError, **kwargs: Any) -> str:
    with pytest.raises(kind) as info:
        read_adapter_dir(folder, **kwargs)
    message = str(info.value)
    for phrase in phrases:
        assert phrase in message, message
    return message


def file_sizes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


Q0 = "model.layers.0.self_attn.q_proj"
V0 = "model.layers.0.self_attn.v_proj"
Q1 = "model.layers.1.self_attn.q_proj"
V1 = "model.layers.1.self_attn.v_proj"


# --- a good folder ---------------------------------------------------------------------------------


def test_good_folder_facts_match_what_was_written(tmp_path: Path) -> None:
    tensors = adapter_tensors(rank=4)
    folder = write_adapter(
        tmp_path / "ad",
        tensors=tensors,
        config=adapter_config(r=4, lora_alpha=8),
        extra_files={"README.md": b"# tiny\n", "docs/notes.txt": b"hello"},
    )

    ad = read_adapter_dir(folder)

    facts = ad.facts
    assert facts.peft_type == "LORA"
    assert facts.rank == 4
    assert facts.alpha == 8.0
    assert facts.target_modules == ["q_proj", "v_proj"]
    assert facts.dtype == "float32"
    assert facts.num_params == sum(a.size for a in tensors.values())
    assert facts.size_bytes == file_sizes(folder)
    assert facts.task_type == "CAUSAL_LM"
    assert facts.base_model_name_or_path == "tiny-llama"
    assert facts.use_rslora is False
    assert facts.use_dora is False
    assert facts.fan_in_fan_out is False
    assert facts.modules_to_save == []
    assert ad.layout.saved_tensors == []
    assert ad.root == folder
    assert set(ad.files) == {"adapter_config.json", "adapter_model.safetensors", "README.md", "docs/notes.txt"}
    assert ad.config == json.loads((folder / "adapter_config.json").read_text())

    modules = {m.path: m for m in ad.layout.modules}
    assert set(modules) == set(LLAMA_MODULES)
    for path, (fin, fout) in LLAMA_MODULES.items():
        m = modules[path]
        assert (m.in_features, m.out_features) == (fin, fout)
        assert m.a_shape == [4, fin]
        assert m.b_shape == [fout, 4]
        assert m.rank == 4
        assert m.alpha == 8.0
        assert m.scale == 2.0
        assert m.kind == "linear"
        assert m.dora is False
        assert m.bias is False


@pytest.mark.parametrize(("r", "alpha"), [(4, 8), (8, 16), (16, 4), (3, 7.5)])
@pytest.mark.parametrize("use_rslora", [False, True])
def test_scale_is_alpha_over_r_or_over_sqrt_r(tmp_path: Path, r: int, alpha: float, use_rslora: bool) -> None:
    folder = write_adapter(
        tmp_path / "ad",
        tensors=adapter_tensors(rank=r),
        config=adapter_config(r=r, lora_alpha=alpha, use_rslora=use_rslora),
    )
    expected = alpha / math.sqrt(r) if use_rslora else alpha / r
    ad = read_adapter_dir(folder)
    assert ad.facts.use_rslora is use_rslora
    for m in ad.layout.modules:
        assert m.scale == pytest.approx(expected, rel=1e-15)
    assert lora_scale(alpha, r, use_rslora) == pytest.approx(expected, rel=1e-15)


def test_float16_adapter_reports_its_dtype(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad", tensors=adapter_tensors(dtype=np.float16))
    assert read_adapter_dir(folder).facts.dtype == "float16"


def test_mixed_dtypes_are_reported_as_mixed(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    tensors[f"{PREFIX}{Q0}.lora_A.weight"] = tensors[f"{PREFIX}{Q0}.lora_A.weight"].astype(np.float16)
    assert read_adapter_dir(write_adapter(tmp_path / "ad", tensors=tensors)).facts.dtype == "mixed"


def test_rank_and_alpha_patterns_apply_per_module(tmp_path: Path) -> None:
    ranks = {Q0: 4, V0: 2, Q1: 4, V1: 2}
    tensors = {}
    for i, (path, (fin, fout)) in enumerate(LLAMA_MODULES.items()):
        tensors.update(adapter_tensors({path: (fin, fout)}, rank=ranks[path], seed=i))
    config = adapter_config(
        r=4, lora_alpha=8, rank_pattern={"v_proj": 2}, alpha_pattern={"layers.1.self_attn.q_proj": 3}
    )
    ad = read_adapter_dir(write_adapter(tmp_path / "ad", tensors=tensors, config=config))

    expected = {Q0: (4, 8.0), V0: (2, 8.0), Q1: (4, 3.0), V1: (2, 8.0)}
    got = {m.path: (m.rank, m.alpha) for m in ad.layout.modules}
    assert got == expected
    for m in ad.layout.modules:
        assert m.scale == pytest.approx(expected[m.path][1] / expected[m.path][0], rel=1e-15)
    assert ad.facts.rank == 4
    assert ad.facts.alpha == 8.0
    assert ad.facts.rank_pattern == {"v_proj": 2}
    assert ad.facts.alpha_pattern == {"layers.1.self_attn.q_proj": 3.0}


PATTERN_CASES = [
    ({"v_proj": 2}, V0, "v_proj"),
    ({"v_proj": 2}, Q0, None),
    ({"q_proj": 2}, "model.layers.0.self_attn.xq_proj", None),  # suffix must follow a dot
    ({"q_proj": 2}, "model.layers.0.self_attn.q_proj_extra", None),  # anchored at the end
    ({"layers.1.self_attn.q_proj": 3}, Q1, "layers.1.self_attn.q_proj"),
    ({"layers.1.self_attn.q_proj": 3}, Q0, None),
    ({"layers.1.self_attn.q_proj": 3}, "model.layers.11.self_attn.q_proj", None),
    ({"model.layers.0.self_attn.q_proj": 5}, Q0, "model.layers.0.self_attn.q_proj"),  # whole path
    ({r"layers\.[01]\.self_attn\.v_proj": 5}, V1, r"layers\.[01]\.self_attn\.v_proj"),  # a regex
    ({"proj": 1}, Q0, None),  # not a whole name component
    ({"q_proj": 1, "self_attn.q_proj": 2}, Q0, "q_proj"),  # the first match wins
    ({"self_attn.q_proj": 2, "q_proj": 1}, Q0, "self_attn.q_proj"),
]


@pytest.mark.parametrize(("patterns", "path", "expected"), PATTERN_CASES)
def test_pattern_key(patterns: dict[str, int], path: str, expected: str | None) -> None:
    assert pattern_key(patterns, path) == expected


def test_pattern_key_with_a_broken_regex_is_an_invalid_adapter() -> None:
    with pytest.raises(InvalidAdapterError, match="not a valid regular expression"):
        pattern_key({"q_proj[": 2}, Q0)


# --- list_files ----------------------------------------------------------------------------------------


def test_list_files_skips_hidden_entries_and_walks_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "root"
    for rel in ["a.txt", "sub/b.json", "sub/deeper/c.md", ".hidden", ".git/config", "sub/.DS_Store", ".cache/x/y.txt"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(rel)

    files = list_files(root)

    assert set(files) == {"a.txt", "sub/b.json", "sub/deeper/c.md"}
    for rel, real in files.items():
        assert real.read_text() == rel


def test_list_files_follows_links_inside_the_folder_only(tmp_path: Path) -> None:
    """One rule for push and base add (lora_hub.formats.files): links that stay inside the folder are
    followed; links that leave it, loops and broken links are refused, every one listed at once."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.txt").write_text("target")
    (outside / "dir").mkdir()
    (outside / "dir" / "inner.txt").write_text("inner")
    root = tmp_path / "root"
    (root / "real").mkdir(parents=True)
    (root / "real" / "inner.txt").write_text("inside")
    (root / "inside.txt").symlink_to(root / "real" / "inner.txt")
    (root / "alias").symlink_to(root / "real", target_is_directory=True)
    files = list_files(root)
    assert sorted(files) == ["alias/inner.txt", "inside.txt", "real/inner.txt"]
    assert {rel: p.read_text() for rel, p in files.items()} == dict.fromkeys(files, "inside")

    (root / "link.txt").symlink_to(outside / "weights.txt")
    (root / "linked_dir").symlink_to(outside / "dir", target_is_directory=True)
    (root / "broken").symlink_to(tmp_path / "missing")
    (root / "real" / "loop").symlink_to(root, target_is_directory=True)
    (root / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(InvalidAdapterError) as info:
        list_files(root)
    message = info.value.message
    assert "6 entries refused" in message  # the loop is met through alias/ as well
    for name, why in [
        ("alias/loop", "loops back"),
        ("link.txt", "leaves the folder"),
        ("linked_dir", "leaves the folder"),
        ("passwd", "leaves the folder (to /etc/passwd)"),
        ("broken", "broken symbolic link"),
        ("real/loop", "loops back"),
    ]:
        assert f"{name}: " in message and why in message, name


def test_non_regular_files_and_unprintable_names_are_refused(tmp_path: Path) -> None:
    root = write_adapter(tmp_path / "ad")
    os.mkfifo(root / "pipe")
    (root / "a\nb.txt").write_text("x")
    (root / "\x1b[2Jpwned.txt").write_text("x")
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    with pytest.raises(InvalidAdapterError) as info:
        read_adapter_dir(root)
    message = info.value.message
    assert "4 entries refused" in message
    assert "pipe: not a regular file" in message
    assert "a\\nb.txt: the name" in message and "\\x1b[2Jpwned.txt" in message and "caf\\xe9.txt" in message
    assert "\x1b" not in message  # the escape sequence never reaches a terminal raw


def test_a_config_that_is_a_fifo_or_a_device_link_is_named_as_such(tmp_path: Path) -> None:
    root = write_adapter(tmp_path / "ad")
    (root / "adapter_config.json").unlink()
    os.mkfifo(root / "adapter_config.json")
    refused(root, "adapter_config.json: not a regular file")
    (root / "adapter_config.json").unlink()
    (root / "adapter_config.json").symlink_to("/dev/zero")
    refused(root, "adapter_config.json: a symbolic link that leaves the folder (to /dev/zero)")


@pytest.mark.parametrize("name", ["adapter_model.bin", "sub/optimizer.pt", "x.PTH", "a.ckpt", "b.pkl", "c.pickle"])
def test_list_files_refuses_pickle_files(tmp_path: Path, name: str) -> None:
    root = tmp_path / "root"
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(b"\x80\x04.")
    with pytest.raises(PickleRefusedError, match=re.escape(name)):
        list_files(root)


def test_symlinked_weights_inside_the_folder_are_read(tmp_path: Path) -> None:
    real = write_adapter(tmp_path / "ad" / "real")
    folder = tmp_path / "ad"
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (folder / name).symlink_to(real / name)
    ad = read_adapter_dir(folder)
    assert ad.facts.size_bytes == 2 * file_sizes(real)  # the files and the links' targets, both stored
    assert len(ad.layout.modules) == 4


# --- refusals: the folder ---------------------------------------------------------------------------------


def test_missing_folder(tmp_path: Path) -> None:
    refused(tmp_path / "nope", "no such folder")


def test_a_file_instead_of_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("x")
    refused(path, "is not a folder")


def test_the_weights_file_instead_of_its_folder(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad")
    refused(folder / "adapter_model.safetensors", "is a file", "folder")


def test_folder_without_config_lists_what_it_found(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad", extra_files={"notes.txt": b"x"})
    (folder / "adapter_config.json").unlink()
    refused(folder, "adapter_config.json missing", "adapter_model.safetensors", "notes.txt")


def test_empty_folder_says_nothing_was_found(tmp_path: Path) -> None:
    (tmp_path / "ad").mkdir()
    refused(tmp_path / "ad", "adapter_config.json and adapter_model.safetensors missing", "found: nothing")


def test_adapter_model_bin_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    folder = write_adapter(tmp_path / "ad")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(pickle_payload(marker))
    refused(folder, "adapter_model.bin", kind=PickleRefusedError)
    assert not marker.exists()


def test_pickle_renamed_to_safetensors_is_refused_without_being_unpickled(tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    folder = write_adapter(tmp_path / "ad")
    (folder / "adapter_model.safetensors").write_bytes(pickle_payload(marker))
    with pytest.raises(PickleRefusedError) as info:
        read_adapter_dir(folder)
    assert not marker.exists()
    assert "pickle" in str(info.value)
    assert info.value.hint is not None and "safetensors" in info.value.hint
    # Like every other problem with the weights file, the error names the file.
    assert "adapter_model.safetensors" in str(info.value), str(info.value)
    assert info.value.path == str(folder / "adapter_model.safetensors")


def test_damaged_weights_are_refused_with_the_file_named(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-3])
    with pytest.raises(SafetensorsFormatError) as info:
        read_adapter_dir(folder)
    assert "truncated" in str(info.value)
    assert info.value.path == str(weights)


# --- refusals: the config ------------------------------------------------------------------------------------


def with_config_text(tmp_path: Path, text: str | bytes) -> Path:
    folder = write_adapter(tmp_path / "ad")
    cfg = folder / "adapter_config.json"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    return folder


def with_config(tmp_path: Path, **changes: Any) -> Path:
    config = adapter_config()
    for key, value in changes.items():
        if value is ...:
            del config[key]
        else:
            config[key] = value
    return with_config_text(tmp_path, json.dumps(config))


def test_config_that_is_not_json_gives_line_and_column(tmp_path: Path) -> None:
    text = '{\n  "r": 4,\n  "lora_alpha": ,\n  "target_modules": ["q_proj"]\n}\n'
    # Line 3 is '  "lora_alpha": ,': the comma is its 17th character.
    assert text.splitlines()[2].index(",") + 1 == 17
    refused(with_config_text(tmp_path, text), "not valid JSON", "line 3 column 17")


def test_config_that_is_not_utf8(tmp_path: Path) -> None:
    refused(with_config_text(tmp_path, b'{"r": 4, "x": "\xff"}'), "not UTF-8")


@pytest.mark.parametrize("text", ["[]", '[{"r": 4}]', '"LORA"', "4", "null"])
def test_config_that_is_not_an_object(tmp_path: Path, text: str) -> None:
    refused(with_config_text(tmp_path, text), "must hold a JSON object")


@pytest.mark.parametrize("field", ["r", "lora_alpha", "target_modules"])
def test_config_missing_a_required_field(tmp_path: Path, field: str) -> None:
    message = refused(with_config(tmp_path, **{field: ...}), "missing required field(s)")
    assert re.search(rf"missing required field\(s\): {field}\b", message), message


def test_config_missing_every_required_field_names_them_all(tmp_path: Path) -> None:
    refused(with_config_text(tmp_path, '{"peft_type": "LORA"}'), "r, lora_alpha, target_modules")


@pytest.mark.parametrize("r", [0, -4, "4", 4.0, True, None, [4]], ids=repr)
def test_config_rank_must_be_a_positive_integer(tmp_path: Path, r: Any) -> None:
    refused(with_config(tmp_path, r=r), "'r' must be a positive integer", repr(r))


@pytest.mark.parametrize("alpha", ["8", True, None, [8]], ids=repr)
def test_config_alpha_must_be_a_number(tmp_path: Path, alpha: Any) -> None:
    refused(with_config(tmp_path, lora_alpha=alpha), "'lora_alpha' must be a finite number")


@pytest.mark.parametrize("alpha", ["NaN", "Infinity", "-Infinity"])
def test_config_alpha_must_be_finite(tmp_path: Path, alpha: str) -> None:
    text = json.dumps(adapter_config()).replace('"lora_alpha": 8', f'"lora_alpha": {alpha}')
    assert alpha in text
    with pytest.raises(InvalidAdapterError, match="lora_alpha"):
        read_adapter_dir(with_config_text(tmp_path, text))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rank_pattern", {"v_proj": 0}),
        ("rank_pattern", {"v_proj": "2"}),
        ("rank_pattern", {"v_proj": 2.5}),
        ("rank_pattern", ["v_proj"]),
        ("alpha_pattern", {"v_proj": -1}),
        ("alpha_pattern", {"v_proj": True}),
    ],
    ids=repr,
)
def test_config_patterns_must_map_to_positive_numbers(tmp_path: Path, key: str, value: Any) -> None:
    refused(with_config(tmp_path, **{key: value}), f"'{key}' must map module patterns to positive numbers")


@pytest.mark.parametrize("tm", [None, 4, [1, 2], {"q_proj": 1}], ids=repr)
def test_config_target_modules_must_be_names_or_a_regex(tmp_path: Path, tm: Any) -> None:
    refused(with_config(tmp_path, target_modules=tm), "'target_modules' must be a list")


@pytest.mark.parametrize("peft_type", ["IA3", "ADALORA", "PROMPT_TUNING"])
def test_other_peft_types_are_refused(tmp_path: Path, peft_type: str) -> None:
    refused(with_config(tmp_path, peft_type=peft_type), peft_type, "LoRA adapters only")


def test_lowercase_lora_peft_type_and_no_peft_type_are_accepted(tmp_path: Path) -> None:
    assert read_adapter_dir(with_config(tmp_path, peft_type="lora")).facts.peft_type == "LORA"
    assert read_adapter_dir(with_config(tmp_path, peft_type=...)).facts.peft_type == "LORA"


def test_config_problems_are_reported_together(tmp_path: Path) -> None:
    refused(
        with_config(tmp_path, r="4", lora_alpha="8", target_modules=...),
        "missing required field(s): target_modules",
        "'r' must be a positive integer",
        "'lora_alpha' must be a finite number",
    )


# --- refusals: config against tensors ------------------------------------------------------------------------


def test_lora_a_without_lora_b(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    del tensors[f"{PREFIX}{Q0}.lora_B.weight"]
    refused(write_adapter(tmp_path / "ad", tensors=tensors), f"{Q0} has lora_A but no lora_B")


def test_lora_b_without_lora_a(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    del tensors[f"{PREFIX}{V1}.lora_A.weight"]
    refused(write_adapter(tmp_path / "ad", tensors=tensors), f"{V1} has lora_B but no lora_A")


def test_module_with_neither_lora_a_nor_lora_b_is_described_truthfully(tmp_path: Path) -> None:
    tensors = adapter_tensors({Q0: (32, 32)})
    k_proj = "model.layers.0.self_attn.k_proj"
    tensors[f"{PREFIX}{k_proj}.lora_B.bias"] = np.zeros(16, np.float32)
    message = refused(write_adapter(tmp_path / "ad", tensors=tensors), k_proj)
    assert f"{k_proj} has lora_A" not in message, message


def test_several_problems_are_reported_at_once(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    del tensors[f"{PREFIX}{Q0}.lora_B.weight"]
    del tensors[f"{PREFIX}{V1}.lora_B.weight"]
    refused(
        write_adapter(tmp_path / "ad", tensors=tensors),
        "2 problem(s)",
        f"{Q0} has lora_A but no lora_B",
        f"{V1} has lora_A but no lora_B",
    )


def test_rank_in_config_not_matching_the_tensors(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad", tensors=adapter_tensors(rank=4), config=adapter_config(r=8))
    message = refused(folder, "rank 8", "[4, 32]")
    assert re.search(r"\b8\b", message) and re.search(r"\b4\b", message)


def test_rank_pattern_not_matching_the_tensors_names_the_pattern(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad", config=adapter_config(r=4, rank_pattern={"v_proj": 2}))
    refused(folder, f"{V0}: the config says rank 2 (rank_pattern['v_proj'])", "[4, 32]")


def test_lora_a_and_b_with_different_ranks(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    tensors[f"{PREFIX}{Q0}.lora_B.weight"] = np.zeros((32, 2), np.float32)
    refused(write_adapter(tmp_path / "ad", tensors=tensors), Q0, "[32, 2]")


def test_one_dimensional_lora_tensors(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    tensors[f"{PREFIX}{Q0}.lora_A.weight"] = np.zeros(4, np.float32)
    refused(write_adapter(tmp_path / "ad", tensors=tensors), "must be at least 2-D")


@pytest.mark.parametrize(("value", "where"), [(np.nan, 0), (np.inf, -1), (-np.inf, 5)])
def test_nonfinite_weights_are_refused(tmp_path: Path, value: float, where: int) -> None:
    tensors = adapter_tensors()
    name = f"{PREFIX}{V1}.lora_B.weight"
    tensors[name].reshape(-1)[where] = value
    folder = write_adapter(tmp_path / "ad", tensors=tensors)
    refused(folder, "NaN or Inf", name)
    assert read_adapter_dir(folder, check_finite=False).facts.rank == 4


def test_many_nonfinite_tensors_are_summarised(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    for arr in tensors.values():
        arr[0, 0] = np.nan
    refused(write_adapter(tmp_path / "ad", tensors=tensors), "NaN or Inf", "and 5 more")


def test_keys_without_the_peft_prefix(tmp_path: Path) -> None:
    tensors = {k.removeprefix(PREFIX): v for k, v in adapter_tensors().items()}
    refused(write_adapter(tmp_path / "ad", tensors=tensors), "does not start with 'base_model.model.'")


def test_keys_with_an_adapter_name(tmp_path: Path) -> None:
    tensors = {k.replace(".weight", ".default.weight"): v for k, v in adapter_tensors().items()}
    refused(write_adapter(tmp_path / "ad", tensors=tensors), "carries an adapter name")


def test_file_without_lora_tensors(tmp_path: Path) -> None:
    tensors = {f"{PREFIX}lm_head.weight": np.zeros((8, 4), np.float32)}
    refused(write_adapter(tmp_path / "ad", tensors=tensors), "no LoRA tensors")


@pytest.mark.parametrize(("np_dtype", "code"), [(np.int32, "I32"), (np.int8, "I8"), (np.uint8, "U8")])
def test_integer_lora_tensor(tmp_path: Path, np_dtype: Any, code: str) -> None:
    tensors = adapter_tensors()
    name = f"{PREFIX}{Q1}.lora_A.weight"
    tensors[name] = tensors[name].astype(np_dtype)
    refused(write_adapter(tmp_path / "ad", tensors=tensors), f"{name} has dtype {code}")


def test_dora_config_without_magnitude_vectors(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "ad", config=adapter_config(use_dora=True))
    message = refused(folder, "use_dora=true but there is no lora_magnitude_vector", "4 problem(s)")
    for path in LLAMA_MODULES:
        assert path in message


def test_magnitude_vectors_without_dora_config(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    tensors[f"{PREFIX}{Q0}.lora_magnitude_vector"] = np.ones(32, np.float32)
    refused(write_adapter(tmp_path / "ad", tensors=tensors), "use_dora=false")


def test_magnitude_vector_of_the_wrong_length(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    for path, (_, fout) in LLAMA_MODULES.items():
        tensors[f"{PREFIX}{path}.lora_magnitude_vector"] = np.ones(fout, np.float32)
    tensors[f"{PREFIX}{Q0}.lora_magnitude_vector"] = np.ones(7, np.float32)
    folder = write_adapter(tmp_path / "ad", tensors=tensors, config=adapter_config(use_dora=True))
    refused(folder, "1 problem(s)", f"{Q0}: DoRA magnitude vector has 7 entries, lora_B has 32 outputs")


def test_dora_adapter_built_by_hand(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    for path, (_, fout) in LLAMA_MODULES.items():
        key = f"{PREFIX}{path}.lora_magnitude_vector"
        if path == Q0:
            key += ".weight"  # the older PEFT spelling
        tensors[key] = np.ones(fout, np.float32)
    ad = read_adapter_dir(write_adapter(tmp_path / "ad", tensors=tensors, config=adapter_config(use_dora=True)))
    assert ad.facts.use_dora is True
    assert all(m.dora for m in ad.layout.modules)
    assert ad.layout.saved_tensors == []
    assert ad.facts.num_params == sum(a.size for a in tensors.values())


def test_lora_bias_of_the_wrong_shape(tmp_path: Path) -> None:
    tensors = adapter_tensors()
    tensors[f"{PREFIX}{V0}.lora_B.bias"] = np.zeros(15, np.float32)
    refused(write_adapter(tmp_path / "ad", tensors=tensors), f"{V0}: lora_B.bias is [15], expected [16]")


def test_errors_carry_the_offending_path(tmp_path: Path) -> None:
    folder = with_config(tmp_path, r=0)
    with pytest.raises(InvalidAdapterError) as info:
        read_adapter_dir(folder)
    assert info.value.path == str(folder / "adapter_config.json")
    assert isinstance(info.value, ValueError)


# --- real PEFT ----------------------------------------------------------------------------------------------


def _lora_layers(peft_model: Any) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {
        name.removeprefix("base_model.model."): module
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


PEFT_VARIANTS = {
    "rslora-rank-pattern": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], rank_pattern={"v_proj": 2}, use_rslora=True
    ),
    "alpha-pattern": dict(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj", "o_proj"],
        rank_pattern={"v_proj": 2},
        alpha_pattern={"layers.1.self_attn.q_proj": 3, "o_proj": 5},
    ),
    "dora-modules-to-save": dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], use_dora=True, modules_to_save=["lm_head"]
    ),
}


@pytest.fixture(scope="module")
def peft_adapters(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Any]]:
    """Adapters saved by real PEFT, built once per module: name -> (folder, peft model)."""
    torch = pytest.importorskip("torch")
    peft = pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from transformers import GPT2Config, GPT2LMHeadModel

    out: dict[str, tuple[Path, Any]] = {}
    for name, kwargs in PEFT_VARIANTS.items():
        torch.manual_seed(0)
        model = peft.get_peft_model(tiny_llama(), peft.LoraConfig(**kwargs))
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = (folder, model)

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=128, n_positions=64))
    model = peft.get_peft_model(
        gpt2, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    folder = tmp_path_factory.mktemp("gpt2")
    model.save_pretrained(folder)
    out["gpt2"] = (folder, model)
    return out


def _num_params_in(weights: Path) -> int:
    with safe_open(str(weights), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118


@pytest.mark.parametrize("variant", [*PEFT_VARIANTS, "gpt2"])
def test_peft_adapter_matches_peft_module_by_module(peft_adapters: dict[str, tuple[Path, Any]], variant: str) -> None:
    folder, model = peft_adapters[variant]
    layers = _lora_layers(model)
    assert layers, "PEFT made no LoRA layers"

    ad = read_adapter_dir(folder)

    modules = {m.path: m for m in ad.layout.modules}
    assert set(modules) == set(layers)
    for path, layer in layers.items():
        m = modules[path]
        assert m.rank == layer.r["default"], path
        assert m.alpha == layer.lora_alpha["default"], path
        assert m.scale == pytest.approx(layer.scaling["default"], rel=1e-12), path
        assert m.in_features == layer.in_features, path
        assert m.out_features == layer.out_features, path
    config = json.loads((folder / "adapter_config.json").read_text())
    assert ad.facts.rank == config["r"]
    assert ad.facts.alpha == config["lora_alpha"]
    assert ad.facts.target_modules == sorted(config["target_modules"])
    assert ad.facts.num_params == _num_params_in(folder / "adapter_model.safetensors")
    assert ad.facts.size_bytes == file_sizes(folder)
    assert ad.facts.dtype == "float32"


def test_peft_rslora_scale_is_alpha_over_sqrt_rank(peft_adapters: dict[str, tuple[Path, Any]]) -> None:
    folder, model = peft_adapters["rslora-rank-pattern"]
    ad = read_adapter_dir(folder)
    assert ad.facts.use_rslora is True
    modules = {m.path: m for m in ad.layout.modules}
    llama = model.base_model.model.model
    for i in range(2):
        for proj, rank in (("q_proj", 4), ("v_proj", 2)):
            path = f"model.layers.{i}.self_attn.{proj}"
            peft_scaling = getattr(llama.layers[i].self_attn, proj).scaling["default"]
            assert modules[path].rank == rank
            assert modules[path].scale == pytest.approx(8 / math.sqrt(rank), rel=1e-12)
            assert modules[path].scale == pytest.approx(peft_scaling, rel=1e-12)


def test_peft_dora_and_modules_to_save(peft_adapters: dict[str, tuple[Path, Any]]) -> None:
    folder, _ = peft_adapters["dora-modules-to-save"]
    ad = read_adapter_dir(folder)
    assert ad.facts.use_dora is True
    assert [m.dora for m in ad.layout.modules] == [True] * 4
    assert ad.facts.modules_to_save == ["lm_head"]
    assert ad.layout.saved_tensors == [SavedTensor(name="lm_head.weight", dtype="float32", shape=[128, 32])]


def test_peft_gpt2_conv1d_with_fan_in_fan_out(peft_adapters: dict[str, tuple[Path, Any]]) -> None:
    folder, _ = peft_adapters["gpt2"]
    ad = read_adapter_dir(folder)
    assert ad.facts.fan_in_fan_out is True
    assert ad.facts.target_modules == ["c_attn"]
    assert [m.path for m in ad.layout.modules] == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    for m in ad.layout.modules:
        assert (m.in_features, m.out_features) == (32, 96)
        assert m.kind == "linear"


@pytest.mark.parametrize(("patterns", "path", "expected"), PATTERN_CASES)
def test_pattern_key_agrees_with_peft(patterns: dict[str, int], path: str, expected: str | None) -> None:
    pytest.importorskip("torch")
    other = pytest.importorskip("peft.utils.other")
    peft_key = other.get_pattern_key(list(patterns), path)
    assert pattern_key(patterns, path) == (None if peft_key == path and path not in patterns else peft_key)


def test_peft_output_folder_has_no_hidden_surprises(peft_adapters: dict[str, tuple[Path, Any]]) -> None:
    folder, _ = peft_adapters["gpt2"]
    ad = read_adapter_dir(folder)
    assert set(ad.files) == {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert all(os.path.samefile(real, folder / rel) for rel, real in ad.files.items())
