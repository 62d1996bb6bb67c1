"""Blobs in an S3-compatible bucket (``LORAHUB_STORE_URL=s3://bucket/prefix``)::

    s3://<bucket>/<prefix>/sha256/<2 hex>/<64 hex>     one object per blob

The endpoint, region and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``
for MinIO and the like), read by boto3. Its low-level client is used with checksums
``when_required``: boto3 1.36 and later add CRC checksums by default, which many S3-compatible
servers refuse.

A blob is written to its final key as a multipart upload (a single ``PutObject`` below
``PART_MIN``), hashed as its parts are sent; an upload is invisible until completed, and it is
completed, with ``If-None-Match: *``, only when the bytes match the digest; otherwise, or on any
error, it is aborted, so a wrong or interrupted upload leaves nothing. 412 on completion means the
blob was stored meanwhile (by another writer: the same bytes); 409 (a conditional-write race) is
retried. ``remove_stale_temp`` (run by ``gc``) aborts multipart uploads left by killed writers.
The server cannot check our sha256 for us (S3 has no full-object SHA-256 for multipart uploads,
and moto checks no checksum at all): our own digest check is what guards the store.

Upload sessions (``stage_*``, resumable uploads through several server processes) are staging
objects beside the blobs::

    s3://<bucket>/<prefix>/staging/<id>/meta.json              the session
    s3://<bucket>/<prefix>/staging/<id>/chunk-<20-digit offset>  one object per chunk received

A chunk is spooled to a local temporary file while it arrives and becomes an object only once it
has arrived whole (so after a broken request the session's offset is the end of the last whole
chunk, and the client resends the rest). The offset is the end of the contiguous run of chunks
from 0. Completing streams the chunks, in order, into a multipart upload on the blob's key,
hashing them again, and completes it (``If-None-Match: *``) only if they hash to the digest;
then the staging objects are deleted. Limits: completing reads and writes the blob's bytes once
more inside S3's network (no ``UploadPartCopy``, which needs 5 MiB parts and would skip our own
hash of what was written); S3 offers no lock, so two requests writing the same chunk of one
session at once race (the later object wins, and the digest check at completion decides);
``remove_stale_temp`` deletes sessions untouched for ``STALE_STAGE_S``.

Readers that need a file (a merge memory-maps its inputs; the service sends files) get a local
copy, verified as it is fetched, cached under ``$LORAHUB_HOME/cache/s3``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlparse

from lora_hub._direct import Hasher
from lora_hub._fs import fsync_dir
from lora_hub.errors import IntegrityError, InvalidArgumentError, SettingsError, StoreError
from lora_hub.hashing import Advance, Sink, format_digest, parse_digest
from lora_hub.store.base import STALE_STAGE_S, BlobState, StageWriter, check_stage_id

PART_MIN = 8 << 20  # S3's minimum part is 5 MiB; 8 MiB parts keep 10,000 parts above 80 GB
MAX_PARTS = 9_000  # below S3's 10,000, with room to spare
READ_CHUNK = 1 << 20
STALE_UPLOAD_S = 24 * 3600


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", "")) or str(
        response.get("ResponseMetadata", {}).get("HTTPStatusCode", "")
    )


class _HashingWriter:
    def __init__(self, fh: BinaryIO, hasher: Hasher | None) -> None:
        self._fh, self._hasher = fh, hasher

    def write(self, data: bytes, /) -> int:
        n = self._fh.write(data)
        if self._hasher is not None:
            self._hasher.update(memoryview(data))
        return n


class S3Store:
    def __init__(self, url: str, *, cache: Path | None = None, client: Any = None) -> None:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise SettingsError(f"not an s3:// store URL: {url!r}", hint="use s3://bucket/prefix")
        self.url = url
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        home = Path(os.environ.get("LORAHUB_HOME") or Path.home() / ".lorahub").expanduser()
        self.cache = cache or home / "cache" / "s3"
        self._client = client

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise StoreError(f"the store {self.url} needs boto3", hint="pip install 'lora-hub[s3]'") from None
            config = Config(
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"max_attempts": 5, "mode": "standard"},
            )
            self._client = boto3.client("s3", config=config)
        return self._client

    @property
    def local_root(self) -> Path | None:
        return None

    def free_bytes(self) -> int | None:
        return None

    def _key(self, digest: str) -> str:
        hexd = parse_digest(digest)
        return "/".join(p for p in (self.prefix, "sha256", hexd[:2], hexd) if p)

    def _error(self, what: str, exc: Exception) -> StoreError:
        return StoreError(
            f"cannot {what} in the store {self.url}: {_code(exc) or type(exc).__name__}: {exc}",
            hint="check AWS_ENDPOINT_URL, the credentials, and that the bucket exists",
        )

    def _size(self, digest: str) -> int | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(digest))
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("look up a blob", exc) from exc
        return int(head["ContentLength"])

    def has(self, digest: str) -> bool:
        return self._size(digest) is not None

    def _read(self, digest: str, dst: Sink | None, advance: Advance | None) -> tuple[str, int] | None:
        """Stream the object (into ``dst``), hashing it; None when it does not exist."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(digest))["Body"]
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("read a blob", exc) from exc
        h = hashlib.sha256()
        size = 0
        with contextlib.closing(body):
            for chunk in body.iter_chunks(READ_CHUNK):
                h.update(chunk)
                if dst is not None:
                    dst.write(chunk)
                size += len(chunk)
                if advance:
                    advance(len(chunk))
        return format_digest(h.hexdigest()), size

    def check(self, digest: str, advance: Advance | None = None) -> tuple[BlobState, int | None]:
        got = self._read(digest, None, advance)
        if got is None:
            return "missing", None
        return ("ok" if got[0] == digest else "corrupted"), got[1]

    def put_file(self, src: Path, digest: str, advance: Advance | None = None, *, repair: bool = False) -> int:
        """Store ``src`` as ``digest`` (see the module docstring); the bytes written, 0 when the
        blob was stored already. With ``repair``, a stored blob is re-hashed and replaced if damaged."""
        size = self._size(digest)
        replace = False
        if size is not None:
            if not repair or self.check(digest)[0] == "ok":
                if advance:
                    advance(src.stat().st_size)
                return 0
            replace = True
        return self.upload(src, digest, advance, replace=replace)

    def adopt_file(
        self, src: Path, digest: str, size: int, advance: Advance | None = None, *, repair: bool = False
    ) -> int:
        """``put_file`` (an object cannot be made from a local file without sending its bytes, and
        they are hashed as they are sent), then ``src`` is removed, as ``BlobStore.adopt_file`` says."""
        written = self.put_file(src, digest, advance, repair=repair)
        with contextlib.suppress(FileNotFoundError):
            Path(src).unlink()
        return written

    def upload(self, src: Path, digest: str, advance: Advance | None = None, *, replace: bool = False) -> int:
        """Write ``src`` to the blob's key, created only if absent unless ``replace``; 0 if it was
        there already. ``IntegrityError`` (and nothing stored) if its bytes are not ``digest``."""
        with open(src, "rb") as fh:
            return self._upload_from(fh, src, digest, src.stat().st_size, advance, replace=replace)

    def _upload_from(
        self, fh: Any, src: Path | str, digest: str, total: int, advance: Advance | None, *, replace: bool
    ) -> int:
        key = self._key(digest)
        conditional: dict[str, str] = {} if replace else {"IfNoneMatch": "*"}
        if total < PART_MIN:
            data = fh.read()
            self._check(src, hashlib.sha256(data), digest)
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=data, **conditional)
            except Exception as exc:
                if _code(exc) in ("412", "PreconditionFailed"):
                    return 0
                raise self._error("write a blob", exc) from exc
            if advance:
                advance(total)
            return total
        return self._multipart(fh, src, key, digest, total, advance, conditional)

    def _multipart(
        self, fh: BinaryIO, src: Path | str, key: str, digest: str, total: int, advance: Advance | None,
        conditional: dict[str, str],
    ) -> int:  # fmt: skip
        part_size = max(PART_MIN, math.ceil(total / MAX_PARTS))
        try:
            upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except Exception as exc:
            raise self._error("start an upload", exc) from exc
        completed = False
        try:
            h = hashlib.sha256()
            parts = []
            number = 1
            while block := fh.read(part_size):
                h.update(block)
                etag = self.client.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=block
                )["ETag"]
                parts.append({"ETag": etag, "PartNumber": number})
                if advance:
                    advance(len(block))
                number += 1
            self._check(src, h, digest)
            for attempt in range(3):
                try:
                    self.client.complete_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                        **conditional,
                    )  # fmt: skip
                    completed = True
                    return total
                except Exception as exc:
                    code = _code(exc)
                    if code in ("412", "PreconditionFailed"):
                        return 0  # stored meanwhile by another writer (the upload is aborted below)
                    if code in ("409", "ConditionalRequestConflict") and attempt < 2:
                        continue
                    raise
            raise AssertionError("unreachable")  # pragma: no cover
        except (IntegrityError, StoreError):
            raise
        except Exception as exc:
            raise self._error("write a blob", exc) from exc
        finally:
            if not completed:
                with contextlib.suppress(Exception):
                    self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)

    @staticmethod
    def _check(src: Path | str, h: Any, digest: str) -> None:
        got = format_digest(h.hexdigest())
        if got != digest:
            raise IntegrityError(
                f"{src} changed while it was being stored (read {got}, expected {digest})",
                hint="push again once nothing is writing to it",
            )

    def copy_out(self, digest: str, dst: Sink, advance: Advance | None = None) -> int:
        got = self._read(digest, dst, advance)
        if got is None:
            raise IntegrityError(
                f"blob {digest} is missing from the store {self.url}",
                hint="push the adapter's folder again to restore it; `lorahub verify --all` checks every blob",
            )
        if got[0] != digest:
            raise IntegrityError(
                f"blob {digest} is corrupted in the store {self.url} (its bytes hash to {got[0]})",
                hint="push the adapter's folder again (the push rewrites damaged blobs)",
            )
        return got[1]

    @contextlib.contextmanager
    def open_local(self, digest: str, *, verify: bool = False) -> Iterator[Path]:
        """A cached local copy, checked against its digest as it was fetched (again with ``verify``)."""
        hexd = parse_digest(digest)
        path = self.cache / "sha256" / hexd[:2] / hexd
        if path.is_file() and verify:
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                while chunk := fh.read(READ_CHUNK):
                    h.update(chunk)
            if format_digest(h.hexdigest()) != digest:
                path.unlink()
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{hexd}.{os.getpid()}-{secrets.token_hex(4)}.part")
            try:
                with open(tmp, "wb") as fh:
                    self.copy_out(digest, fh)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.chmod(tmp, 0o444)
                os.replace(tmp, path)
                fsync_dir(path.parent)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        yield path

    def digests(self) -> Iterator[tuple[str, int]]:
        start = "/".join(p for p in (self.prefix, "sha256") if p) + "/"
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start)
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    with contextlib.suppress(ValueError):
                        digest = format_digest(name)
                        parse_digest(digest)
                        yield digest, int(obj["Size"])
        except Exception as exc:
            raise self._error("list the blobs", exc) from exc

    def delete(self, digest: str) -> int:
        size = self._size(digest)
        if size is None:
            return 0
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(digest))
        except Exception as exc:
            raise self._error("delete a blob", exc) from exc
        return size

    def remove_stale_temp(self, dry_run: bool = False, *, older_than_s: float = STALE_UPLOAD_S) -> int:
        """Abort multipart uploads under the prefix started more than ``older_than_s`` ago (left by
        writers that were killed), and delete upload sessions untouched as long; return how many."""
        now = time.time()
        removed = self._sweep_staging(dry_run, min(older_than_s, STALE_STAGE_S), now)
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=self.prefix)
            for page in pages:
                for up in page.get("Uploads", []):
                    started = up["Initiated"]
                    if isinstance(started, datetime):
                        age = now - started.replace(tzinfo=started.tzinfo or UTC).timestamp()
                    else:  # pragma: no cover - botocore parses it
                        age = older_than_s
                    if age < older_than_s:
                        continue
                    if not dry_run:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                    removed += 1
        except Exception as exc:
            raise self._error("list abandoned uploads", exc) from exc
        return removed

    # --- upload sessions (see the module docstring) ------------------------------------------------
    def _stage_prefix(self, upload_id: str) -> str:
        return "/".join(p for p in (self.prefix, "staging", check_stage_id(upload_id)) if p) + "/"

    def _stage_objects(self, prefix: str) -> list[dict[str, Any]]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [obj for page in pages for obj in page.get("Contents", [])]
        except Exception as exc:
            raise self._error("list an upload session", exc) from exc

    @staticmethod
    def _chunks(objects: list[dict[str, Any]]) -> list[tuple[int, str, int]]:
        """(offset, key, size) of the contiguous run of chunks from offset 0."""
        found: dict[int, tuple[str, int]] = {}
        for obj in objects:
            name = obj["Key"].rsplit("/", 1)[-1]
            if name.startswith("chunk-") and name[6:].isdigit():
                found[int(name[6:])] = (obj["Key"], int(obj["Size"]))
        run, offset = [], 0
        while offset in found and found[offset][1] > 0:
            key, size = found[offset]
            run.append((offset, key, size))
            offset += size
        return run

    def stage_create(self, upload_id: str, meta: dict[str, Any]) -> None:
        key = self._stage_prefix(upload_id) + "meta.json"
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=json.dumps(meta).encode(), IfNoneMatch="*")
        except Exception as exc:
            raise self._error("start an upload session", exc) from exc

    def stage_info(self, upload_id: str) -> tuple[dict[str, Any], int] | None:
        prefix = self._stage_prefix(upload_id)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=prefix + "meta.json")["Body"]
            with contextlib.closing(body):
                meta = json.loads(body.read())
        except Exception as exc:
            if _code(exc) in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self._error("read an upload session", exc) from exc
        run = self._chunks(self._stage_objects(prefix))
        return meta, (run[-1][0] + run[-1][2]) if run else 0

    def stage_lock(self, upload_id: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()  # S3 has no lock: see the module docstring

    @contextlib.contextmanager
    def stage_append(self, upload_id: str, offset: int, hasher: Hasher | None = None) -> Iterator[StageWriter]:
        """A local spool file (each block hashed into ``hasher`` as it is written); sent as the
        object ``chunk-<offset>`` when the context exits without an error (a chunk that broke
        off is not staged at all)."""
        key = self._stage_prefix(upload_id) + f"chunk-{offset:020d}"
        self.cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=self.cache, prefix=".chunk-") as spool:
            yield _HashingWriter(spool, hasher)
            if spool.tell() == 0:
                return
            spool.seek(0)
            try:
                self.client.put_object(Bucket=self.bucket, Key=key, Body=spool)
            except Exception as exc:
                raise self._error("stage a chunk of an upload", exc) from exc

    def stage_read(self, upload_id: str) -> Iterator[bytes]:
        for _, key, _ in self._chunks(self._stage_objects(self._stage_prefix(upload_id))):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except Exception as exc:
                raise self._error("read a staged chunk", exc) from exc
            with contextlib.closing(body):
                yield from body.iter_chunks(READ_CHUNK)

    def stage_commit(self, upload_id: str, digest: str, size: int) -> int:
        """The chunks, streamed into the blob's key and hashed again (``IntegrityError``, nothing
        stored, if they do not make ``digest``); then the session is deleted."""
        if self._size(digest) is not None:
            self.stage_delete(upload_id)
            return 0
        written = self._upload_from(_Reader(self.stage_read(upload_id)), f"upload {upload_id}", digest, size,
                                    None, replace=False)  # fmt: skip
        self.stage_delete(upload_id)
        return written

    def stage_delete(self, upload_id: str) -> None:
        prefix = self._stage_prefix(upload_id)
        with contextlib.suppress(Exception):  # the meta first: no longer a session from here on
            self.client.delete_object(Bucket=self.bucket, Key=prefix + "meta.json")
        for obj in self._stage_objects(prefix):
            with contextlib.suppress(Exception):
                self.client.delete_object(Bucket=self.bucket, Key=obj["Key"])

    def _sweep_staging(self, dry_run: bool, older_than_s: float, now: float) -> int:
        root = "/".join(p for p in (self.prefix, "staging") if p) + "/"
        touched: dict[str, float] = {}
        for obj in self._stage_objects(root):
            upload_id = obj["Key"][len(root) :].split("/", 1)[0]
            when = obj["LastModified"]
            stamp = when.replace(tzinfo=when.tzinfo or UTC).timestamp() if isinstance(when, datetime) else 0.0
            touched[upload_id] = max(touched.get(upload_id, 0.0), stamp)
        removed = 0
        for upload_id, stamp in touched.items():
            if now - stamp < older_than_s:
                continue
            with contextlib.suppress(InvalidArgumentError):
                if not dry_run:
                    self.stage_delete(upload_id)
                removed += 1
        return removed


class _Reader:
    """``read(n)`` over an iterator of blocks, holding at most one block beyond what is asked."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._buf = bytearray()

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            block = next(self._blocks, None)
            if block is None:
                break
            self._buf += block
        if n < 0:
            n = len(self._buf)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out
