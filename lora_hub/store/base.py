"""The interface every blob store implements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO, Protocol

from lora_hub.hashing import Advance


class BlobStore(Protocol):
    """Immutable blobs addressed by ``sha256:<hex>``.

    ``put_file`` makes a blob visible only once its bytes are durable and match the digest, and
    never overwrites one. ``copy_out`` checks the digest as it reads.
    """

    def has(self, digest: str) -> bool: ...

    def put_file(self, src: Path, digest: str, advance: Advance | None = None) -> int:
        """Store ``src`` as ``digest``; return the bytes written (0 if already present)."""
        ...

    def copy_out(self, digest: str, dst: BinaryIO, advance: Advance | None = None) -> int: ...

    def local_path(self, digest: str) -> Path | None:
        """A path to read the blob from directly, where the store has one."""
        ...

    def digests(self) -> Iterator[tuple[str, int]]: ...

    def delete(self, digest: str) -> int: ...

    def remove_stale_temp(self, dry_run: bool = False) -> int: ...

    def writing(self) -> AbstractContextManager[None]:
        """Held while blobs are written and recorded; ``gc`` waits for every holder."""
        ...

    def collecting(self) -> AbstractContextManager[None]:
        """Held by ``gc``: no writer runs meanwhile."""
        ...
