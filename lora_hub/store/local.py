"""Blobs in a local folder::

    <root>/sha256/<2 hex>/<64 hex>     read-only blobs
    <root>/tmp/<pid>-<random>.part     blobs being written, each held with an exclusive flock
    <root>/.gc.lock                    shared by writers, exclusive for gc

A blob is written to a unique temporary file while its digest is computed, fsynced, checked,
then hard-linked into place (``link`` fails rather than overwrite) and the folder fsynced. A
temporary file whose flock can be taken belongs to a dead process; ``gc`` removes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lora_hub import _faults
from lora_hub._fs import fsync_dir
from lora_hub.errors import IntegrityError, StoreError
from lora_hub.hashing import Advance, copy_and_hash, format_digest, parse_digest


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    def _ensure(self) -> None:
        try:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the blob store at {self.root}: {exc.strerror}") from exc

    def _path(self, digest: str) -> Path:
        hexd = parse_digest(digest)
        return self._blobs / hexd[:2] / hexd

    def has(self, digest: str) -> bool:
        return self._path(digest).is_file()

    def local_path(self, digest: str) -> Path | None:
        path = self._path(digest)
        return path if path.is_file() else None

    def put_file(self, src: Path, digest: str, advance: Advance | None = None) -> int:
        final = self._path(digest)
        if final.is_file():
            return 0
        self._ensure()
        tmp = self._tmp / f"{os.getpid()}-{secrets.token_hex(8)}.part"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with open(src, "rb", buffering=0) as fin, open(fd, "wb", buffering=0, closefd=False) as fout:
                got, size = copy_and_hash(fin, fout, advance)
                _faults.checkpoint("store.put.before_fsync")
                os.fsync(fd)
            if got != digest:
                raise IntegrityError(
                    f"{src} changed while it was being stored (read {got}, expected {digest})",
                    hint="push again once nothing is writing to it",
                )
            os.chmod(tmp, 0o444)
            final.parent.mkdir(exist_ok=True)
            with contextlib.suppress(FileExistsError):  # stored meanwhile by someone else: same bytes
                os.link(tmp, final)
            fsync_dir(final.parent)
            return size
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def copy_out(self, digest: str, dst: BinaryIO, advance: Advance | None = None) -> int:
        path = self._path(digest)
        if not path.is_file():
            raise IntegrityError(
                f"blob {digest} is missing from the store at {self.root}",
                hint="push the adapter again to restore it",
            )
        with open(path, "rb", buffering=0) as fin:
            got, size = copy_and_hash(fin, dst, advance)
        if got != digest:
            raise IntegrityError(
                f"blob {digest} is corrupted on disk (its bytes hash to {got})",
                hint=f"delete {path} and push the adapter again, or restore it from a backup",
            )
        return size

    def digests(self) -> Iterator[tuple[str, int]]:
        if not self._blobs.is_dir():
            return
        for sub in sorted(self._blobs.iterdir()):
            for blob in sorted(sub.iterdir()) if sub.is_dir() else ():
                digest = format_digest(blob.name)
                with contextlib.suppress(ValueError):
                    parse_digest(digest)
                    yield digest, blob.stat().st_size

    def delete(self, digest: str) -> int:
        path = self._path(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def remove_stale_temp(self, dry_run: bool = False) -> int:
        """Remove temporary files that no live writer holds; return how many."""
        removed = 0
        if not self._tmp.is_dir():
            return 0
        for tmp in self._tmp.iterdir():
            try:
                fd = os.open(tmp, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live writer holds it
            finally:
                os.close(fd)
            if not dry_run:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            removed += 1
        return removed

    @contextlib.contextmanager
    def _lock(self, mode: int) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.root / ".gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)

    def writing(self) -> contextlib.AbstractContextManager[None]:
        return self._lock(fcntl.LOCK_SH)

    def collecting(self) -> contextlib.AbstractContextManager[None]:
        return self._lock(fcntl.LOCK_EX)
