"""A push through the server reads each uploaded byte once, as it arrives, hashing it and scanning it
for NaN/Inf in the same pass (in one request or in a session of chunks): the staged upload becomes the
blob (adopted, not copied) and the commit in the same process neither hashes nor scans it again; a
blob this process did not verify itself is hashed and scanned at commit as before. Digests come from
``hashlib``; a NaN is refused at commit with the local push's message."""

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


def _session_upload(c: httpx.Client, ns: str, data: bytes, digest: str, chunk: int) -> None:
    loc = c.post(f"/v1/blobs/{ns}/uploads").headers["location"]
    for start in range(0, len(data), chunk):
        part = data[start : start + chunk]
        r = c.patch(loc, content=part, headers={"Content-Range": f"{start}-{start + len(part) - 1}"})
        assert r.status_code == 202, r.text
    assert c.put(loc, params={"digest": digest}).status_code == 201


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
    assert reads.hashed == [] and reads.copied == []
    assert reads.scans == 0  # the NaN/Inf scan was made as the weights arrived, with their hash
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


@pytest.mark.parametrize("chunk", [1_000, 4_099, 1 << 20])
def test_a_session_upload_is_scanned_as_it_arrives(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    src = write_adapter(tmp_path / "s", seed=9)
    files = _manifest(src)
    reads = Reads(monkeypatch)
    with _client(served) as c:
        for f in files:
            _session_upload(c, "acme", (src / str(f["path"])).read_bytes(), str(f["digest"]), chunk)
        r = c.post("/v1/adapters/acme/chunked/-/manifest", json={"files": files})
        assert r.status_code == 201, r.text
    assert reads.hashed == [] and reads.scans == 0


@pytest.mark.parametrize("sessions", [False, True])
def test_a_nan_uploaded_is_refused_at_commit_as_a_local_push_refuses_it(
    served: Served, tmp_path: Path, sessions: bool
) -> None:
    from tests.helpers import adapter_tensors

    tensors = adapter_tensors(seed=3)
    key = sorted(k for k in tensors if "lora_B" in k)[1]
    tensors[key] = tensors[key].copy()
    tensors[key].flat[5] = float("nan")
    src = write_adapter(tmp_path / "nan", tensors=tensors)
    files = _manifest(src)
    with _client(served) as c:
        for f in files:
            data = (src / str(f["path"])).read_bytes()
            if sessions:
                _session_upload(c, "acme", data, str(f["digest"]), 3_001)
            else:
                assert c.put(f"/v1/blobs/acme/{f['digest']}", content=data).status_code == 201
        r = c.post("/v1/adapters/acme/nan/-/manifest", json={"files": files})
    assert r.status_code == 400, r.text
    with pytest.raises(Exception, match="NaN or Inf") as local:
        served.hub.push(src, "acme/nan-local")
    message = r.json()["errors"][0]["message"]
    assert f"NaN or Inf values in {key}" in message and f"NaN or Inf values in {key}" in str(local.value)
    assert [v.ref for v in served.hub.list_versions()] == []  # nothing registered, by either
