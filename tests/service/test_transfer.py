"""Content-addressed transfer over real HTTP: HEAD, streamed PUT checked against its digest,
manifest commit (409 listing missing blobs), ranged GET with the digest as ETag; OCI-style errors."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers import write_adapter
from tests.service.conftest import Served


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _client(served: Served, who: str = "write") -> httpx.Client:
    return httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.tokens[who]}"})


def _blob_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "blobs" / "sha256").rglob("*") if p.is_file()) if (home / "blobs").exists() else []


def _manifest(folder: Path) -> list[dict[str, object]]:
    return [
        {"path": p.name, "digest": _digest(p.read_bytes()), "size": p.stat().st_size} for p in sorted(folder.iterdir())
    ]


def test_push_by_blobs_then_manifest(served: Served, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a", seed=1)
    files = _manifest(src)
    with _client(served) as c:
        r = c.post("/v1/adapters/acme/x/-/manifest", json={"files": files})
        assert r.status_code == 409
        err = r.json()["errors"][0]
        assert err["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert err["detail"]["missing"] == sorted(f["digest"] for f in files)
        for f in files:
            assert c.head(f"/v1/blobs/acme/{f['digest']}").status_code == 404
            data = (src / str(f["path"])).read_bytes()
            put = c.put(f"/v1/blobs/acme/{f['digest']}", content=data)
            assert put.status_code == 201 and put.json() == {"digest": f["digest"], "size": len(data),
                                                             "written": len(data)}  # fmt: skip
            head = c.head(f"/v1/blobs/acme/{f['digest']}")
            assert head.status_code == 200 and head.headers["content-length"] == str(len(data))
        r = c.post("/v1/adapters/acme/x/-/manifest", json={"files": files, "tags": ["prod"]})
        assert r.status_code == 201 and r.json()["version"]["ref"] == "acme/x:1"
        assert r.json()["version"]["tags"] == ["prod"]
        again = c.post("/v1/adapters/acme/x/-/manifest", json={"files": files})
        assert again.status_code == 200 and again.json()["created"] is False
    assert served.hub.show("acme/x:1").digest == r.json()["version"]["digest"]
    assert not list((served.home / "uploads").iterdir())  # staging emptied


def test_wrong_digest_is_refused_and_nothing_is_stored(served: Served) -> None:
    data = b"some bytes" * 1000
    claimed = _digest(b"other bytes")
    with _client(served) as c:
        r = c.put(f"/v1/blobs/acme/{claimed}", content=data)
        assert r.status_code == 400
        assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
        assert c.head(f"/v1/blobs/acme/{claimed}").status_code == 404
        assert c.head(f"/v1/blobs/acme/{_digest(data)}").status_code == 404
    assert _blob_files(served.home) == []
    assert not list((served.home / "uploads").iterdir())


def test_streamed_upload_of_a_generator_body(served: Served) -> None:
    """A chunked body (no Content-Length) is read as a stream and checked the same way."""
    chunks = [bytes([i]) * 65536 for i in range(40)]
    digest = _digest(b"".join(chunks))
    with _client(served) as c:
        r = c.put(f"/v1/blobs/acme/{digest}", content=iter(chunks))
        assert r.status_code == 201 and r.json()["size"] == 40 * 65536
    (stored,) = _blob_files(served.home)
    assert _digest(stored.read_bytes()) == digest


def test_download_with_range_and_etag(served: Served, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a", seed=2)
    version = served.hub.push(src, "acme/r").version
    weights = next(f for f in version.files if f.path.endswith(".safetensors"))
    data = (src / weights.path).read_bytes()
    with _client(served, "read") as c:
        full = c.get(f"/v1/blobs/acme/{weights.digest}")
        assert full.status_code == 200 and full.content == data
        assert full.headers["etag"] == f'"{weights.digest}"'
        part = c.get(f"/v1/blobs/acme/{weights.digest}", headers={"Range": "bytes=10-99"})
        assert part.status_code == 206 and part.content == data[10:100]
        assert part.headers["content-range"] == f"bytes 10-99/{len(data)}"
        bad = c.get(f"/v1/blobs/acme/{weights.digest}", headers={"Range": f"bytes={len(data) + 5}-"})
        assert bad.status_code == 416
        # A blob that no version of this namespace uses is not served from it.
        assert c.get(f"/v1/blobs/acme/{_digest(b'nope')}").status_code == 404


def test_manifest_paths_and_sizes_are_checked(served: Served, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a", seed=3)
    files = _manifest(src)
    with _client(served) as c:
        for f in files:
            c.put(f"/v1/blobs/acme/{f['digest']}", content=(src / str(f["path"])).read_bytes()).raise_for_status()
        for bad_path in ("../evil", "/abs", "a//b", "./x"):
            evil = [*files[:1], {**files[1], "path": bad_path}]
            r = c.post("/v1/adapters/acme/x/-/manifest", json={"files": evil})
            assert r.status_code == 400, bad_path
            assert "cannot be used" in r.json()["errors"][0]["message"]
        wrong_size = [files[0], {**files[1], "size": int(str(files[1]["size"])) + 1}]
        r = c.post("/v1/adapters/acme/x/-/manifest", json={"files": wrong_size})
        assert r.status_code == 400 and "the stored blob" in r.json()["errors"][0]["message"]
    assert served.hub.search().items == []


def _raw_request(url: str, head: str) -> tuple[int, dict[str, object]]:
    """Send only a request's head (no body) on a socket; return the status and JSON body."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head.encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, json.loads(data.split(b"\r\n\r\n", 1)[1])


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_too_large_is_413_from_the_headers(served: Served) -> None:
    """The server answers 413 with the body unsent: nothing of it was needed."""
    token = served.tokens["write"]
    too_big = served.hub.settings.max_upload_bytes + 1
    status, body = _raw_request(
        served.url,
        f"PUT /v1/blobs/acme/{_digest(b'x')} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Length: {too_big}\r\n\r\n",
    )
    assert status == 413 and body["errors"][0]["code"] == "SIZE_INVALID"  # type: ignore[index]
    status, _ = _raw_request(
        served.url,
        f"POST /v1/adapters/acme/x/-/manifest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {9 << 20}\r\n\r\n",
    )
    assert status == 413


def test_error_bodies_are_oci_style(served: Served) -> None:
    with _client(served, "admin") as c:
        r = c.get("/v1/adapters/acme/none:1")
        assert r.status_code == 404
        assert r.json() == {
            "errors": [
                {
                    "code": "NOT_FOUND",
                    "message": "no adapter named 'acme/none'",
                    "detail": {"type": "AdapterNotFoundError", "hint": "run `lorahub list` to see what exists"},
                }
            ]
        }
        r = c.get("/v1/adapters", params={"where": "rank>>1"})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID_ARGUMENT"
        r = c.get("/v1/adapters", params={"limit": "many"})
        assert r.status_code == 400 and r.json()["errors"][0]["code"] == "INVALID_ARGUMENT"
        r = c.get("/v1/nothing-here")
        assert r.status_code == 404 and r.json()["errors"][0]["code"] == "NOT_FOUND"


def test_health_readiness_and_openapi(served: Served) -> None:
    assert httpx.get(served.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(served.url + "/readyz").json()["status"] == "ready"
    spec = httpx.get(served.url + "/v1/openapi.json").json()
    paths = set(spec["paths"])
    assert {"/v1/adapters", "/v1/blobs/{namespace}/{digest}", "/v1/adapters/{name}/-/manifest", "/v1/gc",
            "/v1/bases", "/v1/validate", "/v1/methods"} <= paths  # fmt: skip


@pytest.mark.parametrize("who", ["read", "write"])
def test_list_is_limited_to_the_tokens_namespaces(served: Served, tmp_path: Path, who: str) -> None:
    served.hub.push(write_adapter(tmp_path / "a", seed=4), "acme/a")
    served.hub.push(write_adapter(tmp_path / "b", seed=5), "other/b")
    served.hub.push(write_adapter(tmp_path / "c", seed=6), "plain")
    with _client(served, who) as c:
        assert [v["ref"] for v in c.get("/v1/adapters").json()["items"]] == ["acme/a:1"]
        assert c.get("/v1/adapters", params={"namespace": "other"}).json()["items"] == []
    with _client(served, "admin") as c:
        assert sorted(v["ref"] for v in c.get("/v1/adapters").json()["items"]) == ["acme/a:1", "other/b:1", "plain:1"]


def _wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes (a bound, not a measured time)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


def test_a_client_killed_mid_upload_leaves_nothing(served: Served) -> None:
    data = os.urandom(3 << 20)
    digest = _digest(data)
    host, port = served.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            f"PUT /v1/blobs/acme/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {served.tokens['write']}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        )
        sock.sendall(data[: len(data) // 2])
        uploads = served.home / "uploads"
        assert _wait_until(lambda: uploads.is_dir() and any(uploads.iterdir()))  # being received
    # The connection is gone: the staged half is removed and no blob appears.
    assert _wait_until(lambda: not any(uploads.iterdir()))
    with _client(served) as c:
        assert c.head(f"/v1/blobs/acme/{digest}").status_code == 404
    assert _blob_files(served.home) == []


def test_uploads_left_by_a_killed_server_are_cleaned(served: Served) -> None:
    uploads = served.home / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    (uploads / "4242-dead.part").write_bytes(b"half a blob")  # nobody holds it: its server died
    (uploads / "manifest-4242-dead").mkdir()
    (uploads / "manifest-4242-dead" / "adapter_config.json").write_text("{}")
    (uploads / "manifest-4242-dead.lock").write_text("")
    with served.hub.upload_file() as live:
        live.write_bytes(b"being received")
        assert served.hub.clean_uploads() == 2
        assert sorted(p.name for p in uploads.iterdir()) == [live.name]
    assert list(uploads.iterdir()) == []
