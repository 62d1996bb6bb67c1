"""``lorahub hub import|export|sync`` against a server are jobs run by the server's workers, with the
workers' own ``HF_ENDPOINT`` and ``HF_TOKEN``: the CLI prints what the local command prints, a write
token may run them in its own namespace only, ``--detach`` returns the job id, and a failure is the
local command's error. The Hub is the loopback emulator; SQLite and PostgreSQL catalogs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import write_adapter
from tests.hubsim import HubSim
from tests.hubsync.helpers import adapter_files, publish
from tests.service.conftest import Served, cli

REPO = "alice/sql-lora"


@pytest.fixture
def server_hub(hf_hub: HubSim, monkeypatch: pytest.MonkeyPatch) -> HubSim:
    """The Hub the server's workers (threads of this process) talk to."""
    monkeypatch.setenv("HF_ENDPOINT", hf_hub.url)
    monkeypatch.setenv("HF_TOKEN", hf_hub.write_token)
    return hf_hub


def test_import_and_export_through_the_server(
    served: Served, workers: None, server_hub: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sha = publish(server_hub, REPO, adapter_files(tmp_path))
    code, out, err = cli(served, "write", "hub", "import", REPO, "--name", "acme/sql", monkeypatch=monkeypatch)
    assert code == 0, err
    assert out.startswith("acme/sql:1  sha256:") and f"new, from hf://{REPO}@{sha};" in out
    stored = served.hub.show("acme/sql:1")
    assert stored.lineage is not None and stored.lineage["commit"] == sha

    # the same commit again: nothing new, the same line as the local command's
    code, out, _ = cli(served, "write", "hub", "import", REPO, "--name", "acme/sql", "--json", monkeypatch=monkeypatch)
    assert code == 0 and json.loads(out)["created"] is False

    # a new version pushed through the server, exported to a new repo by a detached job
    adapter = write_adapter(tmp_path / "b", seed=3)
    assert cli(served, "write", "push", str(adapter), "--name", "acme/sql", monkeypatch=monkeypatch)[0] == 0
    code, out, err = cli(served, "write", "hub", "export", "acme/sql", "alice/sql-v2", "--create", "--detach",
                         "--json", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, err
    job = json.loads(out)
    assert job["kind"] == "hub" and job["queue"] == "any"
    code, out, err = cli(served, "write", "jobs", "wait", job["id"], monkeypatch=monkeypatch)
    assert code == 0, err
    files = server_hub.files("alice/sql-v2")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert files["adapter_model.safetensors"].size == (adapter / "adapter_model.safetensors").stat().st_size

    code, out, _ = cli(served, "write", "hub", "export", "acme/sql", "alice/sql-v2", monkeypatch=monkeypatch)
    assert code == 0 and out.strip().endswith(
        "is up to date (" + server_hub.head("alice/sql-v2") + "); nothing was written"
    )


def test_sync_and_who_may_run_hub_jobs(
    served: Served, workers: None, server_hub: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(server_hub, REPO, adapter_files(tmp_path))
    # a write token of acme may not import into another namespace, nor read one it cannot see
    code, _, err = cli(served, "write", "hub", "import", REPO, "--name", "other/sql", monkeypatch=monkeypatch)
    assert code != 0 and err.startswith("error: ")
    assert served.hub.list_versions(namespace="other") == []
    code, _, err = cli(served, "read", "hub", "import", REPO, "--name", "acme/sql", monkeypatch=monkeypatch)
    assert code != 0 and err.startswith("error: ")
    # the endpoint is the workers' own
    code, _, err = cli(served, "write", "hub", "import", REPO, "--name", "acme/sql", "--endpoint", "http://127.0.0.1:9",
                       monkeypatch=monkeypatch)  # fmt: skip
    assert code == 2 and "its own endpoint and token" in err

    code, out, err = cli(served, "write", "hub", "sync", "acme", "alice", "--pull", monkeypatch=monkeypatch)
    assert code == 0, err
    assert out.splitlines()[-1] == "1 of 1 changed"
    assert [v.ref for v in served.hub.list_versions(namespace="acme")] == ["acme/sql-lora:1"]

    # newer jobs of another namespace do not hide a write token's own from its list
    for i in range(3):
        code, _, err = cli(served, "other", "hub", "import", REPO, "--name", f"other/sql-{i}", "--detach",
                           monkeypatch=monkeypatch)  # fmt: skip
        assert code == 0, err
    code, out, _ = cli(served, "write", "jobs", "list", "--limit", "1", "--json", monkeypatch=monkeypatch)
    (own,) = json.loads(out)
    assert own["request"]["hub"]["op"] == "sync" and own["request"]["hub"]["namespace"] == "acme"


def test_a_failing_hub_job_prints_the_local_error(
    served: Served, workers: None, server_hub: HubSim, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, _, remote_err = cli(
        served, "write", "hub", "import", "alice/nope", "--name", "acme/sql", monkeypatch=monkeypatch
    )
    for key in ("LORAHUB_URL", "LORAHUB_TOKEN"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("LORAHUB_HOME", str(served.home / "elsewhere"))
    from typer.testing import CliRunner

    from lora_hub.cli.main import app

    local = CliRunner().invoke(app, ["hub", "import", "alice/nope", "--name", "acme/sql"])
    assert code == local.exit_code == 2
    assert remote_err.startswith("error: no model repository alice/nope on the Hub")
    assert remote_err.splitlines()[0] == local.stderr.splitlines()[0]
