"""Content-addressed transfer, for a server: blobs one by one, then a version as a manifest.

The shape is the OCI distribution protocol's. A client hashes its files first, asks which blobs
are missing (``blob_size``), uploads only those (``receive_blob``: the bytes are hashed as they
are received, and stored only if they match), and commits the version last
(``commit_manifest``): a list of (path, digest, size) whose blobs must all be stored already,
else ``MissingBlobsError`` lists the missing ones. Committing goes through ``adapters.push`` on a
folder of hard links to the stored blobs, so a manifest is validated, deduplicated and recorded
exactly as a folder pushed on this machine is.

Each byte of an upload is hashed once, by the server as it arrives: the staged file is adopted by
the store (linked into place), and a commit in the same process tells ``push`` the digests of the
blobs it stored that way (``_Verified``), so that only the validation reads them again. A digest
a client sends is never trusted: it is what the server's own hash is compared with.

Resumable uploads (``upload_start`` ... ``upload_finish``), shaped like the OCI distribution
protocol's upload sessions: the bytes are staged in the store itself (``BlobStore.stage_*``), not
in a process, so that successive requests may reach different server processes. A process hashes
the chunks it receives and keeps that hash state (``_HASHES``) in memory; a process without it,
or with a state that does not end at the staged offset, hashes the staged prefix again. The blob
becomes visible only when the hash of all the staged bytes matches the digest the client names
at the end. ``gc`` (``remove_stale_temp``) sweeps sessions left untouched.

Nothing here accepts a path of the server's machine from a client: bases are registered names,
adapters are references.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from lora_hub._context import Context
from lora_hub._direct import UPLOAD_STAGE, UPLOAD_STAGES, DirectFile
from lora_hub.core import adapters, bases, fits
from lora_hub.core.common import is_base_name
from lora_hub.errors import (
    BaseNotFoundError,
    BodyTooLargeError,
    DigestMismatchError,
    InvalidArgumentError,
    LoraHubError,
    MissingBlobsError,
    NotFoundError,
    NotSupportedError,
    UploadOffsetError,
)
from lora_hub.formats.safetensors_file import ScanningHash
from lora_hub.hashing import format_digest, parse_digest
from lora_hub.progress import Progress
from lora_hub.refs import Ref
from lora_hub.store.base import StageWriter, StagingStore, check_stage_id
from lora_hub.types import BaseAddResult, BaseFile, CompatReport, FileEntry, PushResult

MAX_MANIFEST_FILES = 10_000


def blob_size(ctx: Context, digest: str) -> int | None:
    """The size of the stored blob ``digest``, or None when the store does not hold it."""
    parse_digest(digest)
    if not ctx.store.has(digest):
        return None
    with ctx.store.open_local(digest) as path:
        return path.stat().st_size


@contextlib.contextmanager
def blob_file(ctx: Context, digest: str) -> Iterator[Path]:
    """A local file holding the stored blob (the blob itself for a local store), for sending."""
    if blob_size(ctx, digest) is None:
        raise NotFoundError(f"no blob {digest}", hint="upload it first")
    with ctx.store.open_local(digest) as path:
        yield path


class _Verified:
    """What this process knows without reading again, and trusts because it computed it itself:
    the staged uploads it handed out (``upload_file``), whose receiver hashes them as they arrive,
    and the blobs it stored from them, by the identity of their file (device, inode, size, mtime),
    so that the commit that follows does not hash them again. A blob whose file changed, or that
    another process stored, is not in it and is hashed as before. Bounded: the oldest entries go."""

    LIMIT = 100_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._staged: set[Path] = set()
        self._blobs: OrderedDict[tuple[str, str], tuple[tuple[int, int, int, int], list[str] | None]] = OrderedDict()

    def stage(self, path: Path) -> None:
        with self._lock:
            self._staged.add(path)

    def unstage(self, path: Path) -> None:
        with self._lock:
            self._staged.discard(path)

    def is_staged(self, path: Path) -> bool:
        with self._lock:
            return path in self._staged

    def remember(self, root: Path, digest: str, blob: Path, nonfinite: list[str] | None = None) -> None:
        """``blob`` is the file this process stored as ``digest``; ``nonfinite``: the NaN/Inf scan
        of its bytes made as they were hashed (``StreamingScan``), if one was."""
        ident = _identity(blob)
        with self._lock:
            self._blobs[(str(root), digest)] = (ident, nonfinite)
            self._blobs.move_to_end((str(root), digest))
            while len(self._blobs) > self.LIMIT:
                self._blobs.popitem(last=False)

    def holds(self, root: Path, digest: str, file: Path) -> bool:
        """Whether ``file`` is the very blob file this process stored as ``digest``."""
        with self._lock:
            known = self._blobs.get((str(root), digest))
        try:
            return known is not None and known[0] == _identity(file)
        except OSError:
            return False

    def scan_of(self, root: Path, digest: str, file: Path) -> list[str] | None:
        """The NaN/Inf scan remembered with the blob, if ``file`` is that very blob file."""
        with self._lock:
            known = self._blobs.get((str(root), digest))
        return known[1] if known is not None and self.holds(root, digest, file) else None


def _identity(path: Path) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


_VERIFIED = _Verified()


@contextlib.contextmanager
def upload_file(ctx: Context) -> Iterator[Path]:
    """A fresh, empty file in the server's upload folder (on the home's file system), removed on
    exit: where an upload is staged while it is received and hashed. It is held with an
    exclusive flock meanwhile, so ``clean_uploads`` can tell it from one a killed server left.
    Whoever writes it must hash the bytes as they are written: ``store_blob`` takes that digest."""
    folder = ctx.settings.home / "uploads"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{os.getpid()}-{secrets.token_hex(8)}.part"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    _VERIFIED.stage(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        _VERIFIED.unstage(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def clean_uploads(ctx: Context) -> int:
    """Remove staged uploads and manifest folders that no live server holds (left by a server
    that was killed); return how many. Run when a server starts."""
    folder = ctx.settings.home / "uploads"
    if not folder.is_dir():
        return 0
    removed = 0
    for entry in folder.iterdir():
        lock = entry if entry.suffix == ".part" else entry.with_suffix(".lock")
        if entry.suffix == ".lock":
            continue
        try:
            fd = os.open(lock, os.O_RDONLY)
        except FileNotFoundError:
            fd = None
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live writer holds it
        finally:
            if fd is not None:
                os.close(fd)
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        with contextlib.suppress(FileNotFoundError):
            if lock != entry:
                lock.unlink()
        removed += 1
    return removed


def store_blob(ctx: Context, src: Path, digest: str, nonfinite: list[str] | None = None) -> int:
    """Store ``src`` as ``digest`` under a store lease (so ``gc`` cannot run meanwhile). Returns
    bytes written (0 when the blob was stored already).

    A staged upload of this process (``upload_file``, still open) is taken as hashed by its
    receiver, which must have computed ``digest`` over the bytes as it wrote them and compared it
    with the client's: the store adopts the file (``BlobStore.adopt_file``: linked into place, no
    copy, no second read) and it is gone afterwards; ``nonfinite`` is the receiver's NaN/Inf scan
    of the same bytes (``ScanningHash``), remembered for the commit. Any other file is copied and
    re-hashed by the store, which refuses it if it does not match."""
    parse_digest(digest)
    src = Path(src)
    with ctx.catalog.leases.writing():
        if not _VERIFIED.is_staged(src):
            return ctx.store.put_file(src, digest)
        written = ctx.store.adopt_file(src, digest, src.stat().st_size)
        root = ctx.store.local_root
        if written and root is not None:
            with ctx.store.open_local(digest) as blob:
                _VERIFIED.remember(root, digest, blob, nonfinite=nonfinite)
        return written


class BlobReceiver:
    """What ``receive_blob`` hands out: ``write`` the body's blocks as they arrive (each is
    copied into a staging buffer; threads hash, scan and write them). ``size``: bytes so far;
    ``written``: bytes the store added (0: it held the blob already), set once stored."""

    def __init__(self, fh: DirectFile, limit: int) -> None:
        self._fh = fh
        self._limit = limit
        self.written = 0

    @property
    def size(self) -> int:
        return self._fh.size

    def write(self, data: bytes) -> None:
        if self._fh.size + len(data) > self._limit:
            raise BodyTooLargeError(
                f"the blob is over this server's limit of {self._limit:,} bytes",
                hint="LORAHUB_MAX_UPLOAD_BYTES sets the limit for blobs",
            )
        self._fh.write(data)


@contextlib.contextmanager
def receive_blob(ctx: Context, digest: str, *, limit: int) -> Iterator[BlobReceiver]:
    """Receive one blob whose client says it is ``digest`` (``PUT /v1/blobs/...``): the bytes
    written to the receiver are staged (``upload_file``), hashed and scanned for NaN/Inf as they
    come (``ScanningHash``), past the page cache (``lora_hub._direct``; 3 x 2 MiB of buffers),
    never more than ``limit`` (``BodyTooLargeError`` as soon as it passes). On a clean exit the
    staged file is made durable and, only if it hashes to ``digest``, stored by adoption
    (``store_blob``: no copy, no second read); else ``DigestMismatchError`` and nothing is
    stored. An exception from the body (a client gone) leaves nothing either.

    Entering and leaving block (file creation, the last writes, fsync, the store): a server
    calls them off its event loop and writes from it."""
    parse_digest(digest)
    with upload_file(ctx) as staged:
        state = ScanningHash()
        fh = DirectFile(staged, hasher=state, direct=ctx.settings.direct_io, stage=UPLOAD_STAGE, stages=UPLOAD_STAGES)
        receiver = BlobReceiver(fh, limit)
        try:
            yield receiver
        except BaseException:
            fh.abort()
            raise
        fh.close()
        got = "sha256:" + fh.hexdigest()
        if got != digest:
            raise DigestMismatchError(
                f"the uploaded bytes hash to {got}, not {digest}: nothing was stored",
                hint="upload the file again; if it changes while it is read, wait until it does not",
            )
        receiver.written = store_blob(ctx, staged, digest, state.nonfinite())


def commit_manifest(
    ctx: Context,
    name: str,
    files: Sequence[FileEntry],
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    base: str | None = None,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    source: str | None = None,
) -> PushResult:
    """Push the version of ``name`` made of ``files``, whose blobs are in the store already.

    Every path must be a plain relative path; every blob must be stored with the manifest's size
    (else ``MissingBlobsError`` with the digests to upload). ``base``, if given, must be a
    registered base. Then the same as ``adapters.push`` of the folder these files make; its error
    messages name ``source`` (the client's folder) where they would name that folder."""
    _check_paths(files)
    if base is not None and not (is_base_name(base) and ctx.catalog.bases.has(base)):
        raise BaseNotFoundError(base)
    _check_stored(ctx, files)
    with _linked_folder(ctx, files) as (folder, verified, scanned):
        try:
            return adapters.push(
                ctx, folder, name, metrics=metrics, tags=tags, description=description, base=base, lineage=lineage,
                progress=progress, verified=verified, scanned=scanned,
            )  # fmt: skip
        except LoraHubError as exc:
            # The staging folder means nothing to the client: name its own folder instead.
            exc.message = exc.message.replace(str(folder), source or "the uploaded folder")
            exc.args = (exc.message,)
            raise


def commit_base_manifest(
    ctx: Context,
    name: str,
    files: Sequence[FileEntry],
    *,
    source: str | None = None,
    progress: Progress | None = None,
) -> BaseAddResult:
    """Register the stored base ``name`` made of ``files`` (``base add --store`` through a
    server), whose blobs are in the store already: the same path and blob checks as
    ``commit_manifest`` (``MissingBlobsError`` lists the blobs to upload first, and nothing is
    registered), then ``bases.add_stored``, which computes the fingerprints from the stored
    blobs. Done under a writing lease, so that ``gc`` collects none of them meanwhile."""
    _check_paths(files)
    with ctx.catalog.leases.writing():
        _check_stored(ctx, files)
        described = [BaseFile(path=e.path, size=e.size, digest=e.digest) for e in files]
        return bases.add_stored(ctx, name, described, source=source, progress=progress)


def _check_stored(ctx: Context, files: Sequence[FileEntry]) -> None:
    """Every blob of the manifest is stored, with the manifest's size; else ``MissingBlobsError``
    listing the missing digests (a size that differs is refused outright)."""
    missing = []
    for entry in files:
        size = blob_size(ctx, entry.digest)
        if size is None:
            missing.append(entry.digest)
        elif size != entry.size:
            raise InvalidArgumentError(
                f"{entry.path}: the manifest says {entry.size} bytes, the stored blob {entry.digest} has {size}"
            )
    if missing:
        raise MissingBlobsError(
            f"{len(missing)} blob(s) of the manifest are not stored", missing=sorted(set(missing)),
            hint="upload them, then commit the manifest again",
        )  # fmt: skip


def validate_stored(ctx: Context, ref: str, base: str) -> CompatReport:
    """``fits.validate`` for a stored adapter version and a registered base only."""
    parsed = Ref.parse(ref)
    if Path(ref).exists():  # fits.validate would read a folder of this machine by that name
        raise InvalidArgumentError(f"{ref!r} is ambiguous on this server", hint="give the version, e.g. name:1")
    if not (is_base_name(base) and ctx.catalog.bases.has(base)):
        raise BaseNotFoundError(base)
    adapters.show(ctx, str(parsed))
    return fits.validate(ctx, str(parsed), base)


def _check_paths(files: Sequence[FileEntry]) -> None:
    if not files:
        raise InvalidArgumentError("the manifest lists no files")
    if len(files) > MAX_MANIFEST_FILES:
        raise InvalidArgumentError(f"the manifest lists {len(files)} files; the limit is {MAX_MANIFEST_FILES}")
    seen = set()
    for entry in files:
        parse_digest(entry.digest)
        p = PurePosixPath(entry.path)
        if (
            not entry.path
            or p.is_absolute()
            or any(part in ("", ".", "..") for part in entry.path.split("/"))
            or "\\" in entry.path
            or "\0" in entry.path
            or entry.path in seen
            or entry.size < 0
        ):
            raise InvalidArgumentError(f"the manifest's file path {entry.path[:200]!r} cannot be used")
        seen.add(entry.path)


@contextlib.contextmanager
def _linked_folder(
    ctx: Context, files: Sequence[FileEntry]
) -> Iterator[tuple[Path, dict[str, tuple[str, int]], dict[str, list[str]]]]:
    """A private folder holding ``files`` as hard links to their blobs (copies where the store is
    on another file system), removed on exit; the files among them that are links to blobs
    this process stored from uploads it hashed itself (``push``'s ``verified``: not hashed again),
    and of those, the ones whose NaN/Inf scan was made as they were hashed (``push``'s
    ``scanned``: not read again)."""
    root = ctx.settings.home / "uploads" / f"manifest-{os.getpid()}-{secrets.token_hex(8)}"
    root.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(root.with_suffix(".lock"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # held while the folder is in use (see clean_uploads)
    root.mkdir()
    store_root = ctx.store.local_root
    verified: dict[str, tuple[str, int]] = {}
    scanned: dict[str, list[str]] = {}
    try:
        for entry in files:
            target = root / entry.path
            target.parent.mkdir(parents=True, exist_ok=True)
            src = ctx.local_copy(entry.digest)
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
            else:
                if store_root is not None and _VERIFIED.holds(store_root, entry.digest, target):
                    verified[entry.path] = (entry.digest, entry.size)
                    scan = _VERIFIED.scan_of(store_root, entry.digest, target)
                    if scan is not None:
                        scanned[entry.path] = scan
        yield root, verified, scanned
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            root.with_suffix(".lock").unlink()
        os.close(lock)


def namespace_uses_blob(ctx: Context, namespace: str, digest: str) -> bool:
    """Whether a version in ``namespace`` refers to blob ``digest``."""
    parse_digest(digest)
    return ctx.catalog.namespace_uses_blob(namespace, digest)


# --- resumable uploads ----------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadSession:
    """An upload session: its id, its namespace, and how many bytes are staged."""

    id: str
    namespace: str
    offset: int


class _Hashes:
    """The hash state of the sessions this process wrote to: (offset it ends at, sha256 object).
    Bounded (the oldest go; a session whose state is gone is hashed again from the store)."""

    LIMIT = 1024

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: OrderedDict[tuple[str, str], tuple[int, Any]] = OrderedDict()

    def take(self, store: str, upload_id: str, offset: int) -> Any | None:
        """The state ending at ``offset``, removed from here (its holder puts it back), else None."""
        with self._lock:
            found = self._states.pop((store, upload_id), None)
        return found[1] if found is not None and found[0] == offset else None

    def put(self, store: str, upload_id: str, offset: int, state: Any) -> None:
        with self._lock:
            self._states[(store, upload_id)] = (offset, state)
            while len(self._states) > self.LIMIT:
                self._states.popitem(last=False)

    def drop(self, store: str, upload_id: str) -> None:
        with self._lock:
            self._states.pop((store, upload_id), None)


_HASHES = _Hashes()
REHASHED = {"bytes": 0}  # bytes this process hashed again from staged uploads (for tests and logs)


def _staging(ctx: Context) -> StagingStore:
    """The store's upload sessions (a wrapping store, such as a cache, passes them to its ``inner``)."""
    store: Any = ctx.store
    while not isinstance(store, StagingStore) and hasattr(store, "inner"):
        store = store.inner
    if not isinstance(store, StagingStore):
        raise NotSupportedError(f"the store {store!r} keeps no upload sessions", hint="upload each blob in one PUT")
    return store


def _unknown_upload(upload_id: str) -> NotFoundError:
    return NotFoundError(
        f"no upload session {upload_id[:80]}", hint="it was completed, aborted or swept: start a new upload"
    )


def _session(ctx: Context, namespace: str, upload_id: str) -> UploadSession:
    check_stage_id(upload_id)
    found = _staging(ctx).stage_info(upload_id)
    if found is None or found[0].get("namespace") != namespace:
        raise _unknown_upload(upload_id)  # another namespace's session is not this caller's to see
    return UploadSession(upload_id, namespace, found[1])


def upload_start(ctx: Context, namespace: str) -> UploadSession:
    """A new, empty upload session for a blob to be used in ``namespace``."""
    upload_id = secrets.token_hex(16)
    _staging(ctx).stage_create(upload_id, {"namespace": namespace, "created": time.time()})
    return UploadSession(upload_id, namespace, 0)


def upload_status(ctx: Context, namespace: str, upload_id: str) -> UploadSession:
    """The session and its staged offset (``NotFoundError`` when there is none in ``namespace``)."""
    return _session(ctx, namespace, upload_id)


@contextlib.contextmanager
def _locked(ctx: Context, upload_id: str, offset: int) -> Iterator[None]:
    try:
        with _staging(ctx).stage_lock(upload_id):
            yield
    except BlockingIOError:
        raise UploadOffsetError(
            f"another request is writing to upload {upload_id}", offset=offset, busy=True,
            hint="wait for it to end, then ask the session's offset and go on from there",
        ) from None  # fmt: skip


class _Sink:
    """What ``upload_append`` hands out: writes blocks to the staged upload (whose writer
    hashes them into ``state``)."""

    def __init__(self, writer: StageWriter, state: Any, offset: int, limit: int) -> None:
        self._writer = writer
        self.state = state
        self.offset = offset
        self._limit = limit

    def write(self, data: bytes) -> None:
        if self.offset + len(data) > self._limit:
            raise BodyTooLargeError(
                f"the upload passes this server's limit of {self._limit:,} bytes",
                hint="LORAHUB_MAX_UPLOAD_BYTES sets the limit for blobs",
            )
        self._writer.write(data)
        self.offset += len(data)


def _state_at(ctx: Context, upload_id: str, offset: int) -> Any:
    """The sha256 state of the first ``offset`` staged bytes: this process's own, else re-hashed."""
    key = repr(_staging(ctx))
    state = _HASHES.take(key, upload_id, offset)
    if state is not None:
        return state
    state = ScanningHash()
    seen = 0
    for block in _staging(ctx).stage_read(upload_id):
        block = block[: offset - seen]
        state.update(block)
        seen += len(block)
        if seen >= offset:
            break
    if seen != offset:
        raise UploadOffsetError(f"upload {upload_id} changed while it was read", offset=seen, busy=True)
    REHASHED["bytes"] += seen
    return state


@contextlib.contextmanager
def upload_append(
    ctx: Context, namespace: str, upload_id: str, start: int | None, *, limit: int, end: int | None = None
) -> Iterator[_Sink]:
    """Append a chunk to the session: a sink to ``write`` its blocks to, as they arrive. ``start``
    (from ``Content-Range``; None: wherever the session is) must be the staged offset, else
    ``UploadOffsetError`` (416) says what is staged; so must ``end`` not pass ``limit`` (413
    before any byte is read). Another request writing to the session meanwhile: ``busy``."""
    session = _session(ctx, namespace, upload_id)
    if end is not None and end > limit:
        raise BodyTooLargeError(
            f"the upload would be {end:,} bytes; this server accepts at most {limit:,}",
            hint="LORAHUB_MAX_UPLOAD_BYTES sets the limit for blobs",
        )
    with _locked(ctx, upload_id, session.offset):
        offset = _session(ctx, namespace, upload_id).offset  # again, under the lock
        if start is not None and start != offset:
            raise UploadOffsetError(
                f"the chunk starts at byte {start:,}, but upload {upload_id} holds {offset:,} bytes", offset=offset,
                hint="send the chunk that starts where the staged bytes end (the Range header)",
            )  # fmt: skip
        state = _state_at(ctx, upload_id, offset)
        sink: _Sink | None = None
        try:
            with _staging(ctx).stage_append(upload_id, offset, state) as writer:
                sink = _Sink(writer, state, offset, limit)
                yield sink
        finally:
            # What a store keeps of a chunk that broke off depends on the store: the state is
            # kept only where it ends at what is staged (else the next writer hashes again).
            with contextlib.suppress(LoraHubError, OSError):
                staged = _staging(ctx).stage_info(upload_id)
                if sink is not None and staged is not None and staged[1] == sink.offset:
                    _HASHES.put(repr(_staging(ctx)), upload_id, sink.offset, sink.state)


def upload_finish(ctx: Context, namespace: str, upload_id: str, digest: str) -> tuple[int, int]:
    """Complete the session as blob ``digest``: stored (visible) only if every staged byte hashes
    to it, else ``DigestMismatchError`` and the session is removed (nothing stored). Returns
    (size, bytes added to the store)."""
    parse_digest(digest)
    session = _session(ctx, namespace, upload_id)
    with _locked(ctx, upload_id, session.offset):
        offset = _session(ctx, namespace, upload_id).offset
        state = _state_at(ctx, upload_id, offset)
        got = format_digest(state.hexdigest())
        if got != digest:
            _staging(ctx).stage_delete(upload_id)
            _HASHES.drop(repr(_staging(ctx)), upload_id)
            raise DigestMismatchError(
                f"the uploaded bytes hash to {got}, not {digest}: nothing was stored",
                hint="upload the file again; if it changes while it is read, wait until it does not",
            )
        with ctx.catalog.leases.writing():
            written = _staging(ctx).stage_commit(upload_id, digest, offset)
        _HASHES.drop(repr(_staging(ctx)), upload_id)
    root = ctx.store.local_root
    if written and root is not None:
        with ctx.store.open_local(digest) as blob:
            _VERIFIED.remember(root, digest, blob, nonfinite=state.nonfinite())
    return offset, written


def upload_abort(ctx: Context, namespace: str, upload_id: str) -> None:
    """End the session and remove what it staged."""
    session = _session(ctx, namespace, upload_id)
    with _locked(ctx, upload_id, session.offset):
        _staging(ctx).stage_delete(upload_id)
    _HASHES.drop(repr(_staging(ctx)), upload_id)


def mount_blob(ctx: Context, digest: str, source: str, may_read: bool) -> int | None:
    """The size of blob ``digest`` if the caller ``may_read`` namespace ``source`` and a version
    there refers to it (so it may be used in another namespace without sending it); else None,
    the same whether the blob does not exist or is not the caller's to see."""
    parse_digest(digest)
    if not may_read or not namespace_uses_blob(ctx, source, digest):
        return None
    return blob_size(ctx, digest)
