"""Many clients at once against one server: no 5xx, versions without gaps, every pull verified."""

from __future__ import annotations

import threading
from pathlib import Path

from lora_hub.remote import RemoteHub
from lora_hub.settings import Settings
from tests.helpers import tree_bytes, write_adapter
from tests.service.conftest import Served

CLIENTS = 12


def test_concurrent_push_pull_list(served: Served, tmp_path: Path) -> None:
    sources = [write_adapter(tmp_path / f"in{i}", seed=100 + i) for i in range(CLIENTS)]
    base = Settings.from_env(home=tmp_path / "client")
    settings = Settings(**{**base.__dict__, "server_url": served.url, "token": served.tokens["write"]})
    barrier = threading.Barrier(CLIENTS)
    failures: list[BaseException] = []
    refs: list[str] = []

    def client(i: int) -> None:
        try:
            with RemoteHub(settings) as remote:
                barrier.wait(timeout=60)
                pushed = remote.push(sources[i], "acme/crowd", metrics={"i": i})
                refs.append(pushed.version.ref)
                remote.search(namespace="acme", where="i>=0")
                out = remote.pull(pushed.version.ref, tmp_path / f"out{i}")
                assert tree_bytes(Path(out.path)) == tree_bytes(sources[i])
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert sorted(refs) == sorted(f"acme/crowd:{v}" for v in range(1, CLIENTS + 1))
    assert served.hub.versions("acme/crowd") == list(range(1, CLIENTS + 1))
    by_metric = {int(v.metrics["i"]): v for v in served.hub.list_versions(name="crowd", limit=100)}
    assert sorted(by_metric) == list(range(CLIENTS))
