"""Safetensors shards written as a stream, with the header computed up front.

Because every tensor's dtype and shape is known before any data is produced, the header (and so
every offset) is written first; the tensors then follow in order, as bytes from memory or as a
kernel-side copy (``copy_file_range``) out of a base shard, which never enters user space.
Shards are named as Hugging Face names them (``model-00001-of-00003.safetensors``; a single
shard is ``model.safetensors``), and ``model.safetensors.index.json`` lists where each tensor is.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_hub.formats.hf import INDEX_NAME, SINGLE_NAME
from lora_hub.formats.safetensors_file import DTYPE_SIZES


@dataclass(frozen=True)
class Entry:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZES[self.dtype]


def shard_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_NAME]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def split_into_shards(entries: Sequence[Entry], max_bytes: int) -> list[list[Entry]]:
    """Fill shards in order, opening a new one when the next tensor would overflow the current
    one (a tensor larger than ``max_bytes`` gets a shard of its own)."""
    shards: list[list[Entry]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards


def build_header(entries: Sequence[Entry], metadata: dict[str, str]) -> bytes:
    """The 8-byte length plus the JSON header, padded with spaces to a multiple of 8 (as the
    reference writer does, so that the data starts aligned)."""
    doc: dict[str, object] = {"__metadata__": metadata} if metadata else {}
    offset = 0
    for e in entries:
        doc[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(doc, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw


class ShardWriter:
    """Writes one shard: ``write``/``copy_range`` each tensor in header order, then ``close``."""

    def __init__(self, path: Path, entries: Sequence[Entry], metadata: dict[str, str], *, durable: bool = True) -> None:
        self.path = path
        self.durable = durable
        self.entries = list(entries)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        header = build_header(self.entries, metadata)
        self._write_all(header)
        self._expected = len(header) + sum(e.nbytes for e in self.entries)
        self._index = 0
        self._remaining = self.entries[0].nbytes if self.entries else 0

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    def _account(self, n: int) -> None:
        while n:
            if self._index >= len(self.entries):
                raise ValueError(f"{self.path.name}: more data than the header announces")
            step = min(n, self._remaining)
            self._remaining -= step
            n -= step
            if self._remaining == 0:
                self._index += 1
                self._remaining = self.entries[self._index].nbytes if self._index < len(self.entries) else 0

    def write(self, data: bytes | memoryview) -> None:
        """Append bytes of the current tensor (a tensor may come in several pieces)."""
        self._account(memoryview(data).nbytes)
        self._write_all(data)

    def copy_range(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append ``nbytes`` from ``src_fd`` at ``offset``, copied by the kernel."""
        self._account(nbytes)
        done = 0
        while done < nbytes:
            try:
                n = os.copy_file_range(src_fd, self._fd, nbytes - done, offset + done)
            except OSError:
                n = 0
            if n <= 0:  # not supported across these filesystems: a plain buffered copy
                self._write_all(os.pread(src_fd, min(8 << 20, nbytes - done), offset + done))
                n = min(8 << 20, nbytes - done)
            done += n

    def close(self) -> None:
        try:
            if self._index < len(self.entries) or os.fstat(self._fd).st_size != self._expected:
                raise ValueError(f"{self.path.name}: written size does not match the header")
            if self.durable:
                os.fsync(self._fd)
        finally:
            os.close(self._fd)

    def abort(self) -> None:
        os.close(self._fd)


def write_index(
    folder: Path, shards: Sequence[Sequence[Entry]], names: Sequence[str], metadata: dict[str, str]
) -> None:
    if len(names) == 1:
        return
    weight_map = {e.name: name for name, shard in zip(names, shards, strict=True) for e in shard}
    doc = {
        "metadata": {"total_size": sum(e.nbytes for s in shards for e in s), **metadata},
        "weight_map": dict(sorted(weight_map.items())),
    }
    (folder / INDEX_NAME).write_text(json.dumps(doc, indent=2) + "\n")
