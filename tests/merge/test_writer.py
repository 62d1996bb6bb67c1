"""The shard writer and ``OutputFiles`` (``lora_hub.merge.writer``): the bytes on disk against the
reference safetensors parser, and the page-cache warming that runs ahead of the writes."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import lora_hub.merge.writer as wr
from lora_hub.merge.writer import Entry, OutputFiles, ShardWriter, shard_size

RNG = np.random.default_rng(3)
TENSORS = {
    "a.weight": RNG.standard_normal((64, 96)).astype(np.float32),
    "b.weight": RNG.standard_normal((33, 7)).astype(np.float16),
    "c.bias": RNG.standard_normal(40).astype(np.float32),
    "d.weight": RNG.standard_normal((128, 64)).astype(np.float32),
}
DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16"}
SHARDS = [["a.weight", "b.weight"], ["c.bias", "d.weight"]]
NAMES = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
META = {"format": "pt", "lorahub_recipe": "sha256:" + "ab" * 32}


def entries(names: list[str]) -> list[Entry]:
    return [Entry(n, DTYPES[TENSORS[n].dtype], TENSORS[n].shape) for n in names]


def write_all(files: OutputFiles, piece: int = 1000) -> None:
    """Every tensor, in pieces of ``piece`` bytes, as the merge's writer thread does."""
    for i, names in enumerate(SHARDS):
        writer = files.open(i)
        for n in names:
            data = memoryview(TENSORS[n].tobytes())
            for at in range(0, len(data), piece):
                writer.write(data[at : at + piece])
        writer.close()


def check_shards(folder: Path) -> None:
    for name, names in zip(NAMES, SHARDS, strict=True):
        got = load_file(str(folder / name))
        assert sorted(got) == sorted(names)
        for n in names:
            assert got[n].dtype == TENSORS[n].dtype and np.array_equal(got[n], TENSORS[n])


class SendfileLog:
    """Stands in for ``os.sendfile`` in the warming thread: records every range it asks for, over
    all shards in order, with what the writers had written at that moment."""

    def __init__(self, paths: list[Path], sizes: list[int], written: Callable[[], int]) -> None:
        self.starts = {p: sum(sizes[:i]) for i, p in enumerate(paths)}
        self.written = written
        self.calls: list[tuple[int, int, int]] = []  # (start, end, written then)
        self.real = os.sendfile

    def __call__(self, out_fd: int, in_fd: int, offset: int, count: int) -> int:
        start = self.starts[Path(os.readlink(f"/proc/self/fd/{in_fd}"))] + offset
        self.calls.append((start, start + count, self.written()))
        return self.real(out_fd, in_fd, offset, count)


def wait_until(check: Callable[[], bool]) -> None:
    """Wait for the warming thread to get somewhere (the bound only stops a broken test)."""
    pause = threading.Event()
    for _ in range(3000):
        if check():
            return
        pause.wait(0.01)
    raise AssertionError("the warming thread did not get there")


def test_shards_are_created_at_their_size_and_written_over_exactly(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, warm_ahead=0)
    try:
        sizes = [p.stat().st_size for p in files.paths]
        assert sizes == [shard_size(entries(s), META) for s in SHARDS] == files.sizes
        write_all(files)
    finally:
        files.close()
    assert [p.stat().st_size for p in files.paths] == sizes
    check_shards(tmp_path)
    # The same bytes as a shard written from nothing, without sizing it first.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    writer = ShardWriter(fresh / NAMES[0], entries(SHARDS[0]), META)
    for n in SHARDS[0]:
        writer.write(TENSORS[n].tobytes())
    writer.close()
    assert (fresh / NAMES[0]).read_bytes() == files.paths[0].read_bytes()
    assert files.written == sum(sizes)


def test_warming_stays_within_its_window_and_changes_no_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    window, chunk = 8192, 3000
    made: list[OutputFiles] = []
    sizes = [shard_size(entries(s), META) for s in SHARDS]
    log = SendfileLog([tmp_path / n for n in NAMES], sizes, lambda: made[0].written if made else 0)
    monkeypatch.setattr(os, "sendfile", log)
    monkeypatch.setattr(wr, "_WARM_CHUNK", chunk)
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, warm_ahead=window)
    made.append(files)
    try:
        # Nothing written yet: the thread warms the window's worth, and no more.
        wait_until(lambda: files.warmed >= window)
        assert files.warmed == window
        write_all(files, piece=2048)
    finally:
        files.close()
    check_shards(tmp_path)
    assert log.calls and all(0 < end - start <= chunk for start, end, _ in log.calls)
    assert all(end - written <= window for _, end, written in log.calls)
    # in order, and each page asked for once at most
    assert all(nxt[0] >= prev[1] for prev, nxt in zip(log.calls, log.calls[1:], strict=False))


def test_pages_warmed_before_any_write_change_nothing(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META)
    try:
        wait_until(lambda: files.warmed == sum(files.sizes))  # every page is a cached hole first
        write_all(files)
    finally:
        files.close()
    check_shards(tmp_path)


def test_a_warming_that_fails_only_costs_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> int:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "sendfile", broken)
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META)
    try:
        write_all(files)
    finally:
        files.close()
    check_shards(tmp_path)
    assert files.warmed == 0


def test_a_short_shard_is_refused_at_close(tmp_path: Path) -> None:
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, warm_ahead=0)
    try:
        writer = files.open(0)
        writer.write(TENSORS["a.weight"].tobytes())  # b.weight never comes
        with pytest.raises(ValueError, match="written size does not match the header"):
            writer.close()
    finally:
        files.close()


def test_a_presized_shard_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / NAMES[0]
    path.write_bytes(b"\0" * 100)
    with pytest.raises(ValueError, match="not created at the size"):
        ShardWriter(path, entries(SHARDS[0]), META, presized=True)


def test_output_files_never_replace_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / NAMES[1]).write_text("mine")
    with pytest.raises(FileExistsError):
        OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META)
    assert (tmp_path / NAMES[1]).read_text() == "mine"
