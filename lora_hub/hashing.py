"""sha256 of files and streams, with the hashing on a second thread where it overlaps I/O.

``hashlib`` releases the GIL on large buffers, as do file reads and writes, so a copy that hashes
as it goes runs at the speed of the slower of the two, not of their sum.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import BinaryIO, Protocol

from lora_hub.errors import InvalidArgumentError
from lora_hub.progress import Advance

CHUNK = 4 << 20  # 4 MiB: large enough that hashlib drops the GIL, small enough to stay in cache
PREFIX = "sha256:"


def format_digest(hexdigest: str) -> str:
    return PREFIX + hexdigest


def parse_digest(digest: str) -> str:
    """``sha256:<64 hex>`` -> the hex part; ``InvalidArgumentError`` (a ``ValueError``) for anything else."""
    hexpart = digest.removeprefix(PREFIX)
    if not digest.startswith(PREFIX) or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise InvalidArgumentError(f"not a sha256 digest: {digest[:80]!r}", hint="digests look like sha256:<64 hex>")
    return hexpart


def hash_file(path: str | os.PathLike[str], advance: Advance | None = None) -> tuple[str, int]:
    """Return (``sha256:<hex>``, size) of the file at ``path``."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            total += n
            if advance:
                advance(n)
    return format_digest(h.hexdigest()), total


def hash_bytes(data: bytes) -> str:
    return format_digest(hashlib.sha256(data).hexdigest())


class Sink(Protocol):
    """Where copied bytes go: an open binary file, or ``lora_hub._direct.DirectFile``."""

    def write(self, data: bytes | memoryview, /) -> object: ...


def copy_and_hash(
    src: BinaryIO, dst: Sink, advance: Advance | None = None, *, chunk: int = CHUNK, buffers: int = 4
) -> tuple[str, int]:
    """Copy ``src`` to ``dst`` until EOF, hashing on a second thread. Returns (digest, bytes)."""
    h = hashlib.sha256()
    free: queue.Queue[bytearray] = queue.Queue()
    for _ in range(buffers):
        free.put(bytearray(chunk))
    work: queue.Queue[tuple[bytearray, int] | None] = queue.Queue()
    failure: list[BaseException] = []

    def hasher() -> None:
        try:
            while (item := work.get()) is not None:
                buf, n = item
                h.update(memoryview(buf)[:n])
                free.put(buf)
        except BaseException as exc:  # pragma: no cover - hashlib does not fail on bytes
            failure.append(exc)
            free.put(bytearray(chunk))

    thread = threading.Thread(target=hasher, name="lorahub-hash", daemon=True)
    thread.start()
    total = 0
    try:
        while True:
            buf = free.get()
            n = src.readinto(buf)  # type: ignore[attr-defined]
            if not n:
                break
            # Both threads only read ``buf``; it goes back to ``free`` once hashed, and we write it
            # before taking the next buffer, so it is never refilled while in use.
            work.put((buf, n))
            dst.write(memoryview(buf)[:n])
            total += n
            if advance:
                advance(n)
    finally:
        work.put(None)
        thread.join()
    if failure:
        raise failure[0]
    return format_digest(h.hexdigest()), total
