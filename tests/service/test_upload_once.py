"""A push through the server hashes each uploaded byte once, as it arrives: the staged upload becomes
the blob (adopted, not copied) and the commit in the same process does not hash it again; a blob this
process did not verify itself is hashed at commit as before. Digests come from ``hashlib``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from tests.core.test_push_verified import Reads
from tests.helpers import write_adapter
from tests.service.conftest import Served


def _manifest(folder: Path) -> list[dict[str, object]]:
    return [
        {"path": p.name, "digest": "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size}
        for p in sorted(folder.iterdir())
    ]


def _client(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, headers={"Authorization": f"Bearer {served.tokens['write']}"})


def test_upload_and_commit_read_each_byte_once(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = write_adapter(tmp_path / "a", seed=7)
    files = _manifest(src)
    reads = Reads(monkeypatch)
    with _client(served) as c:
        for f in files:
            data = (src / str(f["path"])).read_bytes()
            put = c.put(f"/v1/blobs/acme/{f['digest']}", content=data)
            assert put.status_code == 201 and put.json()["written"] == len(data)
        r = c.post("/v1/adapters/acme/once/-/manifest", json={"files": files})
        assert r.status_code == 201, r.text
    assert reads.hashed == [] and reads.copied == [] and reads.scans == 1
    assert [p for p in (served.home / "uploads").iterdir()] == []  # staged uploads and the commit's folder gone
    for f in files:
        hexd = str(f["digest"]).removeprefix("sha256:")
        blob = served.home / "blobs" / "sha256" / hexd[:2] / hexd
        assert blob.read_bytes() == (src / str(f["path"])).read_bytes() and blob.stat().st_nlink == 1
    out = tmp_path / "out"
    served.hub.pull("acme/once:1", out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == {
        p.name: p.read_bytes() for p in src.iterdir()
    }


def test_a_blob_not_verified_by_this_process_is_hashed_at_commit(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blobs stored from a file that was not a staged upload (as another server process, or an
    earlier run, would have): the commit does not take their digests on trust."""
    src = write_adapter(tmp_path / "b", seed=8)
    files = _manifest(src)
    for f in files:
        assert served.hub.store_blob(src / str(f["path"]), str(f["digest"])) > 0  # copied and checked
    assert all((src / str(f["path"])).exists() for f in files)  # a plain file is copied, not taken
    reads = Reads(monkeypatch)
    with _client(served) as c:
        r = c.post("/v1/adapters/acme/other/-/manifest", json={"files": files})
        assert r.status_code == 201, r.text
    pushed = sorted(name for name in reads.hashed if not name.startswith("store:"))
    assert pushed == ["adapter_config.json", "adapter_model.safetensors"]  # and the store re-checks them (repair)
