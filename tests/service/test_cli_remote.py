"""The same CLI commands against the local hub and against a real server (``LORAHUB_URL``): the
same stdout, stderr and exit codes, command by command, once times and output folders are
written the same way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from tests.helpers import tree_bytes, write_adapter
from tests.service.conftest import Served

runner = CliRunner()
_TIME = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d(:\d\d(\.\d+)?)?(\+00:00|Z)?")


def _session(tmp: Path, name: str) -> list[tuple[str, int, str, str]]:
    """Run the tour; return (command, exit code, stdout, stderr) per command, normalised."""
    a = write_adapter(tmp / "in" / "a", seed=1)
    b = write_adapter(tmp / "in" / "b", seed=2)
    bad = tmp / "in" / "bad"
    bad.mkdir(parents=True, exist_ok=True)
    (bad / "adapter_config.json").write_text("{}")
    out = tmp / name / "out"
    commands = [
        ["push", str(a), "--name", "acme/sql-lora", "--metric", "accuracy=0.81", "--tag", "sql", "-d", "first"],
        ["push", str(a), "--name", "acme/sql-lora"],
        ["push", str(b), "--name", "acme/sql-lora", "-m", "accuracy=0.7"],
        ["push", str(a), "--name", "acme/sql-lora", "-m", "accuracy=0.83", "--json"],
        ["push", str(bad), "--name", "acme/bad"],
        ["push", str(a), "--name", "Acme/x"],
        ["list"],
        ["list", "--where", "accuracy>=0.8", "--json"],
        ["list", "--sort", "-accuracy", "--limit", "1"],
        ["list", "--where", "accuracy>>1"],
        ["show", "acme/sql-lora:sql"],
        ["show", "acme/sql-lora:1", "--json"],
        ["show", "acme/nope"],
        ["show", "acme/sql-lora:9"],
        ["tag", "acme/sql-lora:2", "prod"],
        ["tag", "acme/sql-lora:2", "latest"],
        ["show", "acme/sql-lora:prod"],
        ["tag", "acme/sql-lora", "prod", "--delete"],
        ["metrics", "set", "acme/sql-lora:2", "bleu=31.2"],
        ["metrics", "rm", "acme/sql-lora:2", "bleu", "--json"],
        ["pull", "acme/sql-lora:1", "-o", str(out)],
        ["pull", "acme/sql-lora:1", "-o", str(out)],
        ["pull", "acme/sql-lora:1", "-o", str(out), "--force", "--json"],
        ["rm", "acme/sql-lora"],
        ["rm", "acme/sql-lora:2"],
        ["list", "--json"],
        ["gc", "--dry-run"],
        ["base", "list"],
        ["validate", "acme/sql-lora:1", "--base", "nope"],
        ["methods"],
    ]
    results = []
    for cmd in commands:
        r = runner.invoke(app, cmd)
        norm = [_TIME.sub("<time>", text.replace(str(out), "<out>")) for text in (r.stdout, r.stderr)]
        results.append((" ".join(cmd).replace(str(out), "<out>"), r.exit_code, *norm))
    assert tree_bytes(out) == tree_bytes(a)
    return results


def test_cli_is_the_same_against_a_server(
    served: Served, tmp_path: Path, second_catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "local-home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", second_catalog_url)
    local = _session(tmp_path, "local")

    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "client-home"))
    monkeypatch.delenv("LORAHUB_DATABASE_URL")
    monkeypatch.setenv("LORAHUB_URL", served.url)
    monkeypatch.setenv("LORAHUB_TOKEN", served.tokens["admin"])
    remote = _session(tmp_path, "remote")

    for mine, theirs in zip(local, remote, strict=True):
        assert mine == theirs
    codes = [code for _, code, _, _ in local]
    assert set(codes) == {0, 2}, codes  # the tour covers failures too
    pushed = json.loads(local[3][2])
    assert pushed["created"] is False and pushed["updated"] == ["metric(s) accuracy=0.83"]
    # Nothing was written to the client's home but its partials registry: no catalog, no blobs.
    assert not (tmp_path / "client-home" / "catalog.db").exists()
    assert not (tmp_path / "client-home" / "blobs").exists()


def test_login_saves_the_token_and_is_used(served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "client-home"))
    monkeypatch.delenv("LORAHUB_TOKEN", raising=False)
    r = runner.invoke(app, ["login", served.url, "--token", served.tokens["write"]])
    assert r.exit_code == 0, r.stderr
    assert "write on acme" in r.stdout
    saved = tmp_path / "client-home" / "tokens.json"
    assert json.loads(saved.read_text()) == {served.url: served.tokens["write"]}
    assert saved.stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("LORAHUB_URL", served.url)
    src = write_adapter(tmp_path / "a", seed=3)
    r = runner.invoke(app, ["push", str(src), "--name", "acme/x"])
    assert r.exit_code == 0 and r.stdout.startswith("acme/x:1  sha256:"), r.stderr
    r = runner.invoke(app, ["push", str(src), "--name", "elsewhere/x"])
    assert r.exit_code == 2 and r.stderr.startswith("error: no namespace 'elsewhere' for this token"), r.stderr
    bad = runner.invoke(app, ["login", served.url, "--token", "lh_nope"])
    assert bad.exit_code == 2 and "not known to the server" in bad.stderr
    assert json.loads(saved.read_text()) == {served.url: served.tokens["write"]}  # unchanged


def test_unreachable_server_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "h"))
    monkeypatch.setenv("LORAHUB_URL", "http://127.0.0.1:1")
    r = runner.invoke(app, ["list"])
    assert r.exit_code == 3
    assert r.stderr.startswith("error: cannot reach the lorahub server at http://127.0.0.1:1")
    assert "Traceback" not in r.stderr
