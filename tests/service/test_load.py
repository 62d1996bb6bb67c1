"""100 clients at once against two `lorahub serve` processes that share one PostgreSQL catalog and
one S3 store (moto's server on 127.0.0.1): zero 5xx, the versions of each name 1..n with no gap
and no duplicate, and every pull the bytes that were pushed.

Each client is a thread of the test process with its own two ``RemoteHub`` objects, one per server:
it pushes through one server, then lists, pulls and pushes the same content again through the
other, so that every write is read back by the other process. Every response is counted twice: by
the clients' transport, and from the servers' access logs once they have stopped; both counts must
agree, so no request went unanswered or uncounted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer

from lora_hub.api import ServingHub
from lora_hub.remote import RemoteHub
from lora_hub.settings import Settings
from tests.conftest import Postgres
from tests.helpers import OUTPUT_MARK, write_adapter
from tests.service._procs import serve_processes

pytestmark = pytest.mark.postgres

CLIENTS = 100
NAMES = 4  # 25 clients push to each name at once: the version race is the point
SERVERS = 2
RUN_TIMEOUT_S = 120  # a bound on the whole run (it takes ~20 s on 2 cores), not a measured time
AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class CountingTransport(httpx.HTTPTransport):
    """An httpx transport that records (server, method, path, status) of every response."""

    def __init__(self, seen: list[tuple[str, str, str, int]]) -> None:
        super().__init__()
        self.seen = seen

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.seen.append(
            (f"{request.url.host}:{request.url.port}", request.method, request.url.path, response.status_code)
        )
        return response


@pytest.fixture
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (its request log kept out of a failure's report)."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        werkzeug.setLevel(level)


def _sha256_tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (lora-hub's marker excepted) -> its sha256, by hashlib."""
    return {
        p.relative_to(folder).as_posix(): "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != OUTPUT_MARK
    }


def test_hundred_clients_two_servers_postgres_s3(tmp_path: Path, postgres: Postgres, s3_endpoint: str) -> None:
    catalog = postgres.new_database()
    bucket = f"lorahub-load-{os.urandom(4).hex()}"
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=AWS["AWS_REGION"],
    )
    s3.create_bucket(Bucket=bucket)
    with ServingHub(settings=Settings.from_env(home=tmp_path / "admin", database_url=catalog)) as admin:
        token = admin.token_create("write", "acme").secret

    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("LORAHUB_", "AWS_"))}
    shared = {
        **AWS,
        "AWS_ENDPOINT_URL": s3_endpoint,
        "LORAHUB_DATABASE_URL": catalog,
        "LORAHUB_STORE_URL": f"s3://{bucket}/team",
    }
    # One home each (staged uploads, the S3 read cache): the processes share only the catalog and the store.
    envs = [{**base_env, **shared, "LORAHUB_HOME": str(tmp_path / f"server{k}")} for k in range(SERVERS)]

    sources = [write_adapter(tmp_path / "in" / str(i), seed=1000 + i) for i in range(CLIENTS)]
    pushed_digests = [_sha256_tree(src) for src in sources]
    names = [f"acme/load-{i % NAMES}" for i in range(CLIENTS)]
    seen: list[tuple[str, str, str, int]] = []
    failures: list[tuple[int, BaseException]] = []
    refs: dict[int, str] = {}
    barrier = threading.Barrier(CLIENTS)

    with serve_processes(envs, tmp_path / "logs") as servers:
        client_home = Settings.from_env(home=tmp_path / "client")

        def remote(k: int) -> RemoteHub:
            settings = Settings(**{**client_home.__dict__, "server_url": servers[k].url, "token": token})
            return RemoteHub(settings, transport=CountingTransport(seen))

        def client(i: int) -> None:
            try:
                with remote(i % SERVERS) as here, remote((i + 1) % SERVERS) as there:
                    barrier.wait(timeout=RUN_TIMEOUT_S)
                    pushed = here.push(sources[i], names[i], metrics={"client": i})
                    assert pushed.created
                    ref = pushed.version.ref
                    refs[i] = ref
                    listed = there.list_versions(namespace="acme", where=f"client={i}")
                    assert [v.ref for v in listed] == [ref]  # committed, so visible to the other process
                    out = there.pull(ref, tmp_path / "out" / str(i))
                    assert _sha256_tree(Path(out.path)) == pushed_digests[i]
                    again = there.push(sources[i], names[i], metrics={"client": i})
                    assert (again.version.ref, again.created, again.bytes_written) == (ref, False, 0)
            except BaseException as exc:
                failures.append((i, exc))
                barrier.abort()

        threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(CLIENTS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not [t.name for t in threads if t.is_alive()], "clients still running after the bound"
        statuses = Counter(status for *_, status in seen)
        assert [s for s in statuses if s >= 500] == [], statuses
        assert failures == [], failures[:5]

        with remote(0) as check:
            for k in range(NAMES):
                name = f"acme/load-{k}"
                count = names.count(name)
                assert check.versions(name) == list(range(1, count + 1))
                got = sorted(refs[i] for i in range(CLIENTS) if names[i] == name)
                assert got == sorted(f"{name}:{v}" for v in range(1, count + 1))  # each version pushed once
            stored = check.list_versions(namespace="acme", limit=CLIENTS + 1)
        by_client = {int(v.metrics["client"]): v for v in stored}
        assert sorted(by_client) == list(range(CLIENTS)) and len(stored) == CLIENTS
        for i, v in by_client.items():
            assert v.ref == refs[i]
            assert {f.path: f.digest for f in v.files} == pushed_digests[i]

    # The blobs in the bucket are exactly the files pushed (no stray object), and no upload is left open.
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket) for o in page["Contents"]]
    assert all(k.startswith("team/") for k in keys)
    assert sorted(k.rsplit("/", 1)[-1] for k in keys) == sorted(
        {d.removeprefix("sha256:") for files in pushed_digests for d in files.values()}
    )
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    logged = {s.url.removeprefix("http://"): [a for a in s.access_log() if a.path != "/readyz"] for s in servers}
    for server in servers:
        assert "Traceback" not in server.output(), server.output()[-4000:]
    for where, lines in logged.items():
        assert [a for a in lines if a.status >= 500] == []
        from_clients = sorted((m, p, s) for w, m, p, s in seen if w == where)
        assert sorted((a.method, a.path, a.status) for a in lines) == from_clients
        assert len(lines) >= CLIENTS * 3, f"{where} answered only {len(lines)} requests"  # a share of the load
