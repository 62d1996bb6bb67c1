"""The interface every blob store implements."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from lora_hub._direct import Hasher
from lora_hub.errors import InvalidArgumentError
from lora_hub.hashing import Advance, Sink

BlobState = Literal["ok", "missing", "corrupted"]
STAGE_ID = re.compile(r"^[0-9a-f]{32}$")
STALE_STAGE_S = 24 * 3600  # an upload session untouched this long is abandoned (swept by ``gc``)


def check_stage_id(upload_id: str) -> str:
    """``upload_id`` if it is one this code makes (32 hex digits), so it can name a key or a folder."""
    if not STAGE_ID.match(upload_id):
        raise InvalidArgumentError(f"{upload_id[:80]!r} is not an upload id", hint="start an upload first")
    return upload_id


class StageWriter(Protocol):
    """Appends to a staged upload; what it has accepted counts once the context exits."""

    def write(self, data: bytes, /) -> object: ...


class BlobStore(Protocol):
    """Immutable blobs addressed by ``sha256:<hex>``.

    ``put_file`` and ``adopt_file`` make a blob visible only once its bytes are durable and match
    the digest, and never overwrite a sound one. ``copy_out`` checks the digest as it reads.
    """

    @property
    def local_root(self) -> Path | None:
        """The local folder holding the blobs, if any (outputs may not be written there)."""
        ...

    def has(self, digest: str) -> bool: ...

    def check(self, digest: str, advance: Advance | None = None) -> tuple[BlobState, int | None]:
        """Re-read and re-hash one blob."""
        ...

    def free_bytes(self) -> int | None:
        """Free space for new blobs, where the store can tell."""
        ...

    def put_file(self, src: Path, digest: str, advance: Advance | None = None, *, repair: bool = False) -> int:
        """Store ``src`` as ``digest``; return the bytes written (0 if already present). With
        ``repair``, a present blob is re-hashed and replaced if damaged."""
        ...

    def adopt_file(
        self, src: Path, digest: str, size: int, advance: Advance | None = None, *, repair: bool = False
    ) -> int:
        """Store ``src`` as ``digest`` and take it over: ``src`` is gone afterwards. Only for a
        file whose ``digest`` and ``size`` lora-hub computed itself, in this process, over the
        bytes it wrote there (a download, an upload); never for a digest someone else sent. Where
        the store can, the file becomes the blob with no copy (a local store on the same file
        system: one fsync of the file and of the folder); elsewhere it is stored as by
        ``put_file``. The same visibility rules and return value as ``put_file``."""
        ...

    def copy_out(self, digest: str, dst: Sink, advance: Advance | None = None) -> int: ...

    def open_local(self, digest: str, *, verify: bool = False) -> AbstractContextManager[Path]:
        """A local file holding the blob, for readers that need one (a merge memory-maps its
        inputs): the blob itself for a local store, a cached copy (checked against the digest as it
        was fetched) for a remote one. ``verify`` re-hashes it first. Valid until the context exits."""
        ...

    def digests(self) -> Iterator[tuple[str, int]]: ...

    def delete(self, digest: str) -> int: ...

    def remove_stale_temp(self, dry_run: bool = False) -> int:
        """Remove temporary files (and abandoned upload sessions, untouched for
        ``STALE_STAGE_S``) that no live writer holds; return how many."""
        ...


@runtime_checkable
class StagingStore(Protocol):
    """A store that also keeps upload sessions: bytes staged in the store itself, so that every
    server process sharing the store sees them (``lora_hub.core.transfer`` checks offsets and
    digests). ``LocalStore`` and ``S3Store`` are both; a wrapper store exposes its ``inner`` one."""

    def stage_create(self, upload_id: str, meta: dict[str, Any]) -> None:
        """A new, empty staged upload with its ``meta`` (JSON-able)."""
        ...

    def stage_info(self, upload_id: str) -> tuple[dict[str, Any], int] | None:
        """The session's meta and the count of bytes staged so far, or None if there is none."""
        ...

    def stage_lock(self, upload_id: str) -> AbstractContextManager[None]:
        """Held while one request appends to or completes the session; ``BlockingIOError`` at
        once if another holds it (a store that cannot lock across processes documents it)."""
        ...

    def stage_append(
        self, upload_id: str, offset: int, hasher: Hasher | None = None
    ) -> AbstractContextManager[StageWriter]:
        """A writer of bytes from ``offset``, which the caller (holding ``stage_lock``) has checked
        is the staged size; ``hasher`` (the hash state of the staged bytes) is updated with every
        byte written, complete once the context exits. Bytes written before an error may stay
        staged or not, depending on the store: ``stage_info`` tells."""
        ...

    def stage_read(self, upload_id: str) -> Iterator[bytes]:
        """The staged bytes, in order, in blocks (for re-hashing)."""
        ...

    def stage_commit(self, upload_id: str, digest: str, size: int) -> int:
        """Make the staged bytes the blob ``digest`` (the caller checked they hash to it) and end
        the session; the bytes added to the store (0 when the blob was stored already). The store
        checks the digest again where it reads the bytes anyway."""
        ...

    def stage_delete(self, upload_id: str) -> None:
        """End the session and remove its staged bytes (nothing if there is none)."""
        ...
