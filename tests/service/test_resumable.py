"""Resumable upload sessions over real HTTP, shaped like the OCI distribution protocol: start
(202 + Location), PATCH chunks (Content-Range; 416 with Range when a chunk does not start at the
staged offset), GET/HEAD (204 + Range), PUT ?digest= (visible only when every byte matches),
DELETE; sessions shared by server processes through the store; abandoned sessions swept; the
remote client resuming after a connection dropped mid-chunk; cross-namespace mount. Digests come
from ``hashlib``; byte counts from a loopback TCP proxy that counts what the client sends."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx

from lora_hub.core import transfer
from lora_hub.remote.client import RemoteHub
from lora_hub.settings import Settings
from tests.helpers import write_adapter
from tests.service.conftest import Served, make_hub, serve

JOIN_S = 10


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _client(url: str, token: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _blob(home: Path, digest: str) -> Path:
    hexd = digest.removeprefix("sha256:")
    return home / "blobs" / "sha256" / hexd[:2] / hexd


def _staged(home: Path) -> list[Path]:
    folder = home / "blobs" / "staging"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_session_in_chunks_with_416_and_status(served: Served) -> None:
    data = os.urandom(300_000)
    digest = _digest(data)
    with _client(served.url, served.tokens["write"]) as c:
        start = c.post("/v1/blobs/acme/uploads")
        assert start.status_code == 202
        loc = start.headers["location"]
        assert loc.startswith("/v1/blobs/acme/uploads/") and start.headers["range"] == "0-0"
        assert start.headers["docker-upload-uuid"] == loc.rsplit("/", 1)[1] == start.json()["upload_id"]
        r = c.patch(loc, content=data[:100_000], headers={"Content-Range": "0-99999"})
        assert r.status_code == 202 and r.headers["range"] == "0-99999" and r.headers["location"] == loc
        # a chunk that does not start at the staged offset: 416 with what the server has
        for wrong in ("0-99999", "150000-199999"):
            bad = c.patch(loc, content=data[:50_000] if wrong[0] == "1" else data[:100_000],
                          headers={"Content-Range": wrong})  # fmt: skip
            assert bad.status_code == 416 and bad.headers["range"] == "0-99999", bad.text
        for method in ("GET", "HEAD"):
            st = c.request(method, loc)
            assert st.status_code == 204 and st.headers["range"] == "0-99999"
            assert st.headers["upload-offset"] == "100000"
        r = c.patch(loc, content=data[100_000:250_000], headers={"Content-Range": "bytes 100000-249999/*"})
        assert r.status_code == 202 and r.headers["range"] == "0-249999"
        assert c.head(f"/v1/blobs/acme/{digest}").status_code == 404  # not visible before the end
        assert not _blob(served.home, digest).exists()
        done = c.put(loc, params={"digest": digest}, content=data[250_000:],
                     headers={"Content-Range": "250000-299999"})  # fmt: skip
        assert done.status_code == 201, done.text
        assert done.headers["location"] == f"/v1/blobs/acme/{digest}"
        assert done.headers["docker-content-digest"] == digest
        assert done.json() == {"digest": digest, "size": len(data), "written": len(data)}
        assert c.head(f"/v1/blobs/acme/{digest}").headers["content-length"] == str(len(data))
        assert c.get(loc).status_code == 404  # the session ended
    assert _blob(served.home, digest).read_bytes() == data
    assert _staged(served.home) == []


def test_wrong_digest_stores_nothing_and_delete_aborts(served: Served) -> None:
    data = os.urandom(10_000)
    with _client(served.url, served.tokens["write"]) as c:
        loc = c.post("/v1/blobs/acme/uploads").headers["location"]
        assert c.patch(loc, content=data).status_code == 202  # no Content-Range: at the offset
        claimed = _digest(data + b"x")
        r = c.put(loc, params={"digest": claimed})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert not _blob(served.home, claimed).exists() and not _blob(served.home, _digest(data)).exists()
        assert c.get(loc).status_code == 404
        loc = c.post("/v1/blobs/acme/uploads").headers["location"]
        assert c.patch(loc, content=data).status_code == 202
        assert c.delete(loc).status_code == 204
        assert c.get(loc).status_code == 404
        assert c.put(loc, params={"digest": _digest(data)}).status_code == 404
    assert _staged(served.home) == []
    assert not _blob(served.home, _digest(data)).exists()


def test_sessions_belong_to_their_namespace(served: Served) -> None:
    with _client(served.url, served.tokens["write"]) as c:
        loc = c.post("/v1/blobs/acme/uploads").headers["location"]
        upload_id = loc.rsplit("/", 1)[1]
        assert c.get(f"/v1/blobs/_/uploads/{upload_id}").status_code == 404  # not under another name
        assert c.get("/v1/blobs/acme/uploads/../../x").status_code == 404
        assert c.get("/v1/blobs/acme/uploads/not-an-id").status_code == 400
    with _client(served.url, served.tokens["other"]) as c:
        assert c.get(loc).status_code == 404
        assert c.get(f"/v1/blobs/other/uploads/{upload_id}").status_code == 404
    with _client(served.url, served.tokens["read"]) as c:
        assert c.post("/v1/blobs/acme/uploads").status_code == 403
        assert c.patch(loc, content=b"x").status_code == 403


def test_size_limit_is_413_from_the_headers(tmp_path: Path, catalog_url: str) -> None:
    with make_hub(tmp_path / "h", catalog_url, max_upload_bytes=1000) as hub, serve(hub) as url:
        token = hub.token_create("write", "acme").secret
        with _client(url, token) as c:
            loc = c.post("/v1/blobs/acme/uploads").headers["location"]
            assert c.patch(loc, content=b"a" * 600, headers={"Content-Range": "0-599"}).status_code == 202
            r = c.patch(loc, content=b"b" * 600, headers={"Content-Range": "600-1199"})
            assert r.status_code == 413 and r.json()["errors"][0]["code"] == "SIZE_INVALID"

            def endless() -> Iterator[bytes]:  # no Content-Length: stopped as soon as it passes the limit
                for _ in range(100):
                    yield b"c" * 100

            r = c.patch(loc, content=endless())
            assert r.status_code == 413
            assert 600 <= int(c.get(loc).headers["upload-offset"]) <= 1000  # never past the limit


def test_a_session_moves_between_server_processes(tmp_path: Path, catalog_url: str) -> None:
    """Two servers over one store (as several `lorahub serve` processes): each request of one
    session goes to the other one. A process without the session's hash state (dropped here, as a
    fresh process would lack it) hashes the staged prefix again; the blob is right either way."""
    home = tmp_path / "shared"
    data = os.urandom(200_000)
    digest = _digest(data)
    with make_hub(home, catalog_url) as hub_a, make_hub(home, catalog_url) as hub_b:
        token = hub_a.token_create("write", "acme").secret
        with serve(hub_a) as url_a, serve(hub_b) as url_b, _client(url_a, token) as a, _client(url_b, token) as b:
            loc = a.post("/v1/blobs/acme/uploads").headers["location"]
            assert b.patch(loc, content=data[:80_000], headers={"Content-Range": "0-79999"}).status_code == 202
            transfer._HASHES._states.clear()  # the next process has no hash state of it
            before = transfer.REHASHED["bytes"]
            assert a.head(loc).headers["range"] == "0-79999"
            assert a.patch(loc, content=data[80_000:], headers={"Content-Range": "80000-199999"}).status_code == 202
            assert transfer.REHASHED["bytes"] - before == 80_000  # the prefix, once
            before = transfer.REHASHED["bytes"]
            done = b.put(loc, params={"digest": digest})  # the state is a's only, here: b hashes it all
            assert done.status_code == 201, done.text
            assert transfer.REHASHED["bytes"] - before in (0, 200_000)
    assert _blob(home, digest).read_bytes() == data


def test_abandoned_sessions_are_swept(served: Served) -> None:
    with _client(served.url, served.tokens["write"]) as c:
        old = c.post("/v1/blobs/acme/uploads").headers["location"]
        assert c.patch(old, content=b"x" * 100).status_code == 202
    store = served.hub._ctx.store
    assert store.remove_stale_temp(dry_run=True) == 0  # fresh: kept
    assert store.remove_stale_temp(older_than_s=0) == 1  # type: ignore[call-arg]
    with _client(served.url, served.tokens["write"]) as c:
        assert c.get(old).status_code == 404
    assert _staged(served.home) == []


# --- the remote client ------------------------------------------------------------------------------


class DropOnce:
    """A loopback TCP proxy to ``target`` that counts the bytes clients send, and cuts the one
    connection that carries byte number ``drop_at`` of the client's traffic (mid-chunk)."""

    def __init__(self, target: str, drop_at: int) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.drop_at = drop_at
        self.sent = 0
        self.dropped = False
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def __enter__(self) -> DropOnce:
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(JOIN_S)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(self.target)
            for args in ((client, upstream, True), (upstream, client, False)):
                t = threading.Thread(target=self._pump, args=args, daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        src.settimeout(0.2)
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                if counted:
                    with self._lock:
                        cut = not self.dropped and self.sent + len(data) >= self.drop_at
                        self.sent += len(data)
                        self.dropped = self.dropped or cut
                    if cut:
                        dst.sendall(data[: len(data) // 2])  # half of this block reaches the server
                        break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with_shutdown(s)


def with_shutdown(s: socket.socket) -> None:
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RDWR)
    s.close()


def _remote(url: str, home: Path, token: str, **kwargs: object) -> RemoteHub:
    settings = Settings.from_env(home=home)
    settings = Settings(**{**settings.__dict__, "server_url": url, "token": token})
    return RemoteHub(settings, **kwargs)  # type: ignore[arg-type]


def _big_adapter(folder: Path) -> Path:
    src = write_adapter(folder, seed=3, rank=256)
    return src


def test_push_resumes_after_a_dropped_connection(served: Served, tmp_path: Path) -> None:
    src = _big_adapter(tmp_path / "big")
    weights = src / "adapter_model.safetensors"
    size = weights.stat().st_size
    assert size > 200_000
    chunk = size // 4
    with DropOnce(served.url, drop_at=chunk + chunk // 2) as proxy:  # in the second chunk
        with _remote(proxy.url, tmp_path / "client", served.tokens["write"], session_threshold=100_000,
                     chunk_size=chunk) as remote:  # fmt: skip
            ranges: list[str] = []
            remote._http.event_hooks["request"].append(
                lambda r: ranges.append(r.headers["content-range"]) if r.method == "PATCH" else None
            )
            result = remote.push(src, "acme/big")
        assert proxy.dropped
        starts = [int(r.split("-")[0]) for r in ranges]
        after = starts[starts.index(chunk) + 1 :]  # the chunk that broke off, then where the client went on
        assert chunk <= after[0] < 2 * chunk and after == sorted(set(after))  # from what the server had
        total = sum(p.stat().st_size for p in src.iterdir())
        assert proxy.sent < 2 * total  # headers included: far less than sending it all twice
    assert result.version.ref == "acme/big:1"
    want = {f.name: _digest(f.read_bytes()) for f in src.iterdir()}
    assert {f.path: f.digest for f in result.version.files} == want
    assert _blob(served.home, want["adapter_model.safetensors"]).read_bytes() == weights.read_bytes()
    assert _staged(served.home) == []


# --- mount ---------------------------------------------------------------------------------------


def test_mount_from_a_readable_namespace(served: Served, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "m", seed=5)
    v = served.hub.push(src, "acme/m").version
    digest = next(f.digest for f in v.files if f.path == "adapter_model.safetensors")
    size = (src / "adapter_model.safetensors").stat().st_size
    rw_both = served.hub.token_create("write", "*").secret
    with _client(served.url, rw_both) as c:
        r = c.post("/v1/blobs/team/uploads", params={"mount": digest, "from": "acme"})
        assert r.status_code == 201 and r.headers["location"] == f"/v1/blobs/team/{digest}"
        assert r.json() == {"digest": digest, "size": size, "written": 0}
        # not used by a version of the namespace named: a plain session, nothing told
        r = c.post("/v1/blobs/team/uploads", params={"mount": digest, "from": "nobody"})
        assert r.status_code == 202 and "uploads/" in r.headers["location"]
    with _client(served.url, served.tokens["other"]) as c:  # may not read acme: a session, as for a missing blob
        hidden = c.post("/v1/blobs/other/uploads", params={"mount": digest, "from": "acme"})
        missing = c.post("/v1/blobs/other/uploads", params={"mount": "sha256:" + "0" * 64, "from": "acme"})
        assert hidden.status_code == missing.status_code == 202
        assert set(hidden.json()) == set(missing.json()) == {"upload_id", "location", "offset"}
        assert c.post("/v1/blobs/other/uploads", params={"mount": "nope", "from": "acme"}).status_code == 400


def test_a_session_across_real_server_processes(tmp_path: Path) -> None:
    """Two `lorahub serve` processes over one home (store and catalog), as behind a load
    balancer: the requests of one session alternate between them; neither has the other's hash
    state, and the blob that results is the uploaded bytes."""
    from tests.service._procs import serve_processes

    home = tmp_path / "shared"
    catalog_url = f"sqlite:///{home / 'catalog.db'}"  # the processes matter here, not the catalog
    with make_hub(home, catalog_url) as hub:
        token = hub.token_create("write", "acme").secret
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    env.update({"LORAHUB_HOME": str(home), "LORAHUB_DATABASE_URL": catalog_url})
    data = os.urandom(500_000)
    digest = _digest(data)
    with serve_processes([env, env], tmp_path / "logs") as (one, two):
        a, b = _client(one.url, token), _client(two.url, token)
        with a, b:
            loc = a.post("/v1/blobs/acme/uploads").headers["location"]
            for i, start in enumerate(range(0, len(data), 100_000)):
                c = (a, b)[(i + 1) % 2]
                chunk = data[start : start + 100_000]
                r = c.patch(loc, content=chunk, headers={"Content-Range": f"{start}-{start + len(chunk) - 1}"})
                assert r.status_code == 202, r.text
                assert (b, a)[(i + 1) % 2].get(loc).headers["upload-offset"] == str(start + len(chunk))
            bad = a.patch(loc, content=b"x", headers={"Content-Range": "0-0"})
            assert bad.status_code == 416 and bad.headers["range"] == f"0-{len(data) - 1}"
            assert b.put(loc, params={"digest": digest}).status_code == 201
            assert a.head(f"/v1/blobs/acme/{digest}").headers["content-length"] == str(len(data))
    assert _blob(home, digest).read_bytes() == data
    assert _staged(home) == []
