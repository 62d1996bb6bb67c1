"""``transfer.receive_blob``: what a server's ``PUT`` of one blob does with the bytes. Stored
only when they hash to the digest the client named (``hashlib`` computes it here); nothing
stored, and nothing left staged, when they do not, when they pass the limit, or when the body
breaks off."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from lora_hub import Hub
from lora_hub.core import transfer
from lora_hub.errors import BodyTooLargeError, DigestMismatchError
from tests.helpers import store_of

BODY = bytes(range(256)) * 40_000  # 10 MB: several 2 MiB stages


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _staged(hub: Hub) -> list[Path]:
    folder = hub.settings.home / "uploads"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def _send(hub: Hub, digest: str, data: bytes, *, limit: int = 1 << 40, block: int = 65_536) -> transfer.BlobReceiver:
    with transfer.receive_blob(hub._ctx, digest, limit=limit) as receiver:
        for i in range(0, len(data), block):
            receiver.write(data[i : i + block])
    return receiver


def test_a_blob_that_matches_is_stored_once(hub: Hub) -> None:
    digest = _digest(BODY)
    first = _send(hub, digest, BODY, block=99_991)  # blocks that do not divide the stages
    assert (first.size, first.written) == (len(BODY), len(BODY))
    with store_of(hub).open_local(digest) as path:
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest.removeprefix("sha256:")
    again = _send(hub, digest, BODY)
    assert (again.size, again.written) == (len(BODY), 0)
    assert _staged(hub) == []


def test_a_wrong_digest_stores_nothing(hub: Hub) -> None:
    claimed = _digest(BODY[:-1] + b"x")
    with pytest.raises(DigestMismatchError, match="nothing was stored"):
        _send(hub, claimed, BODY)
    assert transfer.blob_size(hub._ctx, claimed) is None and transfer.blob_size(hub._ctx, _digest(BODY)) is None
    assert _staged(hub) == []


def test_passing_the_limit_stops_at_once_and_stores_nothing(hub: Hub) -> None:
    with pytest.raises(BodyTooLargeError, match="limit of 1,000,000 bytes"):
        _send(hub, _digest(BODY), BODY, limit=1_000_000)
    assert transfer.blob_size(hub._ctx, _digest(BODY)) is None and _staged(hub) == []


def test_a_body_that_breaks_off_stores_nothing(hub: Hub) -> None:
    with pytest.raises(ConnectionResetError), transfer.receive_blob(hub._ctx, _digest(BODY), limit=1 << 40) as got:
        got.write(BODY[: 3 << 20])
        raise ConnectionResetError("the client went away")
    assert transfer.blob_size(hub._ctx, _digest(BODY)) is None and _staged(hub) == []
