"""A new file written from a stream of blocks past the page cache (``O_DIRECT``), optionally
hashed on the way, on a second thread.

Why: on these VMs every fresh page of page cache traps to the host first (freed memory goes back
to it), so writing a downloaded gigabyte through the page cache costs 1.5-3 s of CPU; written
straight to the device from a few reused, aligned buffers it costs almost none (the reason for
``lora_hub.merge.writer.DirectShardWriter`` too). The blocks are gathered into 8 MB page-aligned
stages; a thread writes each full stage with ``O_DIRECT`` and another hashes it (sha256
releases the GIL) while the caller fills the next one. The last partial block goes through the page
cache. A filesystem that refuses ``O_DIRECT`` (tmpfs) gets the same writes through the cache.
``close`` makes the file durable (``fsync``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Protocol

ALIGN = 4096  # O_DIRECT wants buffers, offsets and lengths aligned to the logical block size
STAGE = 8 << 20
STAGES = 4  # one being filled, the others being hashed and written
UPLOAD_STAGE = 2 << 20  # a received upload's stages: small, as a server holds one set per upload
UPLOAD_STAGES = 3


_Item = tuple[mmap.mmap, int, int, int] | None  # a stage, where its bytes start and end, their file offset; None: stop


_POOL: dict[int, list[mmap.mmap]] = {}  # stage buffers by size, kept for the next file
_POOL_LOCK = threading.Lock()
POOL_BYTES = 32 << 20  # at most this much kept, per size


def _take_buffer(size: int) -> mmap.mmap:
    """A page-aligned buffer of ``size`` bytes: one kept from an earlier file, else a new one.
    Kept, because a fresh mapping costs a page fault (a trap to the host here) per 4 KB on its
    first use, and a server makes a file per chunk of every upload."""
    with _POOL_LOCK:
        kept = _POOL.get(size)
        if kept:
            return kept.pop()
    return mmap.mmap(-1, size)


def _give_back(buf: mmap.mmap) -> None:
    size = len(buf)
    with _POOL_LOCK:
        kept = _POOL.setdefault(size, [])
        if (len(kept) + 1) * size <= POOL_BYTES:
            kept.append(buf)
            return
    buf.close()


class _Aborted(Exception):
    pass


class Hasher(Protocol):
    def update(self, data: memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class DirectFile:
    """``path`` created (truncated) and written by ``write`` calls; ``close`` writes what is
    left, fsyncs and, with ``sha256``, makes ``hexdigest()`` the hash of every byte written.
    ``abort`` (or leaving a ``with`` block by an exception) closes without the last writes; the
    file is then the caller's to remove. ``direct=False``: the same, through the page cache.
    Each full stage goes to a writer thread and, with ``sha256``, to a hashing thread, so that
    receiving, hashing and writing overlap.

    ``offset``: append to an existing file from there (cut to ``offset`` first), for a resumed
    upload; ``hasher``: a hash state to go on updating (such as the hash of the bytes before
    ``offset``) instead of a new sha256; ``durable=False``: no fsync at close (a staged upload,
    fsynced once, when it is adopted as a blob)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        sha256: bool = False,
        hasher: Hasher | None = None,
        offset: int = 0,
        direct: bool = True,
        stage: int = STAGE,
        stages: int = STAGES,
        durable: bool = True,
    ) -> None:
        if stage <= 0 or stage % ALIGN or stages < 2:
            raise ValueError(f"stages of a multiple of {ALIGN} bytes, at least two of them")
        self._stage_bytes = stage
        self._durable = durable
        self.path = Path(path)
        self._hash = hasher if hasher is not None else hashlib.sha256() if sha256 else None
        sha256 = self._hash is not None
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | (0 if offset else os.O_TRUNC), 0o644)
        if offset:
            try:
                os.ftruncate(self._fd, offset)
            except BaseException:
                os.close(self._fd)
                raise
        self._direct = -1
        if direct:
            with contextlib.suppress(OSError, AttributeError):
                self._direct = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        for _ in range(stages):
            self._free.put(_take_buffer(stage))
        self._users = 2 if sha256 else 1  # the threads a stage goes to before it is free again
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()
        self._failure: BaseException | None = None
        self._stage: mmap.mmap | None = self._free.get()
        # The first stage's bytes start at the offset's place in a block, so that memory and file
        # are aligned alike (O_DIRECT wants both) from the end of that block on.
        self._start = self._fill = offset % ALIGN
        self._handed = offset  # the file offset of the next stage handed to the threads
        self.size = 0  # bytes written so far
        self._closed = False
        self._queues: list[queue.Queue[_Item]] = []
        self._threads: list[threading.Thread] = []
        for name, work in [("write", self._write_at), *([("hash", self._hash_stage)] if sha256 else [])]:
            q: queue.Queue[_Item] = queue.Queue()
            thread = threading.Thread(target=self._serve, args=(q, work), name=f"lorahub-direct-{name}", daemon=True)
            self._queues.append(q)
            self._threads.append(thread)
            thread.start()

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._closed:
            raise ValueError(f"{self.path}: write to a closed DirectFile")
        if self._failure is not None:
            raise self._failure
        view = memoryview(data).cast("B")
        n = len(view)
        pos = 0
        while pos < n:
            stage = self._stage
            if stage is None:  # a hand-over was interrupted: the file is broken
                raise ValueError(f"{self.path}: a write was interrupted; abort the file")
            k = min(n - pos, self._stage_bytes - self._fill)
            stage[self._fill : self._fill + k] = view[pos : pos + k]
            self._fill += k
            pos += k
            if self._fill == self._stage_bytes:
                self._hand_over()
        self.size += n
        return n

    def _hand_over(self) -> None:
        stage, self._stage = self._stage, None  # not ours once handed (an interrupt below must not free it)
        assert stage is not None
        offset, self._handed = self._handed, self._handed + self._fill - self._start
        with self._lock:
            self._held[id(stage)] = self._users
        for q in self._queues:
            q.put((stage, self._start, self._fill, offset))
        self._start = self._fill = 0
        self._stage = self._free.get()
        if self._failure is not None:
            raise self._failure

    def _serve(self, q: queue.Queue[_Item], work: Callable[[memoryview, int], None]) -> None:
        while (item := q.get()) is not None:
            stage, start, end, offset = item
            try:
                if self._failure is None:
                    view = memoryview(stage)
                    try:
                        work(view[start:end], offset)
                    finally:
                        view.release()
            except BaseException as exc:  # raised to the caller at its next write or close
                # without its frames, which hold views of the stage (a stage with views cannot close)
                self._failure = exc.with_traceback(None)
            finally:
                with self._lock:
                    self._held[id(stage)] -= 1
                    free = self._held[id(stage)] == 0
                if free:
                    self._free.put(stage)

    def _hash_stage(self, view: memoryview, offset: int) -> None:
        assert self._hash is not None
        self._hash.update(view)

    def _write_at(self, view: memoryview, offset: int) -> None:
        # through the cache up to an aligned offset (a resumed upload), then direct, then the tail
        pos = min(len(view), -offset % ALIGN)
        head = 0
        while head < pos:
            head += os.pwrite(self._fd, view[head:pos], offset + head)
        aligned = pos + (len(view) - pos) - (len(view) - pos) % ALIGN
        while pos < aligned and self._direct >= 0:
            try:
                w = os.pwrite(self._direct, view[pos:aligned], offset + pos)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                w = 0
            if w <= 0 or w % ALIGN:  # refused, or short off the alignment: the cache from here on
                os.close(self._direct)
                self._direct = -1
                w = max(0, w)
            pos += w
        while pos < len(view):
            pos += os.pwrite(self._fd, view[pos:], offset + pos)

    def close(self) -> None:
        """Write the rest, wait for the threads, fsync; raises what any write raised."""
        if self._closed:
            return
        try:
            try:
                if self._fill > self._start:
                    self._hand_over()
            finally:
                self._stop()
            if self._failure is not None:
                raise self._failure
            if self._durable:
                os.fsync(self._fd)
        finally:  # however it ended: the descriptors closed, the buffers back
            self._release()

    def abort(self) -> None:
        if not self._closed:
            self._failure = self._failure or _Aborted()  # the threads skip what is still queued
            self._stop()
            self._release()

    def hexdigest(self) -> str:
        if self._hash is None or not self._closed:
            raise RuntimeError("hexdigest() needs sha256=True and a closed file")
        return self._hash.hexdigest()

    def _stop(self) -> None:
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()

    def _release(self) -> None:
        self._closed = True
        for fd in (self._direct, self._fd):
            if fd >= 0:
                os.close(fd)
        self._direct = self._fd = -1
        if self._stage is not None:
            _give_back(self._stage)
            self._stage = None
        while not self._free.empty():
            _give_back(self._free.get())

    def __enter__(self) -> DirectFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
