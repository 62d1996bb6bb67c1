"""StreamingScan: the NaN/Inf scan made over a file's bytes as they go by, in blocks of any
size, finds exactly what ``nonfinite_tensors`` finds reading the file (checked on files with
NaN and Inf in float16, bfloat16, float32 and float64 tensors, words split between blocks, and
headers of odd lengths); it says it cannot tell for bytes it cannot read, or not all of them."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lora_hub.formats.safetensors_file import StreamingScan, nonfinite_tensors, read_header

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def _file(tmp_path: Path, seed: int, *, poison: bool) -> Path:
    rng = random.Random(seed)
    tensors = {}
    for i in range(12):
        dtype = rng.choice(DTYPES)
        t = torch.randn(rng.randint(1, 40), rng.randint(1, 33), generator=torch.Generator().manual_seed(i)).to(dtype)
        if poison and (i == 0 or rng.random() < 0.4):
            t.view(-1)[rng.randrange(t.numel())] = rng.choice([float("nan"), float("inf"), float("-inf")])
        tensors[f"t{i:02d}.{'x' * rng.randint(0, 7)}"] = t  # names of odd lengths: odd data offsets
    tensors["ints"] = torch.arange(7, dtype=torch.int32)  # not scanned
    path = tmp_path / f"f{seed}.safetensors"
    save_file(tensors, str(path), metadata={"pad": "y" * rng.randint(0, 9)})
    return path


def _stream(data: bytes, seed: int) -> list[str] | None:
    rng = random.Random(seed)
    scan = StreamingScan()
    pos = 0
    while pos < len(data):
        k = rng.choice([1, 2, 3, 5, 64, 1000, 4096, len(data)])
        scan.update(memoryview(data)[pos : pos + k])
        pos += k
    return scan.result()


@pytest.mark.parametrize("seed", range(8))
def test_it_finds_what_the_file_scan_finds(tmp_path: Path, seed: int) -> None:
    path = _file(tmp_path, seed, poison=True)
    want = nonfinite_tensors(read_header(path))
    assert want and len(want) < 12  # some tensors poisoned, not all
    data = path.read_bytes()
    for chunking in range(4):
        assert _stream(data, seed * 10 + chunking) == want


def test_a_clean_file_and_a_poisoned_one(tmp_path: Path) -> None:
    clean = _file(tmp_path, 1, poison=False)
    assert _stream(clean.read_bytes(), 1) == [] == nonfinite_tensors(read_header(clean))
    t = torch.zeros(5, 3, dtype=torch.bfloat16)
    t[4, 2] = float("nan")  # the very last word of the file
    save_file({"a": torch.ones(3), "b": t}, str(tmp_path / "p.safetensors"))
    assert _stream((tmp_path / "p.safetensors").read_bytes(), 2) == ["b"]


def test_it_cannot_tell_without_every_byte_or_a_readable_header(tmp_path: Path) -> None:
    data = _file(tmp_path, 3, poison=True).read_bytes()
    assert _stream(data[:-1], 3) is None  # the last tensor not wholly seen
    assert _stream(data[:5], 3) is None
    assert _stream(struct.pack("<Q", 2) + b"{]", 3) is None  # not JSON
    assert _stream(struct.pack("<Q", 1 << 40), 3) is None  # a header over the limit
    overlapping = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}).encode()  # fmt: skip
    assert _stream(struct.pack("<Q", len(overlapping)) + overlapping + bytes(12), 3) is None
