"""Bases through a server: ``base add --store`` uploads the folder's blobs and commits a manifest
(``POST /v1/bases/{name}``, the fingerprints computed by the server from the stored blobs),
``base pull`` streams a stored base's files (``GET /v1/bases/{name}/-/files/{path}``: Range, ETag
= digest, checked by the client), ``base rm`` is ``DELETE /v1/bases/{name}``. The CLI prints the
same lines and exits with the same codes as against the local hub (SQLite and PostgreSQL)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from lora_hub.errors import IntegrityError, NotSupportedError
from lora_hub.remote.client import RemoteHub
from lora_hub.settings import Settings
from tests.helpers import blob_path, save_llama, tree_bytes
from tests.service.conftest import Served

runner = CliRunner()
MARK = ".lorahub-output.json"
_TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?(\+00:00|Z)?")


def _files(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(folder).items() if k != MARK}


def _remote(served: Served, tmp_path: Path, token: str = "admin") -> RemoteHub:
    settings = Settings.from_env(home=tmp_path / "client-home")
    return RemoteHub(Settings(**{**settings.__dict__, "server_url": served.url, "token": served.tokens[token]}))


def _tour(tmp: Path, model: Path, name: str) -> list[tuple[str, int, str, str]]:
    out = tmp / name / "out"
    commands = [
        ["base", "add", str(model), "--name", "acme/tiny", "--store"],
        ["base", "add", str(model), "--name", "acme/tiny", "--store"],
        ["base", "pull", "acme/tiny", "-o", str(out)],
        ["base", "pull", "acme/tiny", "-o", str(out)],
        ["base", "pull", "acme/tiny", "-o", str(out), "--force"],
        ["base", "pull", "acme/nope", "-o", str(tmp / name / "nope")],
        ["base", "rm", "acme/tiny"],
        ["base", "rm", "acme/tiny"],
        ["base", "list"],
    ]
    results = []
    for cmd in commands:
        r = runner.invoke(app, cmd)
        here = str(tmp / name)
        norm = [_TIME.sub("<time>", text.replace(here, "<here>")) for text in (r.stdout, r.stderr)]
        results.append((" ".join(cmd).replace(here, "<here>"), r.exit_code, *norm))
    assert _files(out) == _files(model)
    assert not (tmp / name / "nope").exists()
    return results


def test_base_cli_is_the_same_against_a_server(
    served: Served, tmp_path: Path, second_catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save_llama(tmp_path / "model", seed=3, sharded=tmp_path / "sharded")
    sharded = tmp_path / "sharded"
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "local-home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", second_catalog_url)
    local = _tour(tmp_path, sharded, "local")

    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "client-home"))
    monkeypatch.delenv("LORAHUB_DATABASE_URL")
    monkeypatch.setenv("LORAHUB_URL", served.url)
    monkeypatch.setenv("LORAHUB_TOKEN", served.tokens["admin"])
    remote = _tour(tmp_path, sharded, "remote")

    for mine, theirs in zip(local, remote, strict=True):
        assert mine == theirs
    assert [code for _, code, _, _ in local] == [0, 0, 0, 2, 0, 2, 0, 2, 0]
    assert "stored" in local[0][2] and "hashes from cache" in local[1][2]
    assert not (tmp_path / "client-home" / "catalog.db").exists()
    assert not (tmp_path / "client-home" / "blobs").exists()
    assert model.is_dir()


def test_the_server_fingerprints_the_uploaded_blobs(served: Served, tmp_path: Path) -> None:
    model = save_llama(tmp_path / "model", seed=4)
    with _remote(served, tmp_path) as remote:
        added = remote.base_add(model, "acme/tiny", store=True)
    info = served.hub.base_show("acme/tiny")
    assert added.created and info.stored and info.path is None
    assert added.stored_bytes == sum(len(b) for b in _files(model).values())
    # each file's digest is the sha256 of its bytes, and the fingerprint is the local one
    want = {p: "sha256:" + hashlib.sha256(b).hexdigest() for p, b in _files(model).items()}
    assert {f.path: f.digest for f in info.files} == want
    assert served.hub.base_add(model, "acme/tiny-here").base.content_fingerprint == info.content_fingerprint
    with _remote(served, tmp_path) as remote:
        again = remote.base_add(model, "acme/tiny", store=True)
    assert not again.created and again.stored_bytes == 0  # every blob was there: nothing sent


def test_a_manifest_with_missing_blobs_registers_nothing(served: Served, tmp_path: Path) -> None:
    model = save_llama(tmp_path / "model", seed=5)
    files = [
        {"path": p, "digest": "sha256:" + hashlib.sha256(b).hexdigest(), "size": len(b)}
        for p, b in sorted(_files(model).items())
    ]
    headers = {"Authorization": f"Bearer {served.tokens['admin']}"}
    with httpx.Client(base_url=served.url, headers=headers) as c:
        # only config.json is uploaded
        config = next(f for f in files if f["path"] == "config.json")
        assert c.put(f"/v1/blobs/_/{config['digest']}", content=(model / "config.json").read_bytes()).status_code == 201
        r = c.post("/v1/bases/acme/partial", json={"files": files})
        assert r.status_code == 409
        err = r.json()["errors"][0]
        assert err["code"] == "MANIFEST_BLOB_UNKNOWN"
        assert err["detail"]["missing"] == sorted(str(f["digest"]) for f in files if f["path"] != "config.json")
        wrong = [{**f, "size": int(str(f["size"])) + 1} if f["path"] == "config.json" else f for f in files]
        assert c.post("/v1/bases/acme/partial", json={"files": wrong}).status_code == 400
        outside = [{**config, "path": "../config.json"}]
        assert c.post("/v1/bases/acme/partial", json={"files": outside}).status_code == 400
    assert [b.name for b in served.hub.base_list()] == []


def test_remote_add_needs_store_and_an_admin(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = save_llama(tmp_path / "model", seed=6)
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "client-home"))
    monkeypatch.setenv("LORAHUB_URL", served.url)
    monkeypatch.setenv("LORAHUB_TOKEN", served.tokens["admin"])
    r = runner.invoke(app, ["base", "add", str(model), "--name", "acme/tiny"])
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.startswith(f"error: the lorahub server at {served.url} cannot read the folder {model}")
    assert "--store" in r.stderr
    monkeypatch.setenv("LORAHUB_TOKEN", served.tokens["write"])
    r = runner.invoke(app, ["base", "add", str(model), "--name", "acme/tiny", "--store"])
    assert r.exit_code == 2 and r.stderr.startswith("error: this needs an admin token for namespace *")
    assert served.hub.base_list() == []
    served.hub.base_add(model, "acme/tiny", store=True)
    r = runner.invoke(app, ["base", "rm", "acme/tiny"])
    assert r.exit_code == 2 and "admin" in r.stderr
    monkeypatch.setenv("LORAHUB_TOKEN", served.tokens["read"])  # any valid token reads a base
    r = runner.invoke(app, ["base", "pull", "acme/tiny", "-o", str(tmp_path / "out"), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["files"] == len(_files(model)) and _files(tmp_path / "out") == _files(model)


def test_file_route_streams_with_range_and_etag(served: Served, tmp_path: Path) -> None:
    model = save_llama(tmp_path / "model", seed=7)
    served.hub.base_add(model, "acme/tiny", store=True)
    data = (model / "model.safetensors").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    headers = {"Authorization": f"Bearer {served.tokens['other']}"}
    with httpx.Client(base_url=served.url, headers=headers) as c:
        r = c.get("/v1/bases/acme/tiny/-/files/model.safetensors")
        assert r.status_code == 200 and r.content == data and r.headers["etag"] == f'"{digest}"'
        part = c.get("/v1/bases/acme/tiny/-/files/model.safetensors", headers={"Range": "bytes=8-99"})
        assert part.status_code == 206 and part.content == data[8:100]
        assert c.get("/v1/bases/acme/tiny/-/files/nope.bin").status_code == 404
        assert c.get("/v1/bases/acme/nope/-/files/config.json").status_code == 404
    assert httpx.get(served.url + "/v1/bases/acme/tiny/-/files/config.json").status_code == 401
    served.hub.base_add(model, "acme/folder-only")  # not stored: nothing to pull
    with _remote(served, tmp_path) as remote, pytest.raises(NotSupportedError, match="not stored"):
        remote.base_pull("acme/folder-only", tmp_path / "never")
    assert not (tmp_path / "never").exists()


def test_a_corrupted_blob_fails_the_remote_pull_and_leaves_nothing(served: Served, tmp_path: Path) -> None:
    model = save_llama(tmp_path / "model", seed=8)
    info = served.hub.base_add(model, "acme/tiny", store=True).base
    weights = next(f for f in info.files if f.path.endswith(".safetensors"))
    assert weights.digest is not None
    blob = blob_path(served.home, weights.digest)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with _remote(served, tmp_path, "read") as remote, pytest.raises(IntegrityError, match="came from the server"):
        remote.base_pull("acme/tiny", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".lorahub-partial-" in p.name] == []


def test_only_the_missing_blobs_are_sent(served: Served, tmp_path: Path) -> None:
    model = save_llama(tmp_path / "model", seed=9)
    config = (model / "config.json").read_bytes()
    served.hub.store_blob(model / "config.json", "sha256:" + hashlib.sha256(config).hexdigest())
    with _remote(served, tmp_path) as remote:
        result = remote.base_add(model, "acme/tiny", store=True)
    assert result.created and result.stored_bytes == sum(len(b) for p, b in _files(model).items() if p != "config.json")
