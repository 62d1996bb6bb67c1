"""The local blob store (lora_hub.store.local): checks, repairs, and errors that name the store.

User trial 2, rows 7 and 15: a corrupted blob was trusted by the next push ("0 B written"), and a
full disk gave a bare "No space left on device".
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from lora_hub.errors import IntegrityError, StoreError
from lora_hub.store.local import LocalStore


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(store: LocalStore, digest: str) -> Path:
    """The file holding ``digest``: named by its hex digits, wherever the layout puts it."""
    (found,) = [p for p in store.root.rglob(digest.split(":")[1]) if p.is_file()]
    return found


def corrupt(path: Path) -> None:
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blobs")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 64)
    return path


def temp_files(store: LocalStore) -> list[Path]:
    return [p for p in store.root.rglob("*.part")]


def test_put_stores_a_read_only_blob_once(store: LocalStore, source: Path) -> None:
    digest = digest_of(source.read_bytes())
    assert store.put_file(source, digest) == source.stat().st_size
    blob = blob_file(store, digest)
    assert blob.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert store.put_file(source, digest) == 0 and store.put_file(source, digest, repair=True) == 0
    assert store.has(digest) and list(store.digests()) == [(digest, source.stat().st_size)]


def test_check_tells_ok_missing_and_corrupted(store: LocalStore, source: Path) -> None:
    digest = digest_of(source.read_bytes())
    size = source.stat().st_size
    assert store.check(digest) == ("missing", None)
    store.put_file(source, digest)
    assert store.check(digest) == ("ok", size)
    corrupt(blob_file(store, digest))
    assert store.check(digest) == ("corrupted", size)


def test_row07_a_repairing_put_rewrites_a_damaged_blob(store: LocalStore, source: Path) -> None:
    """Row 7: pushing the folder again is how a damaged blob is repaired: ``repair=True`` re-hashes
    the stored blob and replaces it with the source's bytes; without it the blob is trusted."""
    digest = digest_of(source.read_bytes())
    store.put_file(source, digest)
    corrupt(blob_file(store, digest))
    assert store.put_file(source, digest) == 0  # trusted, as before
    assert store.check(digest)[0] == "corrupted"
    assert store.put_file(source, digest, repair=True) == source.stat().st_size
    blob = blob_file(store, digest)
    assert digest_of(blob.read_bytes()) == digest and stat.S_IMODE(blob.stat().st_mode) == 0o444
    assert store.check(digest)[0] == "ok"
    assert temp_files(store) == []


def test_row07_copy_out_refuses_damaged_or_missing_blobs_with_a_next_step(store: LocalStore, source: Path) -> None:
    digest = digest_of(source.read_bytes())
    with pytest.raises(IntegrityError, match="is missing from the store") as missing:
        store.copy_out(digest, io.BytesIO())
    assert "lorahub verify --all" in (missing.value.hint or "")
    store.put_file(source, digest)
    corrupt(blob_file(store, digest))
    with pytest.raises(IntegrityError, match="is corrupted on disk") as damaged:
        store.copy_out(digest, io.BytesIO())
    assert "push the adapter's folder again" in (damaged.value.hint or "")


def test_a_source_that_does_not_match_its_digest_is_not_stored(store: LocalStore, source: Path) -> None:
    wrong = digest_of(b"something else")
    with pytest.raises(IntegrityError, match="changed while it was being stored"):
        store.put_file(source, wrong)
    assert not store.has(wrong) and list(store.digests()) == [] and temp_files(store) == []


@pytest.mark.parametrize(
    ("code", "what"),
    [(errno.ENOSPC, "full"), (errno.EDQUOT, "full"), (errno.EROFS, "Read-only file system")],
)
def test_row15_a_write_that_fails_for_space_names_the_store(
    store: LocalStore, source: Path, monkeypatch: pytest.MonkeyPatch, code: int, what: str
) -> None:
    """Row 15: a push into a full store said only "No space left on device". Now the error names the
    store and says what to do, and no temporary file is left."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr("lora_hub.store.local.copy_and_hash", fail)
    digest = digest_of(source.read_bytes())
    with pytest.raises(StoreError) as info:
        store.put_file(source, digest)
    assert info.value.message == f"cannot write to the blob store at {store.root}: {what}"
    assert "lorahub gc" in (info.value.hint or "")
    assert not store.has(digest) and temp_files(store) == []


def test_other_write_errors_are_not_disguised(store: LocalStore, source: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr("lora_hub.store.local.copy_and_hash", fail)
    with pytest.raises(OSError) as info:
        store.put_file(source, digest_of(source.read_bytes()))
    assert not isinstance(info.value, StoreError) and info.value.errno == errno.EIO


def test_free_bytes_is_asked_of_the_nearest_existing_folder(tmp_path: Path) -> None:
    """Row 15: free space is checked before a push writes, even before the store folder exists."""
    store = LocalStore(tmp_path / "not" / "yet" / "blobs")
    free = store.free_bytes()
    assert isinstance(free, int) and free > 0
    assert not (tmp_path / "not").exists()


def test_upload_sessions_are_staged_in_the_store_and_swept(tmp_path: Path) -> None:
    """A session's bytes live under the store's staging/ folder (so every process sharing the
    folder sees them); completing adopts them as the blob; an abandoned session is swept by age,
    never while a request holds it."""
    import time

    store = LocalStore(tmp_path / "blobs")
    data = os.urandom(5000)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    store.stage_create("c" * 32, {"namespace": "acme"})
    assert LocalStore(tmp_path / "blobs").stage_info("c" * 32) == ({"namespace": "acme"}, 0)
    with store.stage_lock("c" * 32), store.stage_append("c" * 32, 0) as w:
        w.write(data[:1000])
        with pytest.raises(BlockingIOError), store.stage_lock("c" * 32):
            pass  # one writer at a time
    with store.stage_lock("c" * 32), store.stage_append("c" * 32, 1000) as w:
        w.write(data[1000:])
    assert b"".join(store.stage_read("c" * 32)) == data
    staged = tmp_path / "blobs" / "staging" / ("c" * 32) / "data"
    inode = staged.stat().st_ino
    assert store.stage_commit("c" * 32, digest, len(data)) == len(data)
    assert store.check(digest) == ("ok", len(data)) and store.stage_info("c" * 32) is None
    with store.open_local(digest) as blob:
        assert blob.stat().st_ino == inode  # adopted, not copied

    store.stage_create("d" * 32, {"namespace": "acme"})
    old = time.time() - 2 * 24 * 3600
    for p in (tmp_path / "blobs" / "staging" / ("d" * 32)).iterdir():
        os.utime(p, (old, old))
    with store.stage_lock("d" * 32):
        assert store.remove_stale_temp() == 0  # held by a request: kept however old
    assert store.remove_stale_temp(dry_run=True) == 1 and store.stage_info("d" * 32) is not None
    assert store.remove_stale_temp() == 1 and store.stage_info("d" * 32) is None
    assert not list((tmp_path / "blobs" / "staging").iterdir())
