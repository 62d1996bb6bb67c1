"""Tokens over HTTP: 401 with WWW-Authenticate, revocation and expiry at once, 404 (not 403) for
a namespace the token cannot read, 403 where it can read but not write, optional anonymous read;
and the authorisation matrix: every route x every kind of token x own and foreign namespace."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from lora_hub.catalog.tokens import hash_secret
from lora_hub.core import transfer
from lora_hub.types import FileEntry
from tests.helpers import save_llama, write_adapter
from tests.service.conftest import Served, make_hub, serve


def _get(served: Served, path: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(served.url + path, headers=headers)


def test_no_token_is_401_with_www_authenticate(served: Served) -> None:
    r = _get(served, "/v1/adapters", None)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == 'Bearer realm="lorahub"'
    assert r.json()["errors"][0]["code"] == "UNAUTHORIZED"
    bad = httpx.get(served.url + "/v1/adapters", headers={"Authorization": "Basic abc"})
    assert bad.status_code == 401 and "Bearer" in bad.json()["errors"][0]["message"]
    assert _get(served, "/v1/adapters", "lh_" + "x" * 43).status_code == 401


def test_revocation_and_expiry_hold_on_the_next_request(served: Served) -> None:
    created = served.hub.token_create("read", "acme")
    assert _get(served, "/v1/adapters", created.secret).status_code == 200
    served.hub.token_revoke(created.token.id)
    r = _get(served, "/v1/adapters", created.secret)
    assert r.status_code == 401 and "revoked" in r.json()["errors"][0]["message"]
    expired = served.hub._ctx.catalog.tokens.create("read", "acme", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    r = _get(served, "/v1/adapters", expired.secret)
    assert r.status_code == 401 and "expired" in r.json()["errors"][0]["message"]


def test_unreadable_namespace_looks_like_a_missing_name(served: Served, tmp_path: Path) -> None:
    served.hub.push(write_adapter(tmp_path / "z", seed=1), "zeta/secret")
    hidden = _get(served, "/v1/adapters/zeta/secret:1", served.tokens["read"])
    missing = _get(served, "/v1/adapters/zeta/quite-unlike:1", served.tokens["admin"])
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json() == {
        "errors": [
            {
                "code": "NOT_FOUND",
                "message": "no adapter named 'zeta/secret'",
                "detail": {"type": "AdapterNotFoundError", "hint": "run `lorahub list` to see what exists"},
            }
        ]
    }
    assert missing.json()["errors"][0]["detail"] == hidden.json()["errors"][0]["detail"]
    # The "did you mean" hint is not given to a token that cannot see every namespace.
    near = _get(served, "/v1/adapters/acme/secret:1", served.tokens["read"]).json()["errors"][0]
    assert near["detail"]["hint"] == "run `lorahub list` to see what exists"
    assert "zeta/secret" in _get(served, "/v1/adapters/acme/secret:1", served.tokens["admin"]).text


def test_read_token_may_not_write(served: Served, tmp_path: Path) -> None:
    served.hub.push(write_adapter(tmp_path / "a", seed=1), "acme/a")
    r = httpx.put(
        served.url + "/v1/adapters/acme/a:1/-/tags",
        params={"tag": "prod"},
        headers={"Authorization": f"Bearer {served.tokens['read']}"},
    )
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
    assert served.hub.show("acme/a:1").tags == []


def test_tokens_are_stored_as_hashes_only(served: Served) -> None:
    created = served.hub.token_create("write", "team-*", expires="30d", label="ci")
    from sqlalchemy import text

    with served.hub._ctx.catalog.db.engine.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text("SELECT * FROM api_tokens"))]
    assert not any(created.secret in str(cell) for row in rows for cell in row)
    import hashlib

    expected = "sha256:" + hashlib.sha256(created.secret.encode()).hexdigest()
    assert expected == hash_secret(created.secret)
    assert any(expected in row for row in rows)
    listed = {t.id: t for t in served.hub.token_list()}
    t = listed[created.token.id]
    assert (t.scope, t.namespace, t.label, t.state()) == ("write", "team-*", "ci", "active")
    assert t.expires_at is not None and timedelta(days=29) < t.expires_at - datetime.now(UTC) <= timedelta(days=30)


def test_anonymous_read_when_the_server_allows_it(tmp_path: Path, catalog_url: str) -> None:
    with make_hub(tmp_path / "h", catalog_url, anonymous_read=True) as hub, serve(hub) as url:
        hub.push(write_adapter(tmp_path / "a", seed=1), "acme/a")
        listed = httpx.get(url + "/v1/adapters")
        assert listed.status_code == 200 and [v["ref"] for v in listed.json()["items"]] == ["acme/a:1"]
        assert httpx.get(url + "/v1/adapters/acme/a:1").status_code == 200
        r = httpx.put(url + "/v1/adapters/acme/a:1/-/tags", params={"tag": "x"})
        assert r.status_code == 401


# --- the matrix ---------------------------------------------------------------------------------

Call = Callable[[httpx.Client, str], httpx.Response]
KINDS = ["admin", "write", "read", "other", "none", "expired", "revoked"]


def _routes(served: Served, src: Path, digests: dict[str, str], files: dict[str, list[dict[str, object]]]) -> dict[
    str, tuple[str, Call]
]:  # fmt: skip
    """route name -> (what it needs: read | write | admin | any, the request for a namespace)."""
    base_files = {ns: [f.model_dump() for f in served.hub.base_show(f"{ns}/b").files] for ns in ("acme", "zeta")}
    job_requests = {ns: _stored_merge(ns) for ns in ("acme", "zeta")}
    # recompute: a job each time, though an earlier one's recipe is recorded by now
    job_ids = {ns: served.hub.submit_request({**job_requests[ns], "recompute": True}).id for ns in ("acme", "zeta")}

    def base_rm(c: httpx.Client, ns: str) -> httpx.Response:
        served.hub.commit_base_manifest(f"{ns}/victim-base", [FileEntry.model_validate(f) for f in base_files[ns]])
        return c.delete(f"/v1/bases/{ns}/victim-base")

    def rm(c: httpx.Client, ns: str) -> httpx.Response:
        v = served.hub.push(src, f"{ns}/victim").version  # the same version until it is removed
        return c.delete(f"/v1/adapters/{ns}/victim:{v.version}")

    config = (src / "adapter_config.json").read_bytes()

    def session(ns: str, staged: bytes = b"") -> str:
        """A fresh upload session of ``ns`` (made in the core, not through a route under test)."""
        upload_id = transfer.upload_start(served.hub._ctx, ns).id
        if staged:
            with transfer.upload_append(served.hub._ctx, ns, upload_id, 0, limit=1 << 30) as sink:
                sink.write(staged)
        return f"/v1/blobs/{ns}/uploads/{upload_id}"

    return {
        "show": ("read", lambda c, ns: c.get(f"/v1/adapters/{ns}/m:1")),
        "versions": ("read", lambda c, ns: c.get(f"/v1/adapters/{ns}/m/-/versions")),
        "show_any": ("read", lambda c, ns: c.get(f"/v1/adapters/{ns}/m:1/-/any")),
        "show_any_bare": ("read", lambda c, ns: c.get(f"/v1/adapters/{ns}/m/-/any")),
        "list_ns": ("read", lambda c, ns: c.get("/v1/adapters", params={"namespace": ns})),
        "blob_head": ("read", lambda c, ns: c.head(f"/v1/blobs/{ns}/{digests[ns]}")),
        "blob_get": ("read", lambda c, ns: c.get(f"/v1/blobs/{ns}/{digests[ns]}")),
        "tag": ("write", lambda c, ns: c.put(f"/v1/adapters/{ns}/m:1/-/tags", params={"tag": "t"})),
        "untag": ("write", lambda c, ns: c.delete(f"/v1/adapters/{ns}/m:1/-/tags", params={"tag": "t"})),
        "metrics": ("write", lambda c, ns: c.patch(f"/v1/adapters/{ns}/m:1/-/metrics", json={"set": {"acc": 1}})),
        "manifest": ("write", lambda c, ns: c.post(f"/v1/adapters/{ns}/m/-/manifest", json={"files": files[ns]})),
        "blob_put": (
            "write",
            lambda c, ns: c.put(f"/v1/blobs/{ns}/{digests[ns]}", content=(src / "adapter_config.json").read_bytes()),
        ),
        "rm": ("write", rm),
        "upload_start": ("write", lambda c, ns: c.post(f"/v1/blobs/{ns}/uploads")),
        "upload_status": ("write", lambda c, ns: c.get(session(ns))),
        "upload_status_head": ("write", lambda c, ns: c.head(session(ns))),
        "upload_chunk": (
            "write",
            lambda c, ns: c.patch(session(ns), content=config, headers={"Content-Range": f"0-{len(config) - 1}"}),
        ),
        "upload_finish": ("write", lambda c, ns: c.put(session(ns, config), params={"digest": digests[ns]})),
        "upload_abort": ("write", lambda c, ns: c.delete(session(ns))),
        "upload_mount": (
            "write",
            lambda c, ns: c.post(f"/v1/blobs/{ns}/uploads", params={"mount": digests[ns], "from": ns}),
        ),
        "gc": ("admin", lambda c, ns: c.post("/v1/gc", json={"dry_run": True})),
        "base_file": ("any", lambda c, ns: c.get(f"/v1/bases/{ns}/b/-/files/config.json")),
        "base_commit": ("admin", lambda c, ns: c.post(f"/v1/bases/{ns}/b", json={"files": base_files[ns]})),
        "base_rm": ("admin", base_rm),
        # a merge of registered names stored as {ns}/merged: reads and writes {ns} (app.py's rule)
        "job_submit": ("write", lambda c, ns: c.post("/v1/jobs", json=job_requests[ns])),
        "job_show": ("write", lambda c, ns: c.get(f"/v1/jobs/{job_ids[ns]}")),
        "job_cancel": ("write", lambda c, ns: c.delete(f"/v1/jobs/{job_ids[ns]}")),
        "bases": ("any", lambda c, ns: c.get("/v1/bases")),
        "methods": ("any", lambda c, ns: c.get("/v1/methods")),
    }


def _stored_merge(ns: str) -> dict[str, object]:
    """A job request of registered names only: base ``{ns}/b``, adapter ``{ns}/m``, output stored."""
    pipeline = {"base_model": f"{ns}/b", "models": [{"model": f"{ns}/m"}], "output": "", "name": f"{ns}/merged"}
    return {"kind": "pipeline", "pipeline": pipeline, "device": "cpu", "store_output": True}


def _expected(kind: str, ns: str, needs: str, route: str) -> int:
    """The answer, from the rules alone: the token table of the module docstring."""
    scope = {"admin": ("admin", "*"), "write": ("write", "acme"), "read": ("read", "acme"), "other": ("write", "other")}
    if kind in ("none", "expired", "revoked"):
        return 401
    level, pattern = scope[kind]
    rank = ["read", "write", "admin"]
    if needs == "any":
        return 200
    if needs == "admin":
        return 200 if (level, pattern) == ("admin", "*") else 403
    covers = pattern == "*" or pattern == ns
    if not covers:
        return 200 if route == "list_ns" else 404  # a listing of an unreadable namespace is empty
    if rank.index(level) < rank.index(needs):
        return 403
    created = {"blob_put": 201, "upload_finish": 201, "upload_mount": 201, "upload_start": 202, "upload_chunk": 202,
               "job_submit": 201}  # fmt: skip
    return created.get(route) or {"upload_status": 204, "upload_status_head": 204, "upload_abort": 204}.get(route, 200)


def test_authorisation_matrix(served: Served, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "m", seed=7)
    model = save_llama(tmp_path / "base", seed=1)
    digests, files = {}, {}
    for ns in ("acme", "zeta"):
        served.hub.base_add(model, f"{ns}/b", store=True)
        v = served.hub.push(src, f"{ns}/m").version
        files[ns] = [f.model_dump() for f in v.files]
        digests[ns] = next(f.digest for f in v.files if f.path == "adapter_config.json")
    secrets = dict(served.tokens)
    secrets["expired"] = served.hub._ctx.catalog.tokens.create(
        "write", "acme", expires_at=datetime.now(UTC) - timedelta(seconds=1)
    ).secret
    revoked = served.hub.token_create("admin", "*")
    served.hub.token_revoke(revoked.token.id)
    secrets["revoked"] = revoked.secret
    wrong = []
    checked = 0
    for kind in KINDS:
        headers = {"Authorization": f"Bearer {secrets[kind]}"} if kind != "none" else {}
        with httpx.Client(base_url=served.url, headers=headers) as c:
            for ns in ("acme", "zeta"):
                for route, (needs, call) in _routes(served, src, digests, files).items():
                    got = call(c, ns).status_code
                    want = _expected(kind, ns, needs, route)
                    checked += 1
                    if got != want:
                        wrong.append((kind, ns, route, got, want))
    assert checked == len(KINDS) * 2 * 29
    assert wrong == []


@pytest.mark.parametrize("pattern,ns,covered", [("*", "", True), ("acme", "acme", True), ("acme", "acme2", False),
                                                ("acme-*", "acme-ml", True), ("acme-*", "acme", False),
                                                ("acme", "", False)])  # fmt: skip
def test_namespace_patterns(served: Served, pattern: str, ns: str, covered: bool) -> None:
    token = served.hub.token_create("read", pattern).token
    assert token.covers(ns) is covered


def test_a_revoked_token_is_refused_by_the_next_request(served: Served, tmp_path: Path) -> None:
    """Tokens are looked up again whenever the catalog generation moved: a revocation made by
    another process (another ``Hub`` on the catalog) refuses the very next request, though the
    token's lookup was cached; a token created there works at once."""
    from lora_hub.api import ServingHub

    other = ServingHub(served.home, database_url=served.hub.settings.database_url)
    try:
        created = other.token_create("read", "acme")
        headers = {"Authorization": f"Bearer {created.secret}"}
        with httpx.Client(base_url=served.url, headers=headers) as c:
            for _ in range(3):  # the lookup is cached after the first
                assert c.get("/v1/adapters", params={"namespace": "acme"}).status_code == 200
            other.token_revoke(created.token.id)
            r = c.get("/v1/adapters", params={"namespace": "acme"})
            assert r.status_code == 401 and "revoked" in r.text
    finally:
        other.close()


def test_a_revocation_under_load_refuses_every_request_sent_after_it(tmp_path: Path, catalog_url: str) -> None:
    """Requests waiting at the same moment share one generation read: none sent after the
    revocation returned may be answered from a read that started before it. Each read is made
    to take 50 ms more after its query, and clients keep one running nearly all the time, so
    the requests sent after the revocation arrive while a read from before it runs."""
    import time

    hub = make_hub(tmp_path / "home", catalog_url)
    read_generation = hub.generation

    def slow_generation() -> int:
        value = read_generation()
        time.sleep(0.05)  # the window in which a wrong sharing would hand out a stale value
        return value

    hub.generation = slow_generation  # type: ignore[method-assign]
    created = hub.token_create("read", "acme")
    headers = {"Authorization": f"Bearer {created.secret}"}
    revoked, stop = threading.Event(), threading.Event()
    late: list[int] = []  # statuses of requests sent once the revocation had returned
    lock = threading.Lock()

    def load(url: str) -> None:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            for _ in range(400):  # bounded; stopped long before
                if stop.is_set():
                    return
                sent_late = revoked.is_set()
                status = c.get("/v1/adapters", params={"namespace": "acme"}).status_code
                if sent_late:
                    with lock:
                        late.append(status)

    with hub, serve(hub) as url:
        threads = [threading.Thread(target=load, args=(url,)) for _ in range(6)]
        for t in threads:
            t.start()
        with httpx.Client(base_url=url, headers=headers, timeout=30) as probe:
            assert probe.get("/v1/adapters", params={"namespace": "acme"}).status_code == 200
            hub.token_revoke(created.token.id)
            revoked.set()
            probed = [probe.get("/v1/adapters", params={"namespace": "acme"}).status_code for _ in range(10)]
        stop.set()
        for t in threads:
            t.join(60)
    assert set(probed) == {401}, probed
    assert late and set(late) == {401}, sorted(late)
