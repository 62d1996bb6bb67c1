"""``LocalStore.adopt_file``: a file lora-hub hashed itself becomes the blob by ``link``, not by a copy.

Expected bytes and digests come from ``hashlib`` over the source as written, never from the store.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from lora_hub.errors import IntegrityError, StoreError
from lora_hub.store.local import LocalStore
from lora_hub.store.s3 import S3Store

DATA = bytes(range(256)) * 257  # 65,792 bytes


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_file(store: LocalStore, digest: str) -> Path:
    hexd = digest.split(":")[1]
    (found,) = [p for p in (store.root / "sha256").rglob(hexd) if p.is_file()]
    return found


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "blobs")


@pytest.fixture
def staged(tmp_path: Path) -> Path:
    path = tmp_path / "staging" / "upload.part"
    path.parent.mkdir()
    path.write_bytes(DATA)
    return path


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every hash or copy the store makes (adopting should make none)."""
    calls: list[str] = []
    import lora_hub.store.local as local

    real_hash, real_copy = local.hash_file, local.copy_and_hash

    def hash_spy(*a: Any, **kw: Any) -> Any:
        calls.append("hash_file")
        return real_hash(*a, **kw)

    def copy_spy(*a: Any, **kw: Any) -> Any:
        calls.append("copy_and_hash")
        return real_copy(*a, **kw)

    monkeypatch.setattr(local, "hash_file", hash_spy)
    monkeypatch.setattr(local, "copy_and_hash", copy_spy)
    return calls


def test_adopt_links_the_file_into_place_without_reading_it(store: LocalStore, staged: Path, reads: list[str]) -> None:
    digest = digest_of(DATA)
    inode = staged.stat().st_ino
    advanced: list[int] = []
    assert store.adopt_file(staged, digest, len(DATA), advanced.append) == len(DATA)
    blob = blob_file(store, digest)
    assert not staged.exists()  # taken over
    assert blob.read_bytes() == DATA and blob.stat().st_ino == inode  # the very file: no copy
    assert stat.S_IMODE(blob.stat().st_mode) == 0o444 and blob.stat().st_nlink == 1
    assert reads == [] and sum(advanced) == len(DATA)
    assert list(store.digests()) == [(digest, len(DATA))] and list((store.root / "tmp").iterdir()) == []
    assert store.check(digest) == ("ok", len(DATA))


def test_adopt_fsyncs_the_file_before_it_is_visible(
    store: LocalStore, staged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One fsync of the file and one of the blob's folder, the file's before the blob's name exists."""
    events: list[str] = []
    digest = digest_of(DATA)
    final = store.root / "sha256" / digest[7:9] / digest[7:]
    real_fsync, real_link = os.fsync, os.link

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def link(src: Any, dst: Any, **kw: Any) -> None:
        events.append("link-final" if Path(dst) == final else "link-tmp")
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    store.adopt_file(staged, digest, len(DATA))
    assert events == ["link-tmp", "fsync-file", "link-final", "fsync-dir"]


def test_exdev_from_link_falls_back_to_a_checked_copy(
    store: LocalStore, staged: Path, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``os.link`` answering EXDEV (another file system) for the staged file: the store copies it,
    hashing as it copies, and a copy that does not match stores nothing."""
    real_link = os.link

    def link(src: Any, dst: Any, **kw: Any) -> None:
        if Path(src) == staged:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", link)
    digest = digest_of(DATA)
    inode = staged.stat().st_ino
    assert store.adopt_file(staged, digest, len(DATA)) == len(DATA)
    blob = blob_file(store, digest)
    assert blob.read_bytes() == DATA and blob.stat().st_ino != inode and not staged.exists()
    assert reads == ["copy_and_hash"]


def test_exdev_fallback_refuses_bytes_that_do_not_match(
    store: LocalStore, staged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_link = os.link

    def link(src: Any, dst: Any, **kw: Any) -> None:
        if Path(src) == staged:
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        real_link(src, dst, **kw)

    monkeypatch.setattr(os, "link", link)
    wrong = digest_of(b"other bytes")
    with pytest.raises(IntegrityError):
        store.adopt_file(staged, wrong, len(DATA))
    assert list(store.digests()) == [] and list((store.root / "tmp").iterdir()) == []


def test_a_size_that_differs_from_the_hashed_one_stores_nothing(store: LocalStore, staged: Path) -> None:
    with pytest.raises(IntegrityError, match="changed after it was hashed"):
        store.adopt_file(staged, digest_of(DATA), len(DATA) - 1)
    assert list(store.digests()) == [] and staged.read_bytes() == DATA


def test_a_blob_already_stored_is_kept_and_the_file_dropped(
    store: LocalStore, staged: Path, tmp_path: Path, reads: list[str]
) -> None:
    digest = digest_of(DATA)
    other = tmp_path / "first"
    other.write_bytes(DATA)
    store.adopt_file(other, digest, len(DATA))
    before = blob_file(store, digest).stat().st_ino
    assert store.adopt_file(staged, digest, len(DATA)) == 0
    assert not staged.exists() and blob_file(store, digest).stat().st_ino == before and reads == []


def test_repair_replaces_a_damaged_blob_with_the_adopted_file(store: LocalStore, staged: Path, tmp_path: Path) -> None:
    digest = digest_of(DATA)
    first = tmp_path / "first"
    first.write_bytes(DATA)
    store.adopt_file(first, digest, len(DATA))
    blob = blob_file(store, digest)
    blob.chmod(0o644)
    damaged = bytearray(DATA)
    damaged[100] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    assert store.adopt_file(staged, digest, len(DATA)) == 0  # without repair: trusted, as put_file does
    restaged = tmp_path / "again"
    restaged.write_bytes(DATA)
    assert store.adopt_file(restaged, digest, len(DATA), repair=True) == len(DATA)
    assert blob_file(store, digest).read_bytes() == DATA and store.check(digest)[0] == "ok"
    assert not restaged.exists() and list((store.root / "tmp").iterdir()) == []


def test_a_link_to_the_blob_itself_is_dropped_not_the_blob(store: LocalStore, staged: Path, tmp_path: Path) -> None:
    """A server's commit hands back hard links to stored blobs: adopting one removes the link only."""
    digest = digest_of(DATA)
    store.adopt_file(staged, digest, len(DATA))
    blob = blob_file(store, digest)
    link = tmp_path / "linked"
    os.link(blob, link)
    assert store.adopt_file(link, digest, len(DATA), repair=True) == 0
    assert not link.exists() and blob.read_bytes() == DATA
    assert store.adopt_file(blob, digest, len(DATA), repair=True) == 0  # the blob's own name: left alone
    assert blob.read_bytes() == DATA


def test_a_full_store_names_the_store_and_leaves_nothing(
    store: LocalStore, staged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def full(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StoreError, match="cannot write to the blob store"):
        store.adopt_file(staged, digest_of(DATA), len(DATA))
    assert list(store.digests()) == [] and list((store.root / "tmp").iterdir()) == []


def test_s3_adopt_is_its_put_then_the_file_goes(staged: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The S3 store cannot link: ``adopt_file`` uploads as ``put_file`` does (checked as it is sent)."""
    calls: list[tuple[Path, str, bool]] = []

    def put_file(self: S3Store, src: Path, digest: str, advance: Any = None, *, repair: bool = False) -> int:
        calls.append((src, digest, repair))
        assert src.read_bytes() == DATA  # still there while it is sent
        return len(DATA)

    monkeypatch.setattr(S3Store, "put_file", put_file)
    s3 = S3Store.__new__(S3Store)
    assert s3.adopt_file(staged, digest_of(DATA), len(DATA), repair=True) == len(DATA)
    assert calls == [(staged, digest_of(DATA), True)] and not staged.exists()
