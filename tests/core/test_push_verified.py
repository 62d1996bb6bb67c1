"""``adapters.push(..., verified=...)``: files whose digests lora-hub computed itself are validated but
not hashed or copied again; the store adopts them. Digests here come from ``hashlib``."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lora_hub import Hub
from lora_hub.core import adapters
from lora_hub.errors import AdapterNotFoundError, IntegrityError, InvalidAdapterError, InvalidArgumentError
from tests.helpers import adapter_tensors, store_of, write_adapter


def sums(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        p.name: ("sha256:" + hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size)
        for p in sorted(folder.iterdir())
    }


class Reads:
    """Counts the bytes push hashes and the store hashes or copies, and the NaN/Inf scans."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import lora_hub.store.local as local

        self.hashed: list[str] = []
        self.copied: list[str] = []
        self.scans = 0
        real_hash, real_store_hash, real_copy = adapters.hash_file, local.hash_file, local.copy_and_hash
        real_scan = adapters.nonfinite_tensors

        def hash_spy(path: Any, advance: Any = None) -> Any:
            self.hashed.append(Path(path).name)
            return real_hash(path, advance)

        def store_hash_spy(path: Any, advance: Any = None) -> Any:
            self.hashed.append("store:" + Path(path).name)
            return real_store_hash(path, advance)

        def copy_spy(src: Any, dst: Any, advance: Any = None, **kw: Any) -> Any:
            self.copied.append(Path(src.name).name)
            return real_copy(src, dst, advance, **kw)

        def scan_spy(header: Any, names: Any = None) -> Any:
            self.scans += 1
            return real_scan(header, names)

        monkeypatch.setattr(adapters, "hash_file", hash_spy)
        monkeypatch.setattr(local, "hash_file", store_hash_spy)
        monkeypatch.setattr(local, "copy_and_hash", copy_spy)
        monkeypatch.setattr(adapters, "nonfinite_tensors", scan_spy)


def test_verified_files_are_validated_but_neither_hashed_nor_copied(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_adapter(tmp_path / "staged", seed=3)
    expected = sums(folder)
    content = {name: (folder / name).read_bytes() for name in expected}
    reads = Reads(monkeypatch)
    result = adapters.push(hub._ctx, folder, "acme/v", verified={"adapter_model.safetensors": expected[
        "adapter_model.safetensors"]})  # fmt: skip
    assert reads.hashed == ["adapter_config.json"]  # the one file not given as verified
    assert reads.copied == ["adapter_config.json"] and reads.scans == 1
    assert not (folder / "adapter_model.safetensors").exists()  # adopted by the store
    files = {f.path: (f.digest, f.size) for f in result.version.files}
    assert files == expected and result.bytes_written == sum(n for _, n in expected.values())
    out = tmp_path / "out"
    hub.pull("acme/v:1", out)
    assert {name: (out / name).read_bytes() for name in expected} == content


def test_verified_files_still_go_through_the_nan_check(hub: Hub, tmp_path: Path) -> None:
    tensors = adapter_tensors(seed=1)
    first = next(iter(tensors))
    tensors[first][0, 0] = np.nan
    folder = write_adapter(tmp_path / "nan", tensors=tensors)
    with pytest.raises(InvalidAdapterError, match="NaN"):
        adapters.push(hub._ctx, folder, "acme/nan", verified=sums(folder))
    with pytest.raises(AdapterNotFoundError):
        hub.show("acme/nan")
    assert list(store_of(hub).digests()) == []


def test_verified_files_still_obey_the_symlink_rule(hub: Hub, tmp_path: Path) -> None:
    real = write_adapter(tmp_path / "real", seed=2)
    folder = tmp_path / "linked"
    folder.mkdir()
    (folder / "adapter_config.json").write_bytes((real / "adapter_config.json").read_bytes())
    os.symlink(real / "adapter_model.safetensors", folder / "adapter_model.safetensors")
    with pytest.raises(InvalidAdapterError):
        adapters.push(hub._ctx, folder, "acme/sym", verified=sums(real))
    assert list(store_of(hub).digests()) == [] and (real / "adapter_model.safetensors").exists()


def test_a_verified_size_that_does_not_match_stores_nothing(hub: Hub, tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", seed=4)
    given = sums(folder)
    digest, size = given["adapter_model.safetensors"]
    given["adapter_model.safetensors"] = (digest, size + 1)
    with pytest.raises(IntegrityError, match="changed after it was hashed"):
        adapters.push(hub._ctx, folder, "acme/a", verified=given)
    assert list(store_of(hub).digests()) == [] and (folder / "adapter_model.safetensors").exists()
    with pytest.raises(InvalidArgumentError, match="not a file of the adapter"):
        adapters.push(hub._ctx, folder, "acme/a", verified={"other.bin": (digest, size)})


def test_without_verified_push_hashes_and_copies_as_before(
    hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_adapter(tmp_path / "plain", seed=5)
    reads = Reads(monkeypatch)
    adapters.push(hub._ctx, folder, "acme/plain")
    assert sorted(reads.hashed) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(reads.copied) == ["adapter_config.json", "adapter_model.safetensors"]
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
