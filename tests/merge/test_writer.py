"""The shard writers and ``OutputFiles`` (``lora_hub.merge.writer``): the bytes on disk against the
reference safetensors parser, written past the page cache (``O_DIRECT``) or through it, and the
page-cache warming that runs ahead of buffered writes."""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import lora_hub.merge.writer as wr
from lora_hub.errors import MergeError
from lora_hub.merge.writer import DIRECT_ALIGN, Entry, OutputFiles, ShardWriter, shard_size

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


def write_all(files: OutputFiles, piece: int = 1000, source: Path | None = None) -> None:
    """Every tensor, in pieces of ``piece`` bytes, as the merge's writer thread does; with
    ``source`` (every tensor's bytes, one after the other), the last tensor of each shard is
    copied from there, as an untouched base tensor is."""
    offsets, at = {}, 0
    for n, array in TENSORS.items():
        offsets[n] = at
        at += array.nbytes
    for i, names in enumerate(SHARDS):
        writer = files.open(i)
        for n in names:
            if source is not None and n == names[-1]:
                fd = os.open(source, os.O_RDONLY)
                try:
                    writer.copy_range(fd, offsets[n], TENSORS[n].nbytes)
                finally:
                    os.close(fd)
                continue
            data = memoryview(TENSORS[n].tobytes())
            for at in range(0, len(data), piece):
                writer.write(data[at : at + piece])
        writer.close()


def source_file(tmp_path: Path) -> Path:
    path = tmp_path / "source.bin"
    path.write_bytes(b"".join(a.tobytes() for a in TENSORS.values()))
    return path


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


@pytest.fixture(params=[True, False], ids=["direct", "buffered"])
def direct(request: pytest.FixtureRequest) -> bool:
    return request.param


@pytest.fixture
def small_stage(monkeypatch: pytest.MonkeyPatch) -> int:
    """A direct writer's stage of two blocks, so that these small shards fill it many times over."""
    monkeypatch.setattr(wr, "DIRECT_STAGE", 2 * DIRECT_ALIGN)
    return 2 * DIRECT_ALIGN


@pytest.mark.parametrize("piece", [1000, 4096, 50_000])
def test_shards_hold_exactly_the_bytes_written(tmp_path: Path, direct: bool, small_stage: int, piece: int) -> None:
    out = tmp_path / "out"
    out.mkdir()
    files = OutputFiles(out, NAMES, [entries(s) for s in SHARDS], META, direct=direct)
    try:
        assert files.direct == direct  # /tmp here is ext4, which takes O_DIRECT
        assert [p.stat().st_size for p in files.paths] == ([0, 0] if direct else files.sizes)
        write_all(files, piece=piece, source=source_file(tmp_path))
    finally:
        files.close()
    assert [p.stat().st_size for p in files.paths] == files.sizes == [shard_size(entries(s), META) for s in SHARDS]
    assert files.written == sum(files.sizes)
    check_shards(out)
    # The same bytes as a shard written from nothing by the plain writer.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    writer = ShardWriter(fresh / NAMES[0], entries(SHARDS[0]), META)
    for n in SHARDS[0]:
        writer.write(TENSORS[n].tobytes())
    writer.close()
    assert (fresh / NAMES[0]).read_bytes() == files.paths[0].read_bytes()


def test_direct_writes_skip_the_page_cache_but_for_the_last_partial_block(
    tmp_path: Path, small_stage: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    by_mode = {True: 0, False: 0}
    real = os.pwrite

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        direct = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        assert not direct or (offset % DIRECT_ALIGN == 0 and len(data) % DIRECT_ALIGN == 0)
        n = real(fd, data, offset)
        by_mode[direct] += n
        return n

    monkeypatch.setattr(os, "pwrite", pwrite)
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META)
    try:
        write_all(files)
    finally:
        files.close()
    check_shards(tmp_path)
    tails = [size % DIRECT_ALIGN for size in files.sizes]
    assert by_mode == {True: sum(files.sizes) - sum(tails), False: sum(tails)}


def test_a_refused_direct_write_goes_through_the_page_cache(
    tmp_path: Path, small_stage: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    out = tmp_path / "out"
    out.mkdir()
    files = OutputFiles(out, NAMES, [entries(s) for s in SHARDS], META)
    try:
        assert files.direct
        write_all(files, source=source_file(tmp_path))
    finally:
        files.close()
    check_shards(out)
    assert refused == [0, 0]  # once per shard, then no more


def test_a_filesystem_without_direct_io_gets_the_warmed_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wr, "_direct_io_works", lambda path: False)
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META)
    try:
        assert not files.direct and [p.stat().st_size for p in files.paths] == files.sizes
        write_all(files)
    finally:
        files.close()
    check_shards(tmp_path)


def test_a_source_shorter_than_its_tensor_is_refused(tmp_path: Path, direct: bool) -> None:
    short = tmp_path / "short.bin"
    short.write_bytes(b"\1" * 100)
    out = tmp_path / "out"
    out.mkdir()
    files = OutputFiles(out, NAMES, [entries(s) for s in SHARDS], META, direct=direct)
    writer = files.open(0)
    fd = os.open(short, os.O_RDONLY)
    try:
        with pytest.raises(MergeError, match=r"ended .* early|does not match"):
            writer.copy_range(fd, 0, TENSORS["a.weight"].nbytes)
            writer.write(TENSORS["b.weight"].tobytes())
            writer.close()
    finally:
        os.close(fd)
        writer.abort()
        files.close()


def test_warming_stays_within_its_window_and_changes_no_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    window, chunk = 8192, 3000
    made: list[OutputFiles] = []
    sizes = [shard_size(entries(s), META) for s in SHARDS]
    log = SendfileLog([tmp_path / n for n in NAMES], sizes, lambda: made[0].written if made else 0)
    monkeypatch.setattr(os, "sendfile", log)
    monkeypatch.setattr(wr, "_WARM_CHUNK", chunk)
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, warm_ahead=window, direct=False)
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
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, direct=False)
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
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, direct=False)
    try:
        write_all(files)
    finally:
        files.close()
    check_shards(tmp_path)
    assert files.warmed == 0


def test_a_short_shard_is_refused_at_close(tmp_path: Path, direct: bool) -> None:
    files = OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META, warm_ahead=0, direct=direct)
    try:
        writer = files.open(0)
        writer.write(TENSORS["a.weight"].tobytes())  # b.weight never comes
        with pytest.raises(MergeError, match="written size does not match the header"):
            writer.close()
    finally:
        files.close()


def test_a_presized_shard_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / NAMES[0]
    path.write_bytes(b"\0" * 100)
    with pytest.raises(MergeError, match="not as it was created for this shard"):
        ShardWriter(path, entries(SHARDS[0]), META, presized=True)


def test_output_files_never_replace_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / NAMES[1]).write_text("mine")
    with pytest.raises(FileExistsError):
        OutputFiles(tmp_path, NAMES, [entries(s) for s in SHARDS], META)
    assert (tmp_path / NAMES[1]).read_text() == "mine"
