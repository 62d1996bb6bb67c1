"""The interface every blob store implements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Literal, Protocol

from lora_hub.hashing import Advance

BlobState = Literal["ok", "missing", "corrupted"]


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

    def copy_out(self, digest: str, dst: BinaryIO, advance: Advance | None = None) -> int: ...

    def open_local(self, digest: str, *, verify: bool = False) -> AbstractContextManager[Path]:
        """A local file holding the blob, for readers that need one (a merge memory-maps its
        inputs): the blob itself for a local store, a cached copy (checked against the digest as it
        was fetched) for a remote one. ``verify`` re-hashes it first. Valid until the context exits."""
        ...

    def digests(self) -> Iterator[tuple[str, int]]: ...

    def delete(self, digest: str) -> int: ...

    def remove_stale_temp(self, dry_run: bool = False) -> int: ...
