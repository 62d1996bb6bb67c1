"""Blobs in a local folder::

    <root>/sha256/<2 hex>/<64 hex>     read-only blobs
    <root>/tmp/<pid>-<random>.part     blobs being written, each held with an exclusive flock

A blob is written to a unique temporary file while its digest is computed, fsynced, checked,
then hard-linked into place (``link`` fails rather than overwrite) and the folder fsynced. A
file that lora-hub has just hashed itself (a download, an upload) is adopted instead
(``adopt_file``): hard-linked into ``tmp/``, fsynced, then linked into place the same way, with
no copy and no second read. A temporary file whose flock can be taken belongs to a dead process;
``gc`` removes it. Pushes and ``gc`` exclude each other through the catalog's store leases
(``lora_hub.catalog.leases``), so several machines can share one store folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from lora_hub import _faults
from lora_hub._fs import fsync_dir
from lora_hub.errors import IntegrityError, StoreError
from lora_hub.hashing import Advance, copy_and_hash, format_digest, hash_file, parse_digest
from lora_hub.store.base import BlobState

_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# What ``link`` answers where a file cannot be adopted by linking: another file system, a file
# system without hard links, or a file at its link limit. Such a file is copied instead.
_NO_LINK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


class LocalStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"

    def __repr__(self) -> str:
        return f"LocalStore({str(self.root)!r})"

    @property
    def local_root(self) -> Path:
        """The folder that holds the blobs: no output may be written there."""
        return self.root

    def free_bytes(self) -> int | None:
        """Free space where blobs are written, or None if it cannot be told."""
        folder = self.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            return None

    def _space_error(self, exc: OSError) -> StoreError:
        what = "full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or str(exc)
        return StoreError(
            f"cannot write to the blob store at {self.root}: {what}",
            hint="free some space there (or move LORAHUB_HOME / LORAHUB_STORE_URL), then run `lorahub gc`",
        )

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

    @contextlib.contextmanager
    def open_local(self, digest: str, *, verify: bool = False) -> Iterator[Path]:
        """The blob's own file (read-only), checked against its digest first with ``verify``."""
        path = self._path(digest)
        state = self.check(digest)[0] if verify else ("ok" if path.is_file() else "missing")
        if state != "ok":
            raise IntegrityError(
                f"blob {digest} is {state} in the store at {self.root}",
                hint="push the adapter's folder again (the push rewrites damaged blobs); "
                "`lorahub verify --all` checks every blob",
            )
        yield path

    def check(self, digest: str, advance: Advance | None = None) -> tuple[BlobState, int | None]:
        """Re-read the blob and hash it: ``ok``, ``missing`` or ``corrupted``, with its size."""
        path = self._path(digest)
        try:
            got, size = hash_file(path, advance)
        except FileNotFoundError:
            return "missing", None
        return ("ok" if got == digest else "corrupted"), size

    def put_file(self, src: Path, digest: str, advance: Advance | None = None, *, repair: bool = False) -> int:
        """Store ``src`` as ``digest``. A blob already present is kept as it is, unless ``repair``
        finds it damaged (re-hashed), when it is replaced by ``src``'s bytes. Returns the bytes this
        call wrote (0 when the blob was already stored, by this process or a concurrent one)."""
        final = self._path(digest)
        if final.is_file() and (not repair or self.check(digest)[0] == "ok"):
            if advance:
                advance(src.stat().st_size)  # stored already: its share of the work is done
            return 0
        try:
            return self._write(src, digest, final, advance, replace=final.is_file())
        except OSError as exc:
            if isinstance(exc, StoreError | IntegrityError) or exc.errno not in _SPACE_ERRORS:
                raise
            raise self._space_error(exc) from exc

    def _write(self, src: Path, digest: str, final: Path, advance: Advance | None, *, replace: bool) -> int:
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
            if replace:  # a damaged blob: the checked bytes take its place in one step
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)
                except FileExistsError:  # stored meanwhile by someone else: the same bytes, not ours to count
                    return 0
            fsync_dir(final.parent)
            return size
        finally:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def adopt_file(
        self, src: Path, digest: str, size: int, advance: Advance | None = None, *, repair: bool = False
    ) -> int:
        """Store ``src``, a file whose bytes lora-hub hashed to ``digest`` (``size`` bytes) in this
        process as it wrote them, by moving it into place instead of copying it: ``src`` is linked
        into ``tmp/``, fsynced, made read-only, linked to its content-addressed name (``link``
        never overwrites) and the folder fsynced; then ``src`` is removed. The bytes are not
        read. ``src`` on another file system (or one without hard links) is copied as by
        ``put_file``, checked as it is copied, then removed. A blob already present is kept (and
        ``src`` removed) unless ``repair`` finds it damaged, when ``src`` takes its place. Returns
        the bytes this call added to the store."""
        src = Path(src)
        final = self._path(digest)
        if os.stat(src).st_size != size:
            raise IntegrityError(
                f"{src} changed after it was hashed (it has {os.stat(src).st_size} bytes, not {size})",
                hint="store it again once nothing is writing to it",
            )
        replace = final.is_file()
        if replace and (_same_file(src, final) or not repair or self.check(digest)[0] == "ok"):
            _remove_source(src, final)
            if advance:
                advance(size)  # stored already: its share of the work is done
            return 0
        try:
            try:
                written = self._adopt(src, final, size, replace=replace)
            except OSError as exc:
                if exc.errno not in _NO_LINK_ERRORS:
                    raise
                written = self._write(src, digest, final, advance, replace=replace)  # another file system
            else:
                if advance:
                    advance(size)
        except OSError as exc:
            if isinstance(exc, StoreError | IntegrityError) or exc.errno not in _SPACE_ERRORS:
                raise
            raise self._space_error(exc) from exc
        _remove_source(src, final)
        return written

    def _adopt(self, src: Path, final: Path, size: int, *, replace: bool) -> int:
        self._ensure()
        tmp = self._tmp / f"{os.getpid()}-{secrets.token_hex(8)}.part"
        # The link is the test for "same file system" (EXDEV otherwise), made before the fsync
        # that a copy would not need.
        os.link(src, tmp)
        try:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                # Marks it as a live writer's for remove_stale_temp; the staged upload that ``src``
                # may be already holds this lock (same inode), which says the same.
                with contextlib.suppress(BlockingIOError):
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.chmod(tmp, 0o444)
            _faults.checkpoint("store.adopt.before_link")
            final.parent.mkdir(exist_ok=True)
            if replace:  # a damaged blob: the adopted bytes take its place in one step
                os.replace(tmp, final)
            else:
                try:
                    os.link(tmp, final)
                except FileExistsError:  # stored meanwhile by someone else: the same bytes, not ours to count
                    return 0
            fsync_dir(final.parent)
            return size
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def copy_out(self, digest: str, dst: BinaryIO, advance: Advance | None = None) -> int:
        path = self._path(digest)
        if not path.is_file():
            raise IntegrityError(
                f"blob {digest} is missing from the store at {self.root}",
                hint="push the adapter's folder again to restore it; `lorahub verify --all` checks every blob",
            )
        with open(path, "rb", buffering=0) as fin:
            got, size = copy_and_hash(fin, dst, advance)
        if got != digest:
            raise IntegrityError(
                f"blob {digest} is corrupted on disk (its bytes hash to {got})",
                hint="push the adapter's folder again (the push rewrites damaged blobs), or restore the store from a "
                "backup; `lorahub verify --all` checks every blob",
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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except FileNotFoundError:
        return False


def _remove_source(src: Path, final: Path) -> None:
    """Remove the adopted ``src``, unless it is the blob's own name (a caller handing a blob back)."""
    if src.resolve() != final.resolve():
        with contextlib.suppress(FileNotFoundError):
            src.unlink()
