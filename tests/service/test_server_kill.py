"""A `lorahub serve` process killed (SIGKILL) in the middle of an upload loses nothing that was
committed, shows nothing of the upload, and the next server start removes the staged part."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from lora_hub.api import ServingHub
from lora_hub.remote import RemoteHub
from lora_hub.settings import Settings
from tests.helpers import tree_bytes, write_adapter

START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    code = "from lora_hub.cli import main; main()"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--port", str(port)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:  # a bound on the wait, not a measured time
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("lorahub serve did not start")


def test_killed_server_loses_nothing_committed(tmp_path: Path, catalog_url: str) -> None:
    home = tmp_path / "server"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    env |= {"LORAHUB_HOME": str(home), "LORAHUB_DATABASE_URL": catalog_url}
    with ServingHub(settings=Settings.from_env(home=home, database_url=catalog_url)) as hub:
        token = hub.token_create("write", "acme").secret
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    client = Settings(**{**Settings.from_env(home=tmp_path / "c").__dict__, "server_url": url, "token": token})
    src = write_adapter(tmp_path / "a", seed=9)

    server = _start(env, port)
    try:
        with RemoteHub(client) as remote:
            committed = remote.push(src, "acme/kept").version
        data = os.urandom(2 << 20)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(
                f"PUT /v1/blobs/acme/{digest} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
                + data[: 1 << 20]
            )
            uploads = home / "uploads"
            deadline = time.monotonic() + 20
            while not (uploads.is_dir() and any(p.suffix == ".part" for p in uploads.iterdir())):
                assert time.monotonic() < deadline, "the upload never started"
                time.sleep(0.02)
            server.send_signal(signal.SIGKILL)
            server.wait(20)
        assert any(p.suffix == ".part" for p in uploads.iterdir())  # what the killed server left
    finally:
        server.kill()
        server.wait(20)

    server = _start(env, port)
    try:
        assert not any(p.suffix == ".part" for p in (home / "uploads").iterdir())  # cleaned on start
        with RemoteHub(client) as remote:
            assert remote.show("acme/kept:1").digest == committed.digest
            remote.pull("acme/kept:1", tmp_path / "out")
            assert not remote._has_blob("acme", digest)
        assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    finally:
        server.terminate()
        server.wait(20)
