"""The S3 blob store against a real S3 wire protocol: moto's threaded server on 127.0.0.1, port 0.

moto checks no checksum, so what these tests check is our own digest check: a wrong digest or an
interrupted upload leaves no object and no multipart upload behind."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

boto3 = pytest.importorskip("boto3", reason="the s3 extra (boto3) is not installed")
moto_server = pytest.importorskip("moto.server", reason="moto[s3] + flask are not installed")

from lora_hub import Hub  # noqa: E402
from lora_hub.errors import IntegrityError  # noqa: E402
from lora_hub.store import open_store  # noqa: E402
from lora_hub.store.s3 import PART_MIN, S3Store  # noqa: E402
from tests.helpers import tree_bytes, write_adapter  # noqa: E402

BUCKET = "lorahub-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """AWS variables pointing at the moto server, a fresh bucket; returns the bucket's store URL."""
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LORAHUB_HOME": str(tmp_path / "home"),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"{BUCKET}-{os.urandom(4).hex()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/team"


def _file(path: Path, data: bytes) -> tuple[Path, str]:
    path.write_bytes(data)
    return path, "sha256:" + hashlib.sha256(data).hexdigest()


def _objects(url: str) -> list[str]:
    bucket = url.removeprefix("s3://").split("/")[0]
    return [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket).get("Contents", [])]


def _uploads(url: str) -> list[str]:
    bucket = url.removeprefix("s3://").split("/")[0]
    return [u["Key"] for u in boto3.client("s3").list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


@pytest.mark.parametrize("size", [0, 2048, 2 * PART_MIN + 12345])
def test_round_trip(s3_env: str, tmp_path: Path, size: int) -> None:
    store = open_store(s3_env)
    assert isinstance(store, S3Store)
    data = os.urandom(size)
    src, digest = _file(tmp_path / "blob", data)
    assert not store.has(digest)
    assert store.put_file(src, digest) == size
    assert store.has(digest) and store.put_file(src, digest) == 0
    hexd = digest.removeprefix("sha256:")
    assert _objects(s3_env) == [f"team/sha256/{hexd[:2]}/{hexd}"]
    out = tmp_path / "out"
    with open(out, "wb") as fh:
        assert store.copy_out(digest, fh) == size
    assert out.read_bytes() == data
    assert store.check(digest) == ("ok", size)
    with store.open_local(digest) as local:
        assert local.read_bytes() == data
    assert list(store.digests()) == [(digest, size)]
    assert store.delete(digest) == size and not store.has(digest)
    assert _uploads(s3_env) == []


@pytest.mark.parametrize("size", [100, PART_MIN + 1])
def test_a_wrong_digest_stores_nothing(s3_env: str, tmp_path: Path, size: int) -> None:
    store = open_store(s3_env)
    src, _ = _file(tmp_path / "blob", os.urandom(size))
    wrong = "sha256:" + "ab" * 32
    with pytest.raises(IntegrityError, match="changed while it was being stored"):
        store.put_file(src, wrong)
    assert _objects(s3_env) == [] and _uploads(s3_env) == []


def test_concurrent_uploads_of_one_blob_store_one_object(s3_env: str, tmp_path: Path) -> None:
    data = os.urandom(PART_MIN + 99)
    src, digest = _file(tmp_path / "blob", data)
    stores = [S3Store(s3_env) for _ in range(4)]
    written: list[int] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(stores))

    def put(store: S3Store) -> None:
        try:
            barrier.wait(timeout=30)
            written.append(store.upload(src, digest))  # each one conditional: If-None-Match: *
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(written)[-1] == len(data) and sum(written) >= len(data)
    assert len(_objects(s3_env)) == 1 and _uploads(s3_env) == []
    with open(tmp_path / "out", "wb") as fh:
        stores[0].copy_out(digest, fh)
    assert (tmp_path / "out").read_bytes() == data


def test_corrupted_object_is_caught_on_read_and_repaired_by_push(s3_env: str, tmp_path: Path) -> None:
    store = open_store(s3_env)
    src, digest = _file(tmp_path / "blob", b"good bytes" * 100)
    store.put_file(src, digest)
    key = _objects(s3_env)[0]
    boto3.client("s3").put_object(Bucket=s3_env.split("/")[2], Key=key, Body=b"bad bytes" * 100)
    assert store.check(digest)[0] == "corrupted"
    with pytest.raises(IntegrityError, match="corrupted"), open(tmp_path / "out", "wb") as fh:
        store.copy_out(digest, fh)
    assert store.put_file(src, digest, repair=True) == 1000
    assert store.check(digest) == ("ok", 1000)


def test_abandoned_uploads_are_aborted(s3_env: str) -> None:
    store = open_store(s3_env)
    assert isinstance(store, S3Store)
    bucket = s3_env.split("/")[2]
    boto3.client("s3").create_multipart_upload(Bucket=bucket, Key="team/sha256/00/abandoned")
    # moto dates every upload 2010-11-10: old enough for the default threshold.
    assert store.remove_stale_temp(dry_run=True) == 1 and _uploads(s3_env)
    assert store.remove_stale_temp() == 1
    assert _uploads(s3_env) == []


def test_recent_uploads_are_left_to_their_writers() -> None:
    """A young upload may have a live writer (moto cannot date one: a stand-in client does)."""
    now = datetime.now(UTC)
    uploads = [{"Key": "p/young", "UploadId": "1", "Initiated": now - timedelta(hours=1)},
               {"Key": "p/old", "UploadId": "2", "Initiated": now - timedelta(hours=25)}]  # fmt: skip
    young, old = "a" * 32, "b" * 32  # upload sessions: the newest of their staging objects dates them
    staged = [{"Key": f"p/staging/{young}/meta.json", "LastModified": now - timedelta(hours=30)},
              {"Key": f"p/staging/{young}/chunk-{0:020d}", "LastModified": now - timedelta(hours=2)},
              {"Key": f"p/staging/{old}/meta.json", "LastModified": now - timedelta(hours=26)}]  # fmt: skip
    aborted: list[str] = []
    deleted: list[str] = []

    class Client:
        def get_paginator(self, name: str) -> object:
            if name == "list_objects_v2":
                return type("P", (), {"paginate": lambda self, Prefix, **kw: [
                    {"Contents": [o for o in staged if o["Key"].startswith(Prefix)]}]})()  # fmt: skip
            assert name == "list_multipart_uploads"
            return type("P", (), {"paginate": lambda self, **kw: [{"Uploads": uploads}]})()

        def abort_multipart_upload(self, *, Bucket: str, Key: str, UploadId: str) -> None:
            aborted.append(Key)

        def delete_object(self, *, Bucket: str, Key: str) -> None:
            deleted.append(Key)

    store = S3Store("s3://b/p", client=Client())
    assert store.remove_stale_temp() == 2 and aborted == ["p/old"]
    assert set(deleted) == {f"p/staging/{old}/meta.json"}  # the young session is kept whole


def test_hub_on_s3(s3_env: str, tmp_path: Path, catalog_url: str) -> None:
    """push, pull, verify and gc of a Hub whose blobs live in the bucket."""
    src = write_adapter(tmp_path / "a", seed=1)
    with Hub(tmp_path / "home", database_url=catalog_url, store_url=s3_env) as hub:
        pushed = hub.push(src, "acme/s3")
        assert pushed.created and pushed.bytes_written == sum(p.stat().st_size for p in src.iterdir())
        assert len(_objects(s3_env)) == len(pushed.version.files)
        hub.pull("acme/s3:1", tmp_path / "out")
        assert tree_bytes(tmp_path / "out") == tree_bytes(src)
        assert hub.verify(everything=True).ok
        hub.remove("acme/s3:1")
        report = hub.gc()
        assert report.blobs_removed == len(pushed.version.files)
        assert _objects(s3_env) == []


def test_server_on_s3_push_and_pull(s3_env: str, tmp_path: Path, catalog_url: str) -> None:
    """A remote push streams into the bucket through the server, and a pull comes back verified."""
    from lora_hub.remote import RemoteHub
    from lora_hub.settings import Settings
    from tests.service.conftest import make_hub, serve

    src = write_adapter(tmp_path / "a", seed=2)
    with make_hub(tmp_path / "srv", catalog_url, store_url=s3_env) as hub, serve(hub) as url:
        token = hub.token_create("write", "acme").secret
        client = Settings(**{**Settings.from_env(home=tmp_path / "cli").__dict__, "server_url": url, "token": token})
        with RemoteHub(client) as remote:
            pushed = remote.push(src, "acme/s3")
            assert pushed.created and pushed.bytes_written == sum(p.stat().st_size for p in src.iterdir())
            assert len(_objects(s3_env)) == len(pushed.version.files)
            remote.pull("acme/s3:1", tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)


@pytest.mark.parametrize("size", [3000, PART_MIN + 4321])
def test_upload_sessions_are_staging_objects(s3_env: str, size: int) -> None:
    """Chunks become objects under staging/ only once whole; another store object over the same
    bucket (another server process) sees the session; completing streams the chunks into the blob
    and checks the digest; a wrong one stores nothing; abandoned sessions are swept."""
    data = os.urandom(size)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    a, b = S3Store(s3_env), S3Store(s3_env)
    a.stage_create("a" * 32, {"namespace": "acme"})
    assert b.stage_info("a" * 32) == ({"namespace": "acme"}, 0)
    cut = size // 3
    with a.stage_append("a" * 32, 0) as w:
        w.write(data[:cut])
    with pytest.raises(RuntimeError), b.stage_append("a" * 32, cut) as w:
        w.write(data[cut : cut + 10])
        raise RuntimeError("the client broke off")  # nothing of this chunk is staged
    assert b.stage_info("a" * 32) == ({"namespace": "acme"}, cut)
    with b.stage_append("a" * 32, cut) as w:
        w.write(data[cut:])
    assert a.stage_info("a" * 32) == ({"namespace": "acme"}, size)
    assert b"".join(a.stage_read("a" * 32)) == data
    assert not a.has(digest)
    assert b.stage_commit("a" * 32, digest, size) == size
    assert a.has(digest) and a.check(digest) == ("ok", size)
    assert a.stage_info("a" * 32) is None
    assert not [k for k in _objects(s3_env) if "/staging/" in k] and _uploads(s3_env) == []

    other = "sha256:" + hashlib.sha256(b"other").hexdigest()
    a.stage_create("b" * 32, {"namespace": "acme"})
    with a.stage_append("b" * 32, 0) as w:
        w.write(data)
    with pytest.raises(IntegrityError):
        a.stage_commit("b" * 32, other, size)  # the store's own hash refuses it
    assert not a.has(other) and _uploads(s3_env) == []
    assert a.remove_stale_temp(dry_run=True) == 0  # fresh: kept
    assert a.remove_stale_temp(older_than_s=0) == 1
    assert a.stage_info("b" * 32) is None and not [k for k in _objects(s3_env) if "/staging/" in k]


def test_server_on_s3_resumable_push(s3_env: str, tmp_path: Path, catalog_url: str) -> None:
    """The remote client's session upload through a server whose store is S3."""
    from lora_hub.remote import RemoteHub
    from lora_hub.settings import Settings
    from tests.service.conftest import make_hub, serve

    src = write_adapter(tmp_path / "a", seed=9, rank=64)
    with make_hub(tmp_path / "srv", catalog_url, store_url=s3_env) as hub, serve(hub) as url:
        token = hub.token_create("write", "acme").secret
        client = Settings(**{**Settings.from_env(home=tmp_path / "cli").__dict__, "server_url": url, "token": token})
        with RemoteHub(client, session_threshold=1000, chunk_size=20_000) as remote:
            pushed = remote.push(src, "acme/s3r")
            remote.pull("acme/s3r:1", tmp_path / "out")
    assert {f.path: f.digest for f in pushed.version.files} == {
        p.name: "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest() for p in src.iterdir()
    }
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    assert not [k for k in _objects(s3_env) if "/staging/" in k]
