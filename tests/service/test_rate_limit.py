"""The per-process bound on uploads (``LORAHUB_MAX_UPLOADS``): one more is 429 with Retry-After;
the remote client waits what Retry-After says (recorded, not slept), a bounded number of times,
then says the server was busy. Deterministic: the upload that holds the slot is paused on an
event, and the test learns that the server holds it from the slot itself, not from a clock."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from lora_hub.api import ServingHub
from lora_hub.errors import ServerError
from lora_hub.remote import client as remote_client
from lora_hub.remote.client import RemoteHub
from lora_hub.service import create_app
from lora_hub.settings import Settings
from tests.helpers import write_adapter
from tests.service.conftest import START_TIMEOUT_S, _Server, make_hub

WAIT_S = 20


@contextlib.contextmanager
def _serve_app(hub: ServingHub) -> Iterator[tuple[str, threading.Event, threading.Event]]:
    """The app over ``hub`` on 127.0.0.1:0, whose upload slots say when one is taken
    (``taken``) and which hold an upload until ``release`` is set, when ``release`` is not set yet."""
    app = create_app(hub=hub)
    slots = app.state.upload_slots
    taken, release = threading.Event(), threading.Event()
    hold = slots.hold

    @contextlib.contextmanager
    def announcing() -> Iterator[None]:
        with hold():
            taken.set()
            yield

    slots.hold = announcing
    server = _Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(START_TIMEOUT_S) and server.started
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}", taken, release
    finally:
        release.set()
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _held_upload(url: str, token: str, release: threading.Event) -> tuple[threading.Thread, list[int]]:
    """A PUT of a blob whose body waits for ``release`` after its first block, in a thread."""
    data = b"h" * 200_000
    answers: list[int] = []

    def body() -> Iterator[bytes]:
        yield data[:1000]
        release.wait(WAIT_S)
        yield data[1000:]

    def run() -> None:
        headers = {"Authorization": f"Bearer {token}", "Content-Length": str(len(data))}
        answers.append(httpx.put(f"{url}/v1/blobs/acme/{_digest(data)}", content=body(), headers=headers,
                                 timeout=WAIT_S).status_code)  # fmt: skip

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, answers


def test_one_upload_too_many_is_429_with_retry_after(tmp_path: Path, catalog_url: str) -> None:
    with make_hub(tmp_path / "h", catalog_url, max_uploads=1) as hub, _serve_app(hub) as (url, taken, release):
        token = hub.token_create("write", "acme").secret
        thread, answers = _held_upload(url, token, release)
        assert taken.wait(WAIT_S)  # the server holds the one slot
        auth = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=auth, timeout=WAIT_S) as c:
            busy = c.put(f"/v1/blobs/acme/{_digest(b'x')}", content=b"x")
            assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
            assert busy.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
            loc = c.post("/v1/blobs/acme/uploads").headers["location"]  # starting a session takes no slot
            assert c.patch(loc, content=b"y").status_code == 429
            assert c.get("/v1/adapters", params={"namespace": "acme"}).status_code == 200  # reads go on
            release.set()
            thread.join(WAIT_S)
            assert answers == [201]
            assert c.put(f"/v1/blobs/acme/{_digest(b'x')}", content=b"x").status_code == 201  # the slot is free


def _remote(url: str, home: Path, token: str | None, **kwargs: object) -> RemoteHub:
    settings = Settings(**{**Settings.from_env(home=home).__dict__, "server_url": url, "token": token})
    return RemoteHub(settings, **kwargs)  # type: ignore[arg-type]


def test_the_client_honours_retry_after_a_bounded_number_of_times(tmp_path: Path) -> None:
    answers = iter([(429, "3"), (429, "1000"), (429, "soon"), (200, None)])

    def handler(request: httpx.Request) -> httpx.Response:
        status, retry = next(answers)
        headers = {"Retry-After": retry} if retry else {}
        return httpx.Response(status, json=[] if status == 200 else {"errors": []}, headers=headers)

    waits: list[float] = []
    with _remote("http://lorahub.test", tmp_path, "t", transport=httpx.MockTransport(handler),
                 sleep=waits.append) as remote:  # fmt: skip
        assert remote.methods() == []
    assert waits == [3.0, remote_client.MAX_RETRY_AFTER_S, 4.0]  # as told, capped, else a doubling backoff

    calls: list[httpx.Request] = []

    def always_busy(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(429, headers={"Retry-After": "2"}, json={"errors": []})

    waits.clear()
    busy = _remote("http://lorahub.test", tmp_path, "t", transport=httpx.MockTransport(always_busy), sleep=waits.append)
    with busy as remote, pytest.raises(ServerError, match=r"busy \(429\) for 6 attempts") as info:
        remote.methods()
    assert len(calls) == remote_client.RETRIES and waits == [2.0] * (remote_client.RETRIES - 1)
    assert "LORAHUB_MAX_UPLOADS" in str(info.value)


def test_a_push_waits_for_a_free_slot(tmp_path: Path, catalog_url: str) -> None:
    """The server is full when the push starts; the client's wait (recorded) is when the other
    upload ends, so the retry finds the slot free. Both blob routes: one PUT, one session."""
    with make_hub(tmp_path / "h", catalog_url, max_uploads=1) as hub, _serve_app(hub) as (url, taken, release):
        token = hub.token_create("write", "acme").secret
        thread, answers = _held_upload(url, token, release)
        assert taken.wait(WAIT_S)
        waits: list[float] = []

        def wait(seconds: float) -> None:
            waits.append(seconds)
            release.set()
            thread.join(WAIT_S)

        src = write_adapter(tmp_path / "a", seed=4)
        with _remote(url, tmp_path / "c", token, sleep=wait, session_threshold=10_000, chunk_size=8192) as remote:
            result = remote.push(src, "acme/a")
        assert waits == [1.0] and answers == [201]
        assert {f.path: f.digest for f in result.version.files} == {
            p.name: _digest(p.read_bytes()) for p in src.iterdir()
        }
