"""Content-addressed blob stores. ``open_store(url)`` picks the backend from the URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlparse

from lora_hub.errors import StoreError
from lora_hub.store.base import BlobStore
from lora_hub.store.local import LocalStore

__all__ = ["BlobStore", "LocalStore", "open_store"]


def open_store(url: str, *, direct_io: bool = True) -> BlobStore:
    """``file:///path`` or a plain path: a local folder (``direct_io``: blobs written past the
    page cache); ``s3://bucket/prefix``: an S3-compatible bucket (``lora_hub.store.s3``)."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return LocalStore(Path(unquote(parsed.path if parsed.scheme else url)), direct_io=direct_io)
    if parsed.scheme == "s3":
        from lora_hub.store.s3 import S3Store  # boto3 is imported on first use

        return S3Store(url)
    raise StoreError(
        f"unsupported store URL scheme {parsed.scheme!r} in {url!r}",
        hint="use file:///path or s3://bucket/prefix",
    )
