"""The CLI: output, --json, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub.catalog import HEAD_REVISION
from lora_hub.cli.main import app
from tests.helpers import tree_bytes, write_adapter

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result.stdout + result.stderr


def run_json(*args: str) -> object:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_tour(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    src = write_adapter(tmp_path / "a", seed=1)
    out = run(
        "push",
        str(src),
        "--name",
        "acme/sql-lora",
        "--metric",
        "accuracy=0.81",
        "--tag",
        "sql",
        "-d",
        "first",
    )
    assert out.startswith("acme/sql-lora:1  sha256:") and "new" in out
    again = run("push", str(src), "--name", "acme/sql-lora")
    assert again.startswith("acme/sql-lora:1  sha256:") and "unchanged" in again
    run("push", str(write_adapter(tmp_path / "b", seed=2)), "--name", "acme/sql-lora", "-m", "accuracy=0.7")
    listing = run("list")
    assert listing.splitlines()[0].split()[:3] == ["REF", "TAGS", "RANK"]
    assert [line.split()[0] for line in listing.splitlines()[1:]] == ["acme/sql-lora:2", "acme/sql-lora:1"]
    assert "acme/sql-lora:1" in run("list", "--where", "accuracy>=0.8") and "acme/sql-lora:2" not in run(
        "list", "--where", "accuracy>=0.8"
    )
    shown = run("show", "acme/sql-lora:sql")
    assert "ref              acme/sql-lora:1" in shown and "accuracy=0.81" in shown
    assert run("tag", "acme/sql-lora:2", "prod").strip() == "acme/sql-lora:prod -> acme/sql-lora:2"
    assert "bleu=31.2" in run("metrics", "set", "acme/sql-lora:2", "rougeL=0.44", "bleu=31.2")
    assert run("metrics", "rm", "acme/sql-lora:2", "bleu") == "acme/sql-lora:2  accuracy=0.7 rougeL=0.44\n"
    pulled = run("pull", "acme/sql-lora:1", "-o", str(tmp_path / "out"))
    assert "digests verified" in pulled
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)
    assert "removed acme/sql-lora:2" in run("rm", "acme/sql-lora:2")
    assert "removed 1 unreferenced blob(s)" in run("gc")
    assert f"revision {HEAD_REVISION} (head)" in run("db", "upgrade")
    assert run("tag", "acme/sql-lora", "sql", "--delete").strip() == "removed tag sql from acme/sql-lora:1"
    assert run("list", "--tag", "sql") == "no adapters match\n"


def test_json_output_is_stable(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    src = write_adapter(tmp_path / "a")
    pushed = run_json("push", str(src), "--name", "acme/x", "-m", "accuracy=0.5", "-t", "prod")
    assert isinstance(pushed, dict)
    assert set(pushed) == {"version", "created", "bytes_written", "updated", "repaired", "warnings"}
    version_keys = {
        "namespace", "name", "version", "ref", "digest", "created_at", "description", "tags", "metrics",
        "files", "facts", "layout", "base", "base_fingerprint", "lineage",
    }  # fmt: skip
    assert set(pushed["version"]) == version_keys
    assert pushed["version"]["facts"]["rank"] == 4 and pushed["version"]["metrics"] == {"accuracy": 0.5}
    listed = run_json("list")
    assert isinstance(listed, list) and set(listed[0]) == version_keys and listed[0]["layout"] is None
    shown = run_json("show", "acme/x:prod")
    assert isinstance(shown, dict) and shown["layout"]["modules"][0]["path"] == "model.layers.0.self_attn.q_proj"
    pulled = run_json("pull", "acme/x", "-o", str(tmp_path / "o"))
    assert isinstance(pulled, dict) and set(pulled) == {"version", "path", "bytes_written"}
    gc = run_json("gc", "--dry-run")
    assert gc == {"blobs_removed": 0, "bytes_freed": 0, "temp_files_removed": 0, "partials_removed": 0, "dry_run": True}


@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["show", "acme/nothing"], "no adapter named 'acme/nothing'"),
        (["show", "Acme/x"], "upper-case"),
        (["push", "/nonexistent/dir", "--name", "acme/x"], "no such folder"),
        (["list", "--where", "accuracy>>1"], "--where"),
        (["metrics", "set", "acme/x:1", "acc"], "not KEY=VALUE"),
    ],
)
def test_user_errors_are_one_line(lorahub_env: dict[str, str], args: list[str], phrase: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and phrase in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_missing_version_lists_existing(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    run("push", str(write_adapter(tmp_path / "a")), "--name", "acme/x")
    result = runner.invoke(app, ["pull", "acme/x:9", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "versions that exist: 1" in result.stderr


def test_pull_into_non_empty_folder(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    run("push", str(write_adapter(tmp_path / "a")), "--name", "acme/x")
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "f").write_text("x")
    result = runner.invoke(app, ["pull", "acme/x", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "is not a folder lora-hub wrote" in result.stderr
    assert "--overwrite" in result.stderr
    result = runner.invoke(app, ["pull", "acme/x", "-o", str(tmp_path / "o"), "--force"])  # not ours: not enough
    assert result.exit_code == 2 and (tmp_path / "o" / "f").read_text() == "x"
    run("pull", "acme/x", "-o", str(tmp_path / "o"), "--overwrite")
    assert not (tmp_path / "o" / "f").exists()
    result = runner.invoke(app, ["pull", "acme/x", "-o", str(tmp_path / "o")])  # now an earlier pull
    assert result.exit_code == 2 and "holds an earlier lora-hub pull" in result.stderr and "--force" in result.stderr
    run("pull", "acme/x", "-o", str(tmp_path / "o"), "--force")


def test_real_process_shows_no_traceback_unless_debug(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04K\x01.")
    cmd = [sys.executable, "-m", "lora_hub", "push", str(bad), "--name", "acme/x"]
    plain = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **lorahub_env})
    assert plain.returncode == 2
    assert plain.stderr.startswith("error: ") and "pickle" in plain.stderr and "Traceback" not in plain.stderr
    debug = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **lorahub_env, "LORAHUB_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr


def test_version_flag() -> None:
    assert run("--version").startswith("lorahub ")


def test_entry_point_imports_nothing_heavy_before_the_command() -> None:
    """``lorahub`` turns the garbage collector off before SQLAlchemy, pydantic and torch load;
    that only helps if importing the package and its entry point loads none of them."""
    code = (
        "import sys, lora_hub, lora_hub.cli\n"
        "print(sorted(m for m in ('sqlalchemy', 'pydantic', 'torch', 'typer') if m in sys.modules))\n"
        "from lora_hub import Hub, LoraHubError\n"
        "print(Hub.__module__, LoraHubError.__module__)\n"
    )
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert got[:2] == ["[]", "lora_hub.api lora_hub.errors"]
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import lora_hub

        _ = lora_hub.Nope  # type: ignore[attr-defined]
