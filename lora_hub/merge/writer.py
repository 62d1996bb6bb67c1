"""Safetensors shards written as a stream, with the header computed up front.

Because every tensor's dtype and shape is known before any data is produced, the header (and so
every offset) is written first; the tensors then follow in order, as bytes from memory or copied
out of a base shard (by the kernel, ``copy_file_range``, or into a direct writer's buffer).
Shards are named as Hugging Face names them (``model-00001-of-00003.safetensors``; a single
shard is ``model.safetensors``), and ``model.safetensors.index.json`` lists where each tensor is.

``OutputFiles`` creates a merge's shards at their final size before the first tensor is ready,
and brings their pages into the page cache ahead of the writes (see there for why).
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import mmap
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lora_hub.errors import MergeError
from lora_hub.formats.dtypes import ITEMSIZE as DTYPE_SIZES
from lora_hub.formats.hf import INDEX_NAME, SINGLE_NAME


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


def shard_size(entries: Sequence[Entry], metadata: dict[str, str]) -> int:
    """The size in bytes of the shard holding ``entries``, header included."""
    return len(build_header(entries, metadata)) + sum(e.nbytes for e in entries)


class ShardWriter:
    """Writes one shard: ``write``/``copy_range`` each tensor in header order, then ``close``.

    The file is created, or with ``presized`` it already exists at its final size (holes, see
    ``OutputFiles``) and is written over from the start. ``on_write(n)`` hears of every ``n``
    bytes written, from the thread that writes."""

    def __init__(
        self,
        path: Path,
        entries: Sequence[Entry],
        metadata: dict[str, str],
        *,
        durable: bool = True,
        presized: bool = False,
        existing: bool = False,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.durable = durable
        self.entries = list(entries)
        self._on_write = on_write
        self._written = 0
        header = build_header(self.entries, metadata)
        self._expected = len(header) + sum(e.nbytes for e in self.entries)
        self._fd = os.open(path, os.O_WRONLY if presized or existing else os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        if (presized or existing) and os.fstat(self._fd).st_size != (self._expected if presized else 0):
            os.close(self._fd)
            raise MergeError(f"{path.name}: the file is not as it was created for this shard")
        self._index = 0
        self._remaining = self.entries[0].nbytes if self.entries else 0
        self._write_all(header)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
            self._wrote(n)

    def _wrote(self, n: int) -> None:
        self._written += n
        if self._on_write is not None:
            self._on_write(n)

    def _account(self, n: int) -> None:
        while n:
            if self._index >= len(self.entries):
                raise MergeError(f"{self.path.name}: more data than the header announces")
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
                n = min(8 << 20, nbytes - done)
                self._write_all(os.pread(src_fd, n, offset + done))
            else:
                self._wrote(n)
            done += n

    def close(self) -> None:
        try:
            if (
                self._index < len(self.entries)
                or self._written != self._expected
                or os.fstat(self._fd).st_size != self._expected
            ):
                raise MergeError(f"{self.path.name}: written size does not match the header")
            if self.durable:
                os.fsync(self._fd)
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the file, written or not (again: nothing; the descriptor may be another's now)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


DIRECT_ALIGN = 4096  # O_DIRECT wants buffers, offsets and lengths aligned to the logical block size
DIRECT_STAGE = 8 << 20


class DirectShardWriter(ShardWriter):
    """A ``ShardWriter`` whose bytes bypass the page cache (``O_DIRECT``): they are gathered in an
    aligned buffer of 8 MB and written from it straight to the device; the last partial block
    goes through the page cache. The file must exist and be empty.

    Why: writing through the page cache allocates a page per 4 KB, and where freed memory goes
    back to the host (a VM with free page reporting, as here) every fresh page traps to the host
    first: 2-3 s of CPU per GB written. A direct write costs no page and almost no CPU, so the
    merge runs at the device's speed (1.4-1.7 GB/s here) and never fills memory with a model it
    will not read again. A filesystem that refuses ``O_DIRECT`` gets buffered writes."""

    def __init__(
        self,
        path: Path,
        entries: Sequence[Entry],
        metadata: dict[str, str],
        *,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self._stage = mmap.mmap(-1, DIRECT_STAGE)  # page-aligned
        self._view = memoryview(self._stage)
        self._fill = 0  # bytes in the stage
        self._flushed = 0  # file offset of the stage's first byte
        self._direct = -1
        super().__init__(path, entries, metadata, durable=False, existing=True, on_write=on_write)
        with contextlib.suppress(OSError, AttributeError):
            self._direct = os.open(path, os.O_WRONLY | os.O_DIRECT)

    def _write_all(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        while view:
            k = min(len(view), DIRECT_STAGE - self._fill)
            self._view[self._fill : self._fill + k] = view[:k]
            self._fill += k
            view = view[k:]
            if self._fill == DIRECT_STAGE:
                self._flush(DIRECT_STAGE)
            self._wrote(k)

    def copy_range(self, src_fd: int, offset: int, nbytes: int) -> None:
        """Append ``nbytes`` from ``src_fd`` at ``offset``, read straight into the stage."""
        self._account(nbytes)
        done = 0
        while done < nbytes:
            k = min(nbytes - done, DIRECT_STAGE - self._fill)
            got = os.preadv(src_fd, [self._view[self._fill : self._fill + k]], offset + done)
            if got <= 0:
                raise MergeError(f"{self.path.name}: the source ended {nbytes - done} bytes early")
            self._fill += got
            done += got
            if self._fill == DIRECT_STAGE:
                self._flush(DIRECT_STAGE)
            self._wrote(got)

    def _flush(self, n: int) -> None:
        """Write the stage's first ``n`` bytes (a multiple of ``DIRECT_ALIGN``) at ``_flushed``."""
        pos = 0
        while pos < n:
            if self._direct >= 0:
                try:
                    w = os.pwrite(self._direct, self._view[pos:n], self._flushed + pos)
                except OSError as exc:
                    if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                        raise
                    w = 0
                if w <= 0 or w % DIRECT_ALIGN:  # refused, or a short write off the alignment
                    os.close(self._direct)
                    self._direct = -1
                    pos += max(0, w)
                    continue
            else:
                w = os.pwrite(self._fd, self._view[pos:n], self._flushed + pos)
            pos += w
        self._flushed += n
        self._fill = 0

    def close(self) -> None:
        try:
            fill = self._fill
            aligned = fill - fill % DIRECT_ALIGN
            if aligned:
                self._flush(aligned)
            pos = aligned
            while pos < fill:  # the last partial block: through the page cache
                pos += os.pwrite(self._fd, self._view[pos:fill], self._flushed + pos - aligned)
        except BaseException:
            self.abort()
            raise
        super().close()

    def abort(self) -> None:
        direct, self._direct = self._direct, -1
        if direct >= 0:
            os.close(direct)
        self._view.release()
        self._stage.close()
        super().abort()


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


WARM_AHEAD_BYTES = 4 << 30


def _direct_io_works(path: Path) -> bool:
    """Whether ``path``'s filesystem takes ``O_DIRECT`` (tmpfs, for one, refuses it)."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_DIRECT))
    except (OSError, AttributeError):
        return False
    return True


_WARM_CHUNK = 32 << 20


class OutputFiles:
    """A merge's output shards, created before the first tensor is ready (the merge opens them
    before it loads torch), and how their bytes reach the disk. ``open(i)`` gives the writer of
    shard ``i``; ``close()`` stops the helper thread, if any (always call it).

    ``direct`` (the default; ``LORAHUB_DIRECT_IO=0`` turns it off), where the filesystem takes
    ``O_DIRECT``: every shard is written by a ``DirectShardWriter``, past the page cache.

    Otherwise the files are created at their final size, and a thread brings their pages into the
    page cache ahead of the writes. Why: where freed memory goes back to the host (a VM with free
    page reporting, such as the one the benchmarks run on), the first touch of every page of
    fresh page cache traps to the host. Writing 2.2 GB into a new file took 4.4 to 6.9 s there,
    and 0.7 to 1.8 s into pages already cached. The files are sparse, so their pages are holes:
    reading them caches zeroed, clean pages and changes nothing on disk, and a write that comes
    first just finds its page written. The thread reads through ``sendfile`` into ``/dev/null``
    (no copy, and the GIL released), starting while ``import torch`` keeps one core busy and the
    other idle. It stays at most ``warm_ahead`` bytes (capped at a quarter of the free memory)
    ahead of what the writers have written, so a model larger than memory does not evict what the
    merge still needs. It only saves time: where it fails, the writes allocate their pages."""

    def __init__(
        self,
        folder: Path,
        names: Sequence[str],
        shards: Sequence[Sequence[Entry]],
        metadata: dict[str, str],
        *,
        warm_ahead: int = WARM_AHEAD_BYTES,
        direct: bool = True,
    ) -> None:
        self.paths = [folder / n for n in names]
        self.shards = [list(s) for s in shards]
        self.metadata = dict(metadata)
        self.sizes = [shard_size(s, self.metadata) for s in self.shards]
        self.written = 0  # bytes written so far, over all shards in order (by the writer thread)
        self.warmed = 0  # bytes brought into the page cache so far, likewise
        for path in self.paths:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        self.direct = direct and _direct_io_works(self.paths[0])
        if not self.direct:
            for path, size in zip(self.paths, self.sizes, strict=True):
                os.truncate(path, size)
        with contextlib.suppress(OSError, ValueError):
            warm_ahead = min(warm_ahead, os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
        self._window = warm_ahead
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if not self.direct and warm_ahead > 0 and hasattr(os, "sendfile"):
            self._thread = threading.Thread(target=self._warm, name="lorahub-warmer", daemon=True)
            self._thread.start()

    def open(self, i: int) -> ShardWriter:
        if self.direct:
            return DirectShardWriter(self.paths[i], self.shards[i], self.metadata, on_write=self._wrote)
        return ShardWriter(
            self.paths[i], self.shards[i], self.metadata, durable=False, presized=True, on_write=self._wrote
        )

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _wrote(self, n: int) -> None:
        self.written += n

    def _warm(self) -> None:
        with contextlib.suppress(OSError):
            sink = os.open(os.devnull, os.O_WRONLY)
            try:
                start = 0  # where the current file begins, counted over all shards
                for path, size in zip(self.paths, self.sizes, strict=True):
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        pos = max(0, self.written - start)  # what is written needs no warming
                        while pos < size and not self._stop.is_set():
                            room = self._window - (start + pos - self.written)
                            if room <= 0:
                                self._stop.wait(0.02)  # the writers catch up in milliseconds
                                continue
                            sent = os.sendfile(sink, fd, pos, min(_WARM_CHUNK, size - pos, room))
                            if sent <= 0:
                                return
                            pos += sent
                            self.warmed = start + pos
                    finally:
                        os.close(fd)
                    if self._stop.is_set():
                        return
                    start += size
            finally:
                os.close(sink)
