"""lora_hub._direct.DirectFile: the bytes written, in order, whatever the block sizes; the
sha256 of them (against hashlib over the same bytes); past the page cache or through it; a
failed write raised to the caller; abort leaves the file to the caller."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from lora_hub import _direct
from lora_hub._direct import STAGE, DirectFile


def _blocks(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        k = rng.choice([1, 7, 4096, 65536, 1 << 20, STAGE, STAGE + 3])
        out.append(data[pos : pos + k])
        pos += k
    return out


@pytest.mark.parametrize("direct", [True, False])
@pytest.mark.parametrize("size", [0, 1, 4095, 4096, STAGE, 3 * STAGE + 12345])
def test_the_file_holds_every_byte_and_its_digest(tmp_path: Path, size: int, direct: bool) -> None:
    data = random.Random(size).randbytes(size)
    target = tmp_path / "f"
    with DirectFile(target, sha256=True, direct=direct) as fh:
        for block in _blocks(data, size):
            fh.write(memoryview(block))
    assert target.read_bytes() == data
    assert fh.hexdigest() == hashlib.sha256(data).hexdigest() and fh.size == size


def test_without_sha256_there_is_no_digest(tmp_path: Path) -> None:
    with DirectFile(tmp_path / "f") as fh:
        fh.write(b"abc")
    assert (tmp_path / "f").read_bytes() == b"abc"
    with pytest.raises(RuntimeError, match="sha256=True"):
        fh.hexdigest()


def test_a_failed_write_reaches_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_direct.os, "pwrite", full)
    fh = DirectFile(tmp_path / "f")
    with pytest.raises(OSError, match="No space left"):
        try:
            fh.write(bytes(STAGE))  # handed over here; the failure surfaces at a later write or close
            fh.write(bytes(STAGE))
            fh.close()
        finally:
            fh.abort()  # nothing once closed
    assert fh._closed


def test_abort_closes_without_finishing(tmp_path: Path) -> None:
    target = tmp_path / "f"
    with pytest.raises(KeyError), DirectFile(target) as fh:
        fh.write(b"x" * 100)
        raise KeyError("stop")
    assert target.exists() and target.stat().st_size == 0  # the partial stage was never written
    assert os.listdir(tmp_path) == ["f"]


@pytest.mark.parametrize("offset", [1, 4095, 4096, STAGE + 17])
def test_appending_from_an_offset_goes_on_with_the_hash(tmp_path: Path, offset: int) -> None:
    """A resumed upload: the file cut to ``offset`` and appended to, the hash state of the bytes
    before it updated with the rest."""
    data = random.Random(offset).randbytes(offset + 2 * STAGE + 999)
    target = tmp_path / "f"
    target.write_bytes(data[:offset] + b"junk past the offset")
    state = hashlib.sha256(data[:offset])
    with DirectFile(target, offset=offset, hasher=state, stage=1 << 20) as fh:
        for block in _blocks(data[offset:], offset):
            fh.write(block)
    assert target.read_bytes() == data
    assert fh.hexdigest() == state.hexdigest() == hashlib.sha256(data).hexdigest()
    assert fh.size == len(data) - offset


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_failed_write_still_closes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that failed on the writer thread, with a partial stage still to hand over at
    close: close raises the failure and still closes both descriptors."""
    before = _open_fds()

    def broken(fd: int, data: memoryview, offset: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(_direct.os, "pwrite", broken)
    fh = DirectFile(tmp_path / "f", stage=4096, stages=2)
    with pytest.raises(OSError, match="Input/output"):
        fh.write(b"a" * 4106)  # one stage handed over, 10 bytes left in the next
        fh.close()
    fh.abort()  # nothing once closed; closes it if the write itself raised
    assert fh._closed and _open_fds() == before
    with pytest.raises(ValueError, match="closed"):
        fh.write(b"x")  # its buffers may be another file's by now


def test_a_resume_at_an_unaligned_offset_stays_direct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Appending from an offset inside a block: the bytes up to the block's end go through the
    cache, the rest past it (memory and file aligned alike), not all through the cache."""
    probe = DirectFile(tmp_path / "probe")
    direct = probe._direct >= 0
    probe.close()
    if not direct:
        pytest.skip(f"{tmp_path}'s filesystem refuses O_DIRECT: nothing to check")
    data = random.Random(5).randbytes(1000 + 3 * STAGE)
    target = tmp_path / "f"
    target.write_bytes(data[:1000])
    written: dict[int, int] = {}
    real = os.pwrite

    def spy(fd: int, chunk: memoryview, offset: int) -> int:
        n = real(fd, chunk, offset)
        written[fd] = written.get(fd, 0) + n
        return n

    monkeypatch.setattr(_direct.os, "pwrite", spy)
    fh = DirectFile(target, offset=1000)
    direct_fd = fh._direct
    fh.write(data[1000:])
    fh.close()
    assert target.read_bytes() == data
    assert written.get(direct_fd, 0) >= 2 * STAGE  # O_DIRECT was not given up
