"""A Hub import hashes each downloaded byte once, as it arrives: the push validates the staged files but
neither hashes nor copies them (the store adopts them); a kill after that leaves only blobs that gc removes.
Expected bytes are those committed to the emulator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_hub import Hub
from tests.core.test_push_verified import Reads
from tests.helpers import kill, run_until_hang, store_of, tree_bytes
from tests.hubsim import HubSim
from tests.hubsync.helpers import adapter_files, publish

REPO = "alice/once"


def test_an_import_reads_each_downloaded_byte_once(
    hub: Hub, hf_hub: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = adapter_files(tmp_path)
    publish(hf_hub, REPO, files)
    reads = Reads(monkeypatch)
    result = hub.hub_import(REPO, "acme/once", endpoint=hf_hub.url, token=hf_hub.read_token)
    assert sorted(result.files_downloaded) == ["adapter_config.json", "adapter_model.safetensors"]
    assert reads.hashed == [] and reads.copied == [] and reads.scans == 1
    out = tmp_path / "out"
    hub.pull("acme/once:1", out)
    assert tree_bytes(out) == {p: b for p, b in files.items() if p != "README.md"}
    staging = hub.settings.home / "hub-staging"
    assert not staging.exists() or list(staging.iterdir()) == []


def test_kill_9_between_adopting_and_the_catalog_leaves_blobs_that_gc_removes(
    lorahub_env: dict[str, str], hf_hub: HubSim, tmp_path: Path
) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    env = {**lorahub_env, "HF_ENDPOINT": hf_hub.url, "HF_TOKEN": hf_hub.read_token, "HF_HUB_DISABLE_XET": "1"}
    proc = run_until_hang(["hub", "import", REPO, "--name", "acme/once"], env, "push.before_catalog",
                          tmp_path / "parked")  # fmt: skip
    home = Path(lorahub_env["LORAHUB_HOME"])
    blobs = [p for p in (home / "blobs" / "sha256").rglob("*") if p.is_file()]
    assert len(blobs) == 2  # adopted, not yet referenced
    kill(proc)
    run = {**os.environ, **env}
    listed = subprocess.run([sys.executable, "-m", "lora_hub", "list", "--json"], env=run, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert json.loads(listed.stdout) == []
    gc = subprocess.run([sys.executable, "-m", "lora_hub", "gc", "--json"], env=run, capture_output=True, text=True,
                        check=True)  # fmt: skip
    report = json.loads(gc.stdout)
    assert report["blobs_removed"] == 2 and report["partials_removed"] == 1
    assert [p for p in (home / "blobs").rglob("*") if p.is_file()] == []
    assert list((home / "hub-staging").iterdir()) == []
    with Hub(home, database_url=lorahub_env["LORAHUB_DATABASE_URL"]) as again:
        assert list(store_of(again).digests()) == []
