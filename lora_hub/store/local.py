"""Blobs in a local folder::

    <root>/sha256/<2 hex>/<64 hex>     read-only blobs
    <root>/tmp/<pid>-<random>.part     blobs being written, each held with an exclusive flock
    <root>/staging/<id>/meta.json      an upload session (``stage_*``): its meta,
    <root>/staging/<id>/data           the bytes received so far (appended in place),
    <root>/staging/<id>/lock           flocked by the one request writing or completing it

A blob is written to a unique temporary file while its digest is computed, fsynced, checked,
then hard-linked into place (``link`` fails rather than overwrite) and the folder fsynced. A
file that lora-hub has just hashed itself (a download, an upload) is adopted instead
(``adopt_file``): hard-linked into ``tmp/``, fsynced, then linked into place the same way, with
no copy and no second read. A temporary file whose flock can be taken belongs to a dead process;
``gc`` removes it, and the upload sessions whose data nobody has touched for ``STALE_STAGE_S``.
The staging folder is in the store, so every server process sharing the store folder sees a
session; a completed session's data file is adopted as the blob (no copy). Pushes and ``gc``
exclude each other through the catalog's store leases
(``lora_hub.catalog.leases``), so several machines can share one store folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lora_hub import _faults
from lora_hub._direct import UPLOAD_STAGE, UPLOAD_STAGES, DirectFile, Hasher
from lora_hub._fs import fsync_dir
from lora_hub.errors import IntegrityError, InvalidArgumentError, StoreError
from lora_hub.hashing import Advance, Sink, copy_and_hash, format_digest, hash_file, parse_digest
from lora_hub.store.base import STALE_STAGE_S, BlobState, StageWriter, check_stage_id

_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# What ``link`` answers where a file cannot be adopted by linking: another file system, a file
# system without hard links, or a file at its link limit. Such a file is copied instead.
_NO_LINK_ERRORS = (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP)


class LocalStore:
    def __init__(self, root: Path, *, direct_io: bool = True) -> None:
        self.root = Path(root)
        self.direct_io = direct_io  # blobs written past the page cache (LORAHUB_DIRECT_IO)
        self._blobs = self.root / "sha256"
        self._tmp = self.root / "tmp"
        self._staging = self.root / "staging"

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
            # past the page cache (lora_hub._direct); closing it fsyncs
            with open(src, "rb", buffering=0) as fin, DirectFile(tmp, direct=self.direct_io) as fout:
                got, size = copy_and_hash(fin, fout, advance)
                _faults.checkpoint("store.put.before_fsync")
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

    def copy_out(self, digest: str, dst: Sink, advance: Advance | None = None) -> int:
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

    def remove_stale_temp(self, dry_run: bool = False, *, older_than_s: float = STALE_STAGE_S) -> int:
        """Remove temporary files that no live writer holds, and upload sessions untouched for
        ``older_than_s`` that no request holds; return how many."""
        removed = self._sweep_staging(dry_run, older_than_s)
        if not self._tmp.is_dir():
            return removed
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

    # --- upload sessions -------------------------------------------------------------------------
    def _stage(self, upload_id: str) -> Path:
        return self._staging / check_stage_id(upload_id)

    def stage_create(self, upload_id: str, meta: dict[str, Any]) -> None:
        folder = self._stage(upload_id)
        try:
            folder.mkdir(parents=True)
            (folder / "lock").touch()
            (folder / "data").touch()
            tmp = folder / "meta.json.part"
            tmp.write_text(json.dumps(meta))
            os.replace(tmp, folder / "meta.json")  # the session exists once its meta does
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                raise self._space_error(exc) from exc
            raise

    def stage_info(self, upload_id: str) -> tuple[dict[str, Any], int] | None:
        folder = self._stage(upload_id)
        try:
            meta = json.loads((folder / "meta.json").read_text())
            return meta, (folder / "data").stat().st_size
        except (FileNotFoundError, ValueError):
            return None

    @contextlib.contextmanager
    def stage_lock(self, upload_id: str) -> Iterator[None]:
        try:
            fd = os.open(self._stage(upload_id) / "lock", os.O_RDWR)
        except FileNotFoundError:
            raise BlockingIOError(errno.ENOENT, "the upload session is gone") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def stage_append(self, upload_id: str, offset: int, hasher: Hasher | None = None) -> Iterator[StageWriter]:
        """The data file, appended to from ``offset`` past the page cache and hashed into
        ``hasher`` on threads of its own (``lora_hub._direct``: the request's thread only copies
        into 3 x 2 MiB of buffers). What was written stays staged even if the request breaks off
        (what arrived is written out as the context exits, however it exits), so
        that a client resumes from what arrived."""
        path = self._stage(upload_id) / "data"
        try:
            # cut to the checked offset first (nothing is past it: the lock is held)
            # not fsynced per chunk: adopt_file fsyncs the whole, and the digest is checked then
            fh = DirectFile(path, offset=offset, hasher=hasher, direct=self.direct_io, stage=UPLOAD_STAGE,
                            stages=UPLOAD_STAGES, durable=False)  # fmt: skip
            try:
                yield fh
            except BaseException:
                with contextlib.suppress(OSError):
                    fh.close()  # keep what arrived; the caller compares the staged size with what it sent
                raise
            fh.close()
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                raise self._space_error(exc) from exc
            raise

    def stage_read(self, upload_id: str) -> Iterator[bytes]:
        with open(self._stage(upload_id) / "data", "rb") as fh:
            while block := fh.read(4 << 20):
                yield block

    def stage_commit(self, upload_id: str, digest: str, size: int) -> int:
        """The data file is adopted as the blob (``adopt_file``: linked, fsynced, not copied)."""
        folder = self._stage(upload_id)
        written = self.adopt_file(folder / "data", digest, size)
        self.stage_delete(upload_id)
        return written

    def stage_delete(self, upload_id: str) -> None:
        folder = self._stage(upload_id)
        with contextlib.suppress(FileNotFoundError):
            (folder / "meta.json").unlink()  # no longer a session from here on
        shutil.rmtree(folder, ignore_errors=True)

    def _sweep_staging(self, dry_run: bool, older_than_s: float) -> int:
        if not self._staging.is_dir():
            return 0
        removed = 0
        now = time.time()
        for folder in self._staging.iterdir():
            try:
                touched = max(p.stat().st_mtime for p in folder.iterdir()) if folder.is_dir() else 0.0
            except (OSError, ValueError):
                touched = 0.0
            if now - touched < older_than_s:
                continue
            try:
                with contextlib.ExitStack() as held:
                    if (folder / "lock").exists():
                        held.enter_context(self.stage_lock(folder.name))
                    if not dry_run:
                        self.stage_delete(folder.name)
            except (BlockingIOError, InvalidArgumentError):
                continue  # a request holds it, or not one of ours
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
