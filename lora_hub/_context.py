"""``Context``: what the capability modules of ``lora_hub.core`` work with.

One per ``Hub``: the settings, the catalog and the blob store (each opened on first use, so that
making a ``Hub`` costs nothing), local copies of blobs held until it closes, and the output rule's
protected paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path

from lora_hub._fs import PartialRegistry, Protected
from lora_hub.catalog import Catalog
from lora_hub.settings import Settings
from lora_hub.store import BlobStore, open_store


class Context:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._catalog: Catalog | None = None
        self._store: BlobStore | None = None
        self._opened = contextlib.ExitStack()  # local copies of blobs (BlobStore.open_local)

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.settings.database_url)
        return self._catalog

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = open_store(self.settings.store_url, direct_io=self.settings.direct_io)
        return self._store

    def close(self) -> None:
        self._opened.close()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    def local_copy(self, digest: str, *, verify: bool = False) -> Path:
        """A local file holding the blob, kept at hand until the context closes (see
        ``BlobStore.open_local``)."""
        return self._opened.enter_context(self.store.open_local(digest, verify=verify))

    def protected(self, inputs: Iterable[Protected] = (), *, except_base: str | None = None) -> list[Protected]:
        """What no output may be, hold or lie inside (``lora_hub._fs``): the home, the blob store,
        the SQLite catalog, every registered base's folder (but ``except_base``'s: a merge redone
        into its own output), and the command's own inputs."""
        out = [Protected(self.settings.home, "the lora-hub home (LORAHUB_HOME)")]
        if self.store.local_root is not None:
            out.append(Protected(self.store.local_root, "the blob store"))
        db_file = sqlite_file(self.settings.database_url)
        if db_file is not None:
            out.append(Protected(db_file, "the catalog database"))
        bases = self.catalog.bases.all()
        out += [
            Protected(Path(b.path), f"the folder of registered base {b.name}")
            for b in bases
            if b.path and b.name != except_base
        ]
        return [*out, *inputs]

    def partials(self) -> PartialRegistry:
        """Where running writers record their hidden partial folders, for ``gc``."""
        return PartialRegistry(self.settings.home / "partials")


def sqlite_file(url: str) -> Path | None:
    """The file of a SQLite catalog URL, or None for another database."""
    from lora_hub.catalog.db import parse_url

    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None
