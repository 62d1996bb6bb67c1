"""A real lorahub server for the tests: uvicorn on 127.0.0.1, port 0, in a thread of the test
process, over a fresh hub on the parametrised catalog (SQLite and Postgres); shut down after."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from lora_hub.api import ServingHub
from lora_hub.cli.main import app
from lora_hub.service import create_app
from lora_hub.settings import Settings

START_TIMEOUT_S = 30


class _Server(uvicorn.Server):
    """Says when it listens, through an event rather than a polled flag."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets)
        self.ready.set()


@dataclass
class Served:
    url: str
    hub: ServingHub
    home: Path
    tokens: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def serve(hub: ServingHub) -> Iterator[str]:
    """Run the app over ``hub`` on 127.0.0.1:<free port>; yield its URL; stop it on exit."""
    config = uvicorn.Config(create_app(hub=hub), host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = _Server(config)
    thread = threading.Thread(target=server.run, name="lorahub-test-server", daemon=True)
    thread.start()
    try:
        if not server.ready.wait(START_TIMEOUT_S) or not server.started:
            raise RuntimeError("the test server did not start")
        host, port = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


def make_hub(home: Path, catalog_url: str, **overrides: Any) -> ServingHub:
    settings = Settings.from_env(home=home, database_url=catalog_url, store_url=f"file://{home / 'blobs'}")
    if overrides:
        settings = Settings(**{**settings.__dict__, **overrides})
    return ServingHub(settings=settings)


@pytest.fixture
def served(tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    """A server over its own home, with tokens: admin (*), write and read on ``acme``, write on ``other``."""
    for key in ("LORAHUB_URL", "LORAHUB_TOKEN", "LORAHUB_STORE_URL", "LORAHUB_DEBUG", "LORAHUB_ANONYMOUS_READ"):
        monkeypatch.delenv(key, raising=False)
    home = tmp_path / "server-home"
    with make_hub(home, catalog_url) as hub, serve(hub) as url:
        tokens = {
            "admin": hub.token_create("admin", "*").secret,
            "write": hub.token_create("write", "acme").secret,
            "read": hub.token_create("read", "acme").secret,
            "other": hub.token_create("write", "other").secret,
        }
        yield Served(url=url, hub=hub, home=home, tokens=tokens)


@pytest.fixture
def second_catalog_url(tmp_path: Path, catalog_url: str, request: pytest.FixtureRequest) -> str:
    """Another catalog of the same kind as ``catalog_url`` (for a local hub beside a server)."""
    if catalog_url.startswith("sqlite"):
        return f"sqlite:///{tmp_path / 'second.db'}"
    return str(request.getfixturevalue("postgres").new_database())


@pytest.fixture
def workers(served: Served) -> Iterator[None]:
    """On PostgreSQL, a worker beside the server (on SQLite the server runs its jobs itself)."""
    if served.hub.settings.database_url.startswith("sqlite"):
        yield
        return
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            served.hub.run_worker(wait=False)
            stop.wait(0.1)

    thread = threading.Thread(target=work)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=60)


def cli(served: Served, token: str, *args: str, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str, str]:
    """``lorahub ARGS`` against the server with the token named ``token``: (exit code, stdout, stderr)."""
    monkeypatch.setenv("LORAHUB_URL", served.url)
    monkeypatch.setenv("LORAHUB_TOKEN", served.tokens[token])
    result = CliRunner().invoke(app, list(args))
    assert "Traceback" not in result.stdout + result.stderr
    return result.exit_code, result.stdout, result.stderr
