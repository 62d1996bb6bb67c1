"""``Hub.hub_import`` against the loopback Hub: pinning, skipping what is stored, verification, failures.

Expected content is the bytes committed to the emulator (read back with ``tree_bytes`` of the pulled version),
and expected hashes come from ``hashlib``, never from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_hub import Hub
from lora_hub.errors import (
    AdapterNotFoundError,
    HubAuthError,
    HubError,
    HubNotFoundError,
    IntegrityError,
    PickleRefusedError,
)
from tests.helpers import kill, run_until_hang, store_of, tree_bytes
from tests.hubsim import HubSim
from tests.hubsync.helpers import adapter_files, publish, row

REPO = "alice/sql-lora"


def _import(hub: Hub, hf_hub: HubSim, spec: str, name: str, **kw: object):  # type: ignore[no-untyped-def]
    return hub.hub_import(spec, name, endpoint=hf_hub.url, token=hf_hub.read_token, **kw)  # type: ignore[arg-type]


def _stored(hub: Hub) -> list[str]:
    return [d for d, _ in store_of(hub).digests()]


def _staging_left(hub: Hub) -> list[str]:
    root = hub.settings.home / "hub-staging"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_branch_tag_and_sha_give_identical_rows(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    files = adapter_files(tmp_path)
    sha = publish(hf_hub, REPO, files)
    hf_hub.create_tag(REPO, "v1", revision=sha)
    hf_hub.commit(REPO, {"notes.txt": b"later"})  # main moves on: @sha and @v1 must not follow it
    sha_main = hf_hub.head(REPO)

    first = _import(hub, hf_hub, f"{REPO}@v1", "acme/by-tag")
    assert first.created and first.source == f"hf://{REPO}@{sha}"
    assert first.downloaded_bytes == len(files["adapter_model.safetensors"]) + len(files["adapter_config.json"])
    hf_hub.clear_log()
    by_sha = _import(hub, hf_hub, f"{REPO}@{sha}", "acme/by-sha")
    by_ref = _import(hub, hf_hub, f"{REPO}@refs/tags/v1", "acme/by-ref")
    assert hf_hub.count(kind="resolve") == 0 and by_sha.downloaded_bytes == 0  # stored content is not fetched
    assert row(first.version) == row(by_sha.version) == row(by_ref.version)
    assert first.version.lineage is not None and first.version.lineage["source"] == f"hf://{REPO}@{sha}"
    assert first.version.metrics == {"accuracy": 0.81, "exact_match": 0.5}
    assert first.version.lineage["base_model"] == ["meta-llama/Llama-3.2-1B"]

    at_main = _import(hub, hf_hub, REPO, "acme/by-branch")
    assert at_main.source == f"hf://{REPO}@{sha_main}"
    assert sorted(f.path for f in at_main.version.files) == ["adapter_config.json", "adapter_model.safetensors",
                                                             "notes.txt"]  # fmt: skip
    hub.pull("acme/by-tag", tmp_path / "out")
    expected = {k: v for k, v in files.items() if k != "README.md"}
    assert tree_bytes(tmp_path / "out") == expected
    digests = {f.path: f.digest for f in first.version.files}
    assert digests == {k: "sha256:" + hashlib.sha256(v).hexdigest() for k, v in expected.items()}


def test_same_commit_again_fetches_and_creates_nothing(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    first = _import(hub, hf_hub, REPO, "acme/sql")
    hf_hub.clear_log()
    again = _import(hub, hf_hub, REPO, "acme/sql", tags=["prod"])
    assert not again.created and again.downloaded_bytes == 0
    assert again.version.digest == first.version.digest and hub.versions("acme/sql") == [1]
    assert hf_hub.count(kind="resolve") == 0 and hf_hub.count() == 1  # one listing request, nothing else
    assert again.updated == ["tag prod"] and hub.show("acme/sql:prod").version == 1


def test_a_new_commit_downloads_only_what_changed(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    files = adapter_files(tmp_path)
    publish(hf_hub, REPO, files)
    _import(hub, hf_hub, REPO, "acme/sql")
    config = json.loads(files["adapter_config.json"])
    config["lora_dropout"] = 0.1
    new_config = json.dumps(config).encode()
    hf_hub.commit(REPO, {"adapter_config.json": new_config})
    hf_hub.clear_log()
    second = _import(hub, hf_hub, REPO, "acme/sql")
    assert second.created and second.version.version == 2
    assert second.files_downloaded == ["adapter_config.json"] and second.downloaded_bytes == len(new_config)
    assert hf_hub.count(kind="resolve", method="GET") == 1


def test_a_size_equal_corrupted_file_is_refused_and_nothing_is_stored(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    files = adapter_files(tmp_path)
    publish(hf_hub, REPO, files)
    hf_hub.corrupt(REPO, "adapter_model.safetensors")
    assert len(hf_hub.file_bytes(REPO, "adapter_model.safetensors")) == len(files["adapter_model.safetensors"])
    with pytest.raises(IntegrityError, match="does not match its hash on the Hub"):
        _import(hub, hf_hub, REPO, "acme/sql")
    with pytest.raises(AdapterNotFoundError):
        hub.show("acme/sql")
    assert _stored(hub) == [] and _staging_left(hub) == []


def test_a_small_file_is_checked_against_its_git_blob_id(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    hf_hub.corrupt(REPO, "adapter_config.json")  # a regular (non-LFS) file: the Hub gives no sha256 for it
    with pytest.raises(IntegrityError, match="git blob"):
        _import(hub, hf_hub, REPO, "acme/sql")
    assert _stored(hub) == [] and _staging_left(hub) == []


def test_a_failure_during_the_download_leaves_nothing(
    hub: Hub, hf_hub: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_hub.hubsync.client import HubClient

    publish(hf_hub, REPO, adapter_files(tmp_path))
    real = HubClient.download
    calls: list[str] = []

    def failing(self: HubClient, repo_id: str, commit: str, remote, dest: Path, advance, resume):  # type: ignore[no-untyped-def]
        calls.append(remote.path)
        if len(calls) == 2:  # the first file is in the staging folder by now
            dest.write_bytes(b"partial")
            raise RuntimeError("the network died")
        return real(self, repo_id, commit, remote, dest, advance, resume)

    monkeypatch.setattr(HubClient, "download", failing)
    with pytest.raises(RuntimeError, match="network died"):
        _import(hub, hf_hub, REPO, "acme/sql")
    assert len(calls) == 2
    with pytest.raises(AdapterNotFoundError):
        hub.show("acme/sql")
    assert _stored(hub) == [] and _staging_left(hub) == []


def test_kill_9_during_import_leaves_nothing_visible(
    lorahub_env: dict[str, str], hf_hub: HubSim, tmp_path: Path
) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    env = {**lorahub_env, "HF_ENDPOINT": hf_hub.url, "HF_TOKEN": hf_hub.read_token, "HF_HUB_DISABLE_XET": "1"}
    proc = run_until_hang(["hub", "import", REPO, "--name", "acme/sql"], env, "hub.import.downloaded",
                          tmp_path / "parked")  # fmt: skip
    staging = Path(lorahub_env["LORAHUB_HOME"]) / "hub-staging"
    assert [p.name for p in staging.iterdir()]  # the downloads were there when it died
    kill(proc)
    run = {**os.environ, **env}
    listed = subprocess.run([sys.executable, "-m", "lora_hub", "list", "--json"], env=run, capture_output=True,
                            text=True, check=True)  # fmt: skip
    assert json.loads(listed.stdout) == []
    gc = subprocess.run([sys.executable, "-m", "lora_hub", "gc", "--json"], env=run, capture_output=True, text=True,
                        check=True)  # fmt: skip
    assert json.loads(gc.stdout)["partials_removed"] == 1 and list(staging.iterdir()) == []


def test_a_pickle_only_repo_is_refused_before_any_download(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    files = adapter_files(tmp_path)
    files["adapter_model.bin"] = files.pop("adapter_model.safetensors")
    publish(hf_hub, REPO, files)
    with pytest.raises(PickleRefusedError, match="only pickled weights") as caught:
        _import(hub, hf_hub, REPO, "acme/sql")
    assert caught.value.hint is not None and "save_file" in caught.value.hint
    assert hf_hub.count(kind="resolve") == 0


def test_pickles_beside_safetensors_are_left_out(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    files = adapter_files(tmp_path)
    files["training_args.bin"] = b"\x80\x04not unpickled"
    publish(hf_hub, REPO, files)
    result = _import(hub, hf_hub, REPO, "acme/sql")
    assert "training_args.bin" in result.skipped
    assert sorted(f.path for f in result.version.files) == ["adapter_config.json", "adapter_model.safetensors"]


def test_missing_repo_revision_and_bad_token_are_clear_errors(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    with pytest.raises(HubNotFoundError, match="no model repository alice/nope"):
        _import(hub, hf_hub, "alice/nope", "acme/sql")
    with pytest.raises(HubNotFoundError, match="no revision 'v9'"):
        _import(hub, hf_hub, f"{REPO}@v9", "acme/sql")
    with pytest.raises(HubAuthError, match="401") as caught:
        hub.hub_import(REPO, "acme/sql", endpoint=hf_hub.url, token="hf_not_a_token")
    assert caught.value.hint is not None and "HF_TOKEN" in caught.value.hint


def test_offline_mode_and_an_unreachable_hub_are_clear_errors(
    hub: Hub, hf_hub: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubError, match="offline mode is on") as caught:
        _import(hub, hf_hub, REPO, "acme/sql")
    assert caught.value.hint is not None and "HF_HUB_OFFLINE" in caught.value.hint
    assert hf_hub.count() == 0
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with hf_hub.offline(), pytest.raises(HubError, match="cannot reach the Hub"):
        _import(hub, hf_hub, REPO, "acme/sql")


def test_rate_limits_and_forbidden_writes_are_clear_errors(hub: Hub, hf_hub: HubSim, tmp_path: Path) -> None:
    publish(hf_hub, REPO, adapter_files(tmp_path))
    hf_hub.fail(1, status=429, kind="info")
    with pytest.raises(HubError, match="rate-limiting") as caught:
        _import(hub, hf_hub, REPO, "acme/sql")
    assert caught.value.hint is not None and "wait" in caught.value.hint
    _import(hub, hf_hub, REPO, "acme/sql")
    with pytest.raises(HubAuthError, match="403") as denied:  # a read token may not commit
        hub.hub_export("acme/sql", REPO, endpoint=hf_hub.url, token=hf_hub.read_token)
    assert denied.value.hint is not None and "write access" in denied.value.hint
    assert hf_hub.commits_made() == 0
