"""``base pull``: a stored base written back as an HF model folder, every file checked against its
digest, atomically, under the output rule; on SQLite and PostgreSQL (the ``hub`` fixture)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub import Hub
from lora_hub.cli.main import app
from lora_hub.errors import DestinationExistsError, IntegrityError, NotSupportedError, ProtectedPathError
from tests.helpers import blob_path, save_llama, tree_bytes

runner = CliRunner()
MARK = ".lorahub-output.json"


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_llama(tmp_path / "model", seed=3, sharded=tmp_path / "model-sharded")


def _files(folder: Path) -> dict[str, bytes]:
    return {k: v for k, v in tree_bytes(folder).items() if k != MARK}


def test_pull_writes_the_stored_files_byte_for_byte(hub: Hub, model: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "model-sharded"
    hub.base_add(sharded, "acme/tiny", store=True)
    result = hub.base_pull("acme/tiny", tmp_path / "out")
    assert result.path == str(tmp_path / "out") and result.files == len(_files(sharded)) > 2
    assert _files(tmp_path / "out") == _files(sharded)  # every shard, the index, the config
    assert result.bytes_written == sum(len(b) for b in _files(sharded).values())
    assert json.loads((tmp_path / "out" / MARK).read_text())["kind"] == "base"
    # the pulled folder is the same model: registering it gives the same fingerprint
    again = hub.base_add(tmp_path / "out", "acme/tiny-again")
    assert again.base.content_fingerprint == result.base.content_fingerprint


def test_pull_needs_the_base_in_the_store(hub: Hub, model: Path, tmp_path: Path) -> None:
    hub.base_add(model, "tiny")
    with pytest.raises(NotSupportedError, match="not stored") as exc:
        hub.base_pull("tiny", tmp_path / "out")
    assert exc.value.hint is not None and "--store" in exc.value.hint
    assert not (tmp_path / "out").exists()


def test_pull_refuses_a_full_folder_unless_asked(hub: Hub, model: Path, tmp_path: Path) -> None:
    hub.base_add(model, "tiny", store=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    with pytest.raises(DestinationExistsError):
        hub.base_pull("tiny", other)
    with pytest.raises(DestinationExistsError):
        hub.base_pull("tiny", other, force=True)  # --force replaces only lora-hub's own outputs
    assert (other / "mine.txt").read_text() == "keep me"
    hub.base_pull("tiny", other, overwrite=True)
    assert _files(other) == _files(model)

    out = tmp_path / "out"
    hub.base_pull("tiny", out)
    with pytest.raises(DestinationExistsError):
        hub.base_pull("tiny", out)
    assert hub.base_pull("tiny", out, force=True).path == str(out)
    with pytest.raises(ProtectedPathError):
        hub.base_pull("tiny", model)  # the base's own folder


def test_a_corrupted_blob_fails_the_pull_and_leaves_nothing(hub: Hub, model: Path, tmp_path: Path) -> None:
    info = hub.base_add(model, "tiny", store=True).base
    weights = next(f for f in info.files if f.path.endswith(".safetensors"))
    assert weights.digest is not None
    blob = blob_path(hub.settings.home, weights.digest)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        hub.base_pull("tiny", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".lorahub-partial-" in p.name] == []


def test_cli_base_pull_json(lorahub_env: dict[str, str], model: Path, tmp_path: Path) -> None:
    added = runner.invoke(app, ["base", "add", str(model), "--name", "tiny", "--store", "--json"])
    assert added.exit_code == 0, added.output
    got = runner.invoke(app, ["base", "pull", "tiny", "-o", str(tmp_path / "out"), "--json"])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["path"] == str(tmp_path / "out") and doc["base"]["name"] == "tiny"
    want = {p: "sha256:" + hashlib.sha256(b).hexdigest() for p, b in _files(model).items()}
    assert {f["path"]: f["digest"] for f in doc["base"]["files"]} == want
    again = runner.invoke(app, ["base", "pull", "tiny", "-o", str(tmp_path / "out")])
    assert again.exit_code != 0 and "--force" in again.output
