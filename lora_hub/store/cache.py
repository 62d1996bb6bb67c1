"""A local, bounded, content-addressed cache of a remote store's blobs, for workers.

A merge memory-maps its inputs, so a worker reading from S3 needs local files. ``BlobCache``
keeps them under one folder (``LORAHUB_CACHE_DIR``), at most ``LORAHUB_CACHE_MAX_BYTES`` in all,
evicting the least recently used blobs first::

    <root>/sha256/<2 hex>/<64 hex>          the blob (read-only), named by its digest
    <root>/sha256/<2 hex>/<64 hex>.used     touched on every use: its mtime orders the LRU
    <root>/sha256/<2 hex>/<64 hex>.lock     flock: shared while a reader uses the blob,
                                            exclusive while one process fetches it
    <root>/tmp/<64 hex>.<size>.<pid>-<rnd>  a fetch in progress (its size counts as taken)

- **Filled by ranged reads** (``Source.read_range``, e.g. S3 ``GetObject`` with ``Range``), hashed
  as they arrive; the file is renamed into place only when its bytes match the digest, so no
  reader ever sees a partial or wrong blob.
- **Concurrent workers** (threads or processes) that want the same missing blob fetch it once:
  the fetch holds the blob's lock exclusively, and the others find it there when they get it.
- **Checked**: a blob is re-hashed when this process has not checked it yet, or when its file
  changed since (size, mtime, ctime or inode); a damaged one is removed and fetched again.
- **Bounded**: before a fetch, the least recently used blobs that no one is using (their lock is
  free) are removed until the new one fits. A blob larger than the bound, or one that does not
  fit beside the blobs in use, is refused with the setting to raise.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from lora_hub._fs import fsync_dir, pid_alive
from lora_hub.errors import IntegrityError, StoreError
from lora_hub.hashing import format_digest, parse_digest
from lora_hub.store.base import BlobStore

RANGE_BYTES = 16 << 20  # one ranged GET: large enough to keep a connection busy, small to retry
READ_CHUNK = 1 << 20


class Source(Protocol):
    """Where the cache fetches blobs from."""

    def size(self, digest: str) -> int | None:
        """The blob's size, or None when the store does not hold it."""
        ...

    def read_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        """The bytes ``[start, end)`` of the blob."""
        ...


class S3Source:
    """Ranged ``GetObject`` reads from an ``S3Store``."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def size(self, digest: str) -> int | None:
        size = self.store._size(digest)
        return None if size is None else int(size)

    def read_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        try:
            got = self.store.client.get_object(
                Bucket=self.store.bucket, Key=self.store._key(digest), Range=f"bytes={start}-{end - 1}"
            )
        except Exception as exc:
            raise self.store._error("read a blob", exc) from exc
        body = got["Body"]
        with contextlib.closing(body):
            yield from body.iter_chunks(READ_CHUNK)


@dataclass(frozen=True)
class _Entry:
    digest: str
    path: Path
    size: int
    used_ns: int


_checked: dict[Path, tuple[int, int, int, int]] = {}  # blob file -> its stat when this process hashed it
_checked_lock = threading.Lock()
_last_stamp = 0
_stamp_lock = threading.Lock()


def _stamp() -> int:
    """A use time, strictly increasing within the process (two uses in one clock tick keep their order)."""
    global _last_stamp
    with _stamp_lock:
        _last_stamp = max(time.time_ns(), _last_stamp + 1_000)
        return _last_stamp


def _stat_key(path: Path) -> tuple[int, int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(READ_CHUNK):
            h.update(chunk)
    return format_digest(h.hexdigest())


class BlobCache:
    """The cache (see the module docstring). ``open(digest)`` gives a local file holding the blob,
    kept from eviction until the context exits."""

    def __init__(self, root: Path, max_bytes: int, source: Source, *, label: str = "the store") -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.source = source
        self.label = label
        self.fetches = 0  # blobs this instance fetched (for tests and logs)

    # --- layout ------------------------------------------------------------------------------------
    def path(self, digest: str) -> Path:
        hexd = parse_digest(digest)
        return self.root / "sha256" / hexd[:2] / hexd

    def _side(self, digest: str, suffix: str) -> Path:
        p = self.path(digest)
        return p.with_name(p.name + suffix)

    def entries(self) -> list[_Entry]:
        """The cached blobs, least recently used first."""
        out = []
        for p in (self.root / "sha256").glob("??/*"):
            if len(p.name) != 64 or not p.is_file():
                continue
            used = self._side_of(p, ".used")
            try:
                size = p.stat().st_size
                used_ns = used.stat().st_mtime_ns if used.exists() else p.stat().st_mtime_ns
            except FileNotFoundError:  # evicted meanwhile
                continue
            out.append(_Entry(format_digest(p.name), p, size, used_ns))
        return sorted(out, key=lambda e: (e.used_ns, e.digest))

    @staticmethod
    def _side_of(p: Path, suffix: str) -> Path:
        return p.with_name(p.name + suffix)

    def used_bytes(self) -> int:
        """Bytes of the cached blobs and of the fetches in progress."""
        return sum(e.size for e in self.entries()) + sum(size for _, size, _ in self._fetching())

    def _fetching(self) -> list[tuple[Path, int, int]]:
        out = []
        for p in (self.root / "tmp").glob("*.part"):
            parts = p.name.split(".")
            with contextlib.suppress(ValueError, IndexError):
                out.append((p, int(parts[1]), int(parts[2].split("-")[0])))
        return out

    # --- use -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open(self, digest: str, *, verify: bool = False) -> Iterator[Path]:
        """A local file holding blob ``digest``, checked against it (see the module docstring;
        ``verify`` re-hashes it even if this process checked it already). The file stays (is not
        evicted) until the context exits. Raises ``IntegrityError`` when the store lacks the blob
        or holds other bytes, ``StoreError`` when it cannot fit in the cache."""
        path = self.path(digest)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(self._side(digest, ".lock"), "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_SH)
            try:
                if not self._sound(digest, path, verify):
                    fcntl.flock(lock, fcntl.LOCK_UN)
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    # another worker may have fetched it while this one waited
                    if not self._sound(digest, path, verify=False):
                        self._fetch(digest, path)
                    fcntl.flock(lock, fcntl.LOCK_SH)
                self._touch(digest)
                yield path
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _sound(self, digest: str, path: Path, verify: bool) -> bool:
        """Whether ``path`` holds the blob; a damaged file is removed."""
        try:
            key = _stat_key(path)
        except FileNotFoundError:
            return False
        with _checked_lock:
            known = _checked.get(path) == key
        if known and not verify:
            return True
        if _hash(path) == digest:
            with _checked_lock:
                _checked[path] = key
            return True
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return False

    def _touch(self, digest: str) -> None:
        used = self._side(digest, ".used")
        used.touch()
        ns = _stamp()
        os.utime(used, ns=(ns, ns))

    def _fetch(self, digest: str, path: Path) -> None:
        """Fetch the blob into ``path`` (the caller holds its lock exclusively)."""
        size = self.source.size(digest)
        if size is None:
            raise IntegrityError(
                f"blob {digest} is missing from {self.label}",
                hint="push the adapter or base again to restore it; `lorahub verify --all` checks every blob",
            )
        tmp_dir = self.root / "tmp"
        tmp_dir.mkdir(parents=True, exist_ok=True)
        tmp = tmp_dir / f"{path.name}.{size}.{os.getpid()}-{secrets.token_hex(4)}.part"
        with self._global_lock():
            self._make_room(size, keep=digest)
            tmp.touch()  # from now on its size counts as taken
        try:
            h = hashlib.sha256()
            got = 0
            with open(tmp, "wb") as fh:
                for start in range(0, size, RANGE_BYTES):
                    for chunk in self.source.read_range(digest, start, min(start + RANGE_BYTES, size)):
                        h.update(chunk)
                        fh.write(chunk)
                        got += len(chunk)
                fh.flush()
                os.fsync(fh.fileno())
            actual = format_digest(h.hexdigest())
            if actual != digest or got != size:
                raise IntegrityError(
                    f"blob {digest} is corrupted in {self.label} (its {got} bytes hash to {actual})",
                    hint="push the adapter or base again (the push rewrites damaged blobs)",
                )
            os.chmod(tmp, 0o444)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            self.fetches += 1
            with _checked_lock:
                _checked[path] = _stat_key(path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    @contextlib.contextmanager
    def _global_lock(self) -> Iterator[None]:
        """One process at a time decides what to evict (so that two fetches cannot both count on
        the same free bytes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _make_room(self, size: int, *, keep: str) -> None:
        """Evict unused blobs, least recently used first, until ``size`` more bytes fit."""
        if size > self.max_bytes:
            raise StoreError(
                f"blob {keep} ({size:,} bytes) is larger than the cache ({self.max_bytes:,} bytes, {self.root})",
                hint="raise LORAHUB_CACHE_MAX_BYTES above the largest file of the bases the workers merge",
            )
        for tmp, _, pid in self._fetching():  # fetches of killed workers
            if not pid_alive(pid):
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        entries = self.entries()
        used = sum(e.size for e in entries) + sum(s for _, s, _ in self._fetching())
        for e in entries:
            if used + size <= self.max_bytes:
                return
            if e.digest != keep and self._evict(e):
                used -= e.size
        if used + size > self.max_bytes:
            raise StoreError(
                f"the cache ({self.root}) cannot hold blob {keep} ({size:,} bytes) beside the "
                f"{used:,} bytes in use (LORAHUB_CACHE_MAX_BYTES={self.max_bytes:,})",
                hint="raise LORAHUB_CACHE_MAX_BYTES, or run fewer jobs at once on this machine",
            )

    def _evict(self, e: _Entry) -> bool:
        """Remove ``e`` unless someone uses it (its lock is taken); whether it was removed."""
        with open(self._side_of(e.path, ".lock"), "a+b") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            try:
                with contextlib.suppress(FileNotFoundError):
                    e.path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    self._side_of(e.path, ".used").unlink()
                with _checked_lock:
                    _checked.pop(e.path, None)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class CachedStore:
    """A remote ``BlobStore`` whose ``open_local`` goes through a ``BlobCache`` (bounded, LRU)
    instead of the store's own copy. Everything else is the store's own, by delegation, so that
    the store's interface can grow without this class following it."""

    def __init__(self, inner: BlobStore, cache: BlobCache) -> None:
        self.inner = inner
        self.cache = cache

    def __repr__(self) -> str:
        return f"{self.inner!r} (cached in {self.cache.root})"

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def local_root(self) -> Path | None:
        return self.inner.local_root

    def open_local(self, digest: str, *, verify: bool = False) -> contextlib.AbstractContextManager[Path]:
        return self.cache.open(digest, verify=verify)


def cached(store: BlobStore, root: Path, max_bytes: int) -> BlobStore:
    """``store`` itself when its blobs are local files; an S3 store behind a ``BlobCache``."""
    if store.local_root is not None:
        return store
    from lora_hub.store.s3 import S3Store

    if not isinstance(store, S3Store):
        return store
    cache = BlobCache(root, max_bytes, S3Source(store), label=f"the store {store.url}")
    return cast(BlobStore, CachedStore(store, cache))
