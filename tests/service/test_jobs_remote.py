"""Merges and exports through a server are jobs (``POST /v1/jobs``): run by the server's own
worker thread on SQLite, by ``lorahub worker`` processes on PostgreSQL; the CLI follows them and
prints what the local command prints. The jobs here name paths of the server's machine, so only
an admin token may submit or see them (merges of registered names: test_merge_remote.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from tests.merge.models import Zoo
from tests.service.conftest import Served, cli

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
runner = CliRunner()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


def test_a_merge_through_the_server_is_a_job(
    served: Served, workers: None, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, adapter, out = str(zoo.base("llama")), str(zoo.adapter("llama-all-linear")), tmp_path / "out"
    code, stdout, stderr = cli(served, "admin", "merge", "--base", base, adapter, "-o", str(out), "--name",
                               "acme/merged", monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0, stderr
    lines = stdout.splitlines()
    assert lines[0] == f"merged 14 tensors, copied 7 -> {out}" and lines[-1] == "  registered as base acme/merged"
    assert (out / "lorahub_merge.json").is_file() and served.hub.base_show("acme/merged").path == str(out)

    code, stdout, _ = cli(served, "admin", "jobs", "list", "--json", monkeypatch=monkeypatch)
    (job,) = json.loads(stdout)
    assert job["state"] == "succeeded" and job["kind"] == "pipeline"
    # the same merge again is served from the record, through a new job
    code, stdout, _ = cli(served, "admin", "merge", "--base", base, adapter, "-o", str(tmp_path / "copy"),
                          monkeypatch=monkeypatch)  # fmt: skip
    assert code == 0 and stdout.startswith(f"{tmp_path / 'copy'}: served from the catalog")

    detached = cli(served, "admin", "merge", "--base", base, f"{adapter}@0.5", "-o", str(tmp_path / "half"),
                   "--detach", "--json", monkeypatch=monkeypatch)  # fmt: skip
    job_id = json.loads(detached[1])["id"]
    waited = cli(served, "admin", "jobs", "wait", job_id, monkeypatch=monkeypatch)
    assert waited[0] == 0 and waited[1].strip().endswith(f"job {job_id} succeeded")
    assert cli(served, "admin", "jobs", "cancel", job_id, monkeypatch=monkeypatch)[1].startswith(
        f"job {job_id} had already succeeded"
    )


def test_a_failing_job_prints_the_local_error(
    served: Served, workers: None, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no-such-base"
    args = ["merge", "--base", str(missing), str(zoo.adapter("llama-all-linear")), "-o", str(tmp_path / "out")]
    remote = cli(served, "admin", *args, monkeypatch=monkeypatch)
    monkeypatch.delenv("LORAHUB_URL")
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "local-home"))
    local = runner.invoke(app, args)
    assert remote[0] == local.exit_code == 2 and remote[2] == local.stderr and remote[2].startswith("error: ")


def test_only_an_admin_may_run_jobs(served: Served, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["merge", "--base", str(zoo.base("llama")), str(zoo.adapter("llama-all-linear")), "-o", str(tmp_path)]
    code, stdout, stderr = cli(served, "write", *args, monkeypatch=monkeypatch)
    assert code == 2 and stdout == "" and stderr.startswith("error: this needs an admin token for namespace *")
    assert cli(served, "read", "jobs", "list", monkeypatch=monkeypatch)[0] == 2
    assert served.hub.jobs() == []
