"""``lorahub hub import`` / ``hub export`` and ``base add hf://`` from the command line: human output, ``--json``,
and errors as one line with a hint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from tests.helpers import write_adapter
from tests.hubsim import HubSim
from tests.hubsync.helpers import adapter_files, publish

runner = CliRunner()
REPO = "alice/sql-lora"


@pytest.fixture
def env(lorahub_env: dict[str, str], hf_hub: HubSim, monkeypatch: pytest.MonkeyPatch) -> HubSim:
    monkeypatch.setenv("HF_TOKEN", hf_hub.write_token)
    return hf_hub


def test_import_human_and_json(env: HubSim, tmp_path: Path) -> None:
    sha = publish(env, REPO, adapter_files(tmp_path))
    first = runner.invoke(app, ["hub", "import", REPO, "--name", "acme/sql", "--endpoint", env.url])
    assert first.exit_code == 0, first.output
    assert first.output.startswith("acme/sql:1  sha256:") and f"new, from hf://{REPO}@{sha};" in first.output
    again = runner.invoke(app, ["hub", "import", f"{REPO}@{sha}", "--name", "acme/sql", "--json", "--endpoint",
                                env.url])  # fmt: skip
    assert again.exit_code == 0, again.output
    doc = json.loads(again.output)
    assert {"version", "source", "downloaded_bytes", "created"} <= set(doc)
    assert doc["created"] is False and doc["downloaded_bytes"] == 0 and doc["source"] == f"hf://{REPO}@{sha}"
    assert doc["version"]["ref"] == "acme/sql:1" and doc["version"]["lineage"]["commit"] == sha


def test_export_human_json_and_up_to_date(env: HubSim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", env.url)
    assert runner.invoke(app, ["push", str(write_adapter(tmp_path / "a")), "--name", "acme/sql"]).exit_code == 0
    first = runner.invoke(app, ["hub", "export", "acme/sql", REPO, "--create", "--json"])
    assert first.exit_code == 0, first.output
    doc = json.loads(first.output)
    assert {"repo_id", "commit", "created_commit", "uploaded_bytes"} <= set(doc)
    assert doc["created_commit"] is True and doc["commit"] == env.head(REPO) and doc["uploaded_bytes"] > 0
    again = runner.invoke(app, ["hub", "export", "acme/sql", REPO])
    assert again.exit_code == 0, again.output
    assert again.output == f"{REPO}@main is up to date ({doc['commit']}); nothing was written\n"
    assert runner.invoke(app, ["push", str(write_adapter(tmp_path / "b", seed=1)), "--name", "acme/sql"]).exit_code == 0
    plan = runner.invoke(app, ["hub", "export", "acme/sql", REPO, "--dry-run"])
    assert plan.exit_code == 0, plan.output
    assert (
        plan.output.startswith(f"dry run: {REPO}@main would get 2 file(s), ") and "nothing was written" in plan.output
    )
    assert env.head(REPO) == doc["commit"]


def test_errors_are_one_line_with_a_hint(env: HubSim, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", env.url)
    missing = runner.invoke(app, ["hub", "import", "alice/nope", "--name", "acme/sql"])
    assert missing.exit_code == 2
    assert missing.output.startswith("error: no model repository alice/nope on the Hub") and "hint:" in missing.output
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = runner.invoke(app, ["hub", "import", REPO, "--name", "acme/sql", "--json"])
    assert json.loads(offline.output)["error"]["code"] == "hub" and offline.exit_code == 2
    bad = runner.invoke(app, ["hub", "import", "not-a-repo", "--name", "acme/sql"])
    assert bad.exit_code == 2 and "not a Hub model repository" in bad.output and "Traceback" not in bad.output
