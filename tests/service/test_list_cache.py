"""The server's listing cache (``SearchCache``): ``GET /v1/adapters`` answers what the catalog
holds now, after every kind of change (push, tag, untag, metrics, description, rm, a base's
fits), whichever process made it (this server's hub, or another ``Hub`` on the same catalog,
as another server or a local command would); the JSON is the page ``search`` returns. The
catalog generation moves with those changes and not with job progress or store leases. On
SQLite and Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from lora_hub import Hub
from lora_hub.types import ListQuery
from tests.helpers import save_llama, write_adapter
from tests.service.conftest import Served


def _listed(c: httpx.Client, **params: Any) -> dict[str, Any]:
    r = c.get("/v1/adapters", params={"namespace": "acme", **params})
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _refs(doc: dict[str, Any]) -> list[str]:
    return [v["ref"] for v in doc["items"]]


def test_the_listing_follows_every_change(served: Served, tmp_path: Path) -> None:
    hub = served.hub
    other = Hub(served.home, database_url=hub.settings.database_url)  # another process's view
    headers = {"Authorization": f"Bearer {served.tokens['read']}"}
    try:
        with httpx.Client(base_url=served.url, headers=headers) as c:
            assert _refs(_listed(c)) == []
            hub.push(write_adapter(tmp_path / "a", seed=1), "acme/a")
            assert _refs(_listed(c)) == ["acme/a:1"]
            assert _refs(_listed(c)) == ["acme/a:1"]  # served again (from the cache)
            other.push(write_adapter(tmp_path / "b", seed=2), "acme/b")
            assert _refs(_listed(c)) == ["acme/b:1", "acme/a:1"]
            other.tag("acme/a:1", "prod")
            assert _refs(_listed(c, tag="prod")) == ["acme/a:1"]
            other.untag("acme/a", "prod")
            assert _refs(_listed(c, tag="prod")) == []
            other.set_metrics("acme/b:1", {"accuracy": 0.9})
            assert _refs(_listed(c, where="accuracy>=0.5")) == ["acme/b:1"]
            other.push(write_adapter(tmp_path / "b", seed=2), "acme/b", description="again")  # metadata only
            assert next(v["description"] for v in _listed(c)["items"]) == "again"
            other.remove("acme/b:1")
            assert _refs(_listed(c)) == ["acme/a:1"]
            base = save_llama(tmp_path / "base", seed=1)
            assert _refs(_listed(c, base="tiny")) == []
            other.base_add(base, "tiny")  # records which adapters fit it
            want = other.search(ListQuery(namespace="acme", base="tiny")).model_dump(mode="json")
            assert _listed(c, base="tiny") == want  # the page search gives
            assert _listed(c) == other.search(ListQuery(namespace="acme")).model_dump(mode="json")
    finally:
        other.close()


def test_the_generation_moves_with_listed_changes_only(served: Served, tmp_path: Path) -> None:
    db = served.hub._ctx.catalog.db
    before = db.generation()
    served.hub.push(write_adapter(tmp_path / "a", seed=3), "acme/g")
    pushed = db.generation()
    assert pushed > before
    jobs = served.hub._ctx.catalog.jobs
    job = jobs.create(kind="export", queue="cpu", request={"kind": "export"}, dedup_key="k")
    jobs.report(job.id, {"step": "x"})
    jobs.finish(job.id, "succeeded", result={}, message="done")
    with served.hub._ctx.catalog.leases.writing():
        pass
    assert db.generation() == pushed
