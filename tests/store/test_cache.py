"""The workers' bounded blob cache (``lora_hub.store.cache``) over an in-memory source that
counts its reads: LRU eviction order, the size bound, one fetch for concurrent fills, damaged
entries found and fetched again, ranged reads; and over a real S3 wire protocol (moto)."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from lora_hub.errors import IntegrityError, StoreError
from lora_hub.store import cache as cache_mod
from lora_hub.store.cache import BlobCache

SIZE = 1000


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class MemorySource:
    """Blobs in a dict; records every range read; ``gate``, when set, holds reads until it opens."""

    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.ranges: list[tuple[str, int, int]] = []
        self.gate: threading.Event | None = None
        self.reading = threading.Event()  # set once a fetch has begun
        self.lock = threading.Lock()

    def add(self, data: bytes) -> str:
        d = digest_of(data)
        self.blobs[d] = data
        return d

    def size(self, digest: str) -> int | None:
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    def read_range(self, digest: str, start: int, end: int) -> Iterator[bytes]:
        self.reading.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        with self.lock:
            self.ranges.append((digest, start, end))
        yield self.blobs[digest][start:end]


@pytest.fixture
def source() -> MemorySource:
    return MemorySource()


def blob(i: int, size: int = SIZE) -> bytes:
    return bytes([i % 251]) * size


def cached_digests(c: BlobCache) -> set[str]:
    return {e.digest for e in c.entries()}


def test_a_blob_is_fetched_once_then_served_from_the_cache(tmp_path: Path, source: MemorySource) -> None:
    d = source.add(blob(1))
    c = BlobCache(tmp_path / "cache", 10 * SIZE, source)
    with c.open(d) as p:
        assert p.read_bytes() == blob(1) and p == c.path(d)
    with c.open(d) as p:
        assert p.read_bytes() == blob(1)
    assert c.fetches == 1 and len(source.ranges) == 1
    assert not os.access(c.path(d), os.W_OK) or os.geteuid() == 0  # read-only


def test_evicts_the_least_recently_used_first(tmp_path: Path, source: MemorySource) -> None:
    a, b, c_, d = (source.add(blob(i)) for i in range(4))
    c = BlobCache(tmp_path / "cache", 3 * SIZE, source)
    for x in (a, b, c_):
        with c.open(x):
            pass
    with c.open(a):  # a is now more recent than b and c
        pass
    with c.open(d):
        pass
    assert cached_digests(c) == {a, c_, d}  # b was the least recently used
    assert [e.digest for e in c.entries()] == [c_, a, d]
    with c.open(b):  # fetched again; now c is the oldest
        pass
    assert cached_digests(c) == {a, d, b} and c.fetches == 5


def test_the_size_bound_holds_and_blobs_in_use_are_kept(tmp_path: Path, source: MemorySource) -> None:
    digests = [source.add(blob(i, SIZE + 100 * i)) for i in range(8)]
    c = BlobCache(tmp_path / "cache", 3 * SIZE, source)
    for x in digests[:5]:
        with c.open(x):
            assert c.used_bytes() <= 3 * SIZE
    big = source.add(b"x" * (3 * SIZE + 1))
    with pytest.raises(StoreError, match="larger than the cache") as exc, c.open(big):
        pass
    assert exc.value.hint is not None and "LORAHUB_CACHE_MAX_BYTES" in exc.value.hint
    # two blobs in use take the room: a third that does not fit beside them is refused, and
    # neither of them is evicted to make room for it
    x, y, z = source.add(blob(20)), source.add(blob(21)), source.add(blob(22, SIZE + SIZE // 2))
    with c.open(x) as px, c.open(y) as py:
        with pytest.raises(StoreError, match="cannot hold"), c.open(z):
            pass
        assert px.read_bytes() == blob(20) and py.read_bytes() == blob(21)
    with c.open(z):  # once they are free, they may go
        pass
    assert c.used_bytes() <= 3 * SIZE
    assert list((tmp_path / "cache" / "tmp").iterdir()) == []


def test_two_threads_filling_the_same_blob_fetch_it_once(tmp_path: Path, source: MemorySource) -> None:
    """Two workers (two cache objects on one folder, as two processes would be) want the same
    missing blob at once: one fetch, one copy, both read it whole."""
    d = source.add(os.urandom(5 * SIZE))
    caches = [BlobCache(tmp_path / "cache", 100 * SIZE, source) for _ in range(2)]
    source.gate = threading.Event()
    got: list[bytes] = []
    failures: list[BaseException] = []

    def use(c: BlobCache) -> None:
        try:
            if c is caches[1]:
                # the first is fetching (and holds the blob's lock) until this one comes too
                assert source.reading.wait(30) and source.gate is not None
                source.gate.set()
            with c.open(d) as p:
                got.append(p.read_bytes())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=use, args=(c,)) for c in caches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert failures == []
    assert got == [source.blobs[d]] * 2
    assert sum(c.fetches for c in caches) == 1 and len(source.ranges) == 1
    assert cached_digests(caches[0]) == {d}
    assert list((tmp_path / "cache" / "sha256").glob("??/*.part")) == []


def test_a_damaged_entry_is_found_and_fetched_again(tmp_path: Path, source: MemorySource) -> None:
    d = source.add(blob(7))
    c = BlobCache(tmp_path / "cache", 10 * SIZE, source)
    with c.open(d):
        pass
    entry = c.path(d)
    os.chmod(entry, 0o644)
    with open(entry, "r+b") as fh:  # same size, one byte flipped
        fh.seek(10)
        fh.write(b"\x00")
    with c.open(d) as p:
        assert p.read_bytes() == blob(7)
    assert c.fetches == 2
    # a fresh cache object (another process) checks what it has not checked itself
    other = BlobCache(tmp_path / "cache", 10 * SIZE, source)
    cache_mod._checked.clear()
    with open(entry, "rb") as fh:
        assert fh.read() == blob(7)
    with other.open(d, verify=True) as p:
        assert p.read_bytes() == blob(7)
    assert other.fetches == 0


def test_wrong_bytes_from_the_store_are_never_cached(tmp_path: Path, source: MemorySource) -> None:
    d = source.add(blob(3))
    source.blobs[d] = blob(4)  # the store holds other bytes under that digest
    c = BlobCache(tmp_path / "cache", 10 * SIZE, source)
    with pytest.raises(IntegrityError, match="corrupted"), c.open(d):
        pass
    assert c.entries() == [] and list((tmp_path / "cache" / "tmp").iterdir()) == []
    with pytest.raises(IntegrityError, match="missing"), c.open(digest_of(b"never stored")):
        pass


def test_fills_by_ranged_reads(tmp_path: Path, source: MemorySource, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_mod, "RANGE_BYTES", 300)
    data = os.urandom(1000)
    d = source.add(data)
    c = BlobCache(tmp_path / "cache", 10 * SIZE, source)
    with c.open(d) as p:
        assert p.read_bytes() == data
    assert [(s, e) for _, s, e in source.ranges] == [(0, 300), (300, 600), (600, 900), (900, 1000)]


def test_the_fetch_of_a_killed_worker_is_cleared(tmp_path: Path, source: MemorySource) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    d = source.add(blob(1))
    c = BlobCache(tmp_path / "cache", 2 * SIZE, source)
    (tmp_path / "cache" / "tmp").mkdir(parents=True)
    stale = tmp_path / "cache" / "tmp" / f"{'0' * 64}.{2 * SIZE}.{pid}-abcd.part"
    stale.write_bytes(b"half")
    with c.open(d):  # would not fit if the dead fetch still counted
        pass
    assert not stale.exists()


def test_over_s3_the_cache_reads_ranges_of_the_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    boto3 = pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    from lora_hub.store.cache import CachedStore, cached
    from lora_hub.store.s3 import S3Store

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "LORAHUB_HOME": str(tmp_path / "home"),
        }.items():
            monkeypatch.setenv(key, value)
        boto3.client("s3").create_bucket(Bucket="cache-test")
        monkeypatch.setattr(cache_mod, "RANGE_BYTES", 1 << 16)
        store = S3Store("s3://cache-test/p")
        data = os.urandom(200_000)
        src = tmp_path / "blob"
        src.write_bytes(data)
        d = digest_of(data)
        store.put_file(src, d)
        wrapped = cached(store, tmp_path / "cache", 1 << 20)
        assert isinstance(wrapped, CachedStore) and wrapped.has(d)
        with wrapped.open_local(d) as p:
            assert p.read_bytes() == data and p.is_relative_to(tmp_path / "cache")
        assert wrapped.cache.fetches == 1
    finally:
        server.stop()
