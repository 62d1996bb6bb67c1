"""`lorahub merge`: the summary, --json, lineage in `lorahub show`, and one-line user errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from lora_hub.merge.execute import pick_device
from tests.merge.models import Zoo

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

runner = CliRunner()
DEVICE = str(pick_device("auto"))  # what --device auto picks here

JSON_KEYS = {
    "path",
    "record",
    "reused",
    "tensors_merged",
    "tensors_copied",
    "bytes_written",
    "seconds",
    "peak_rss_bytes",
    "device",
}
RECORD_KEYS = {
    "recipe_digest",
    "recipe",
    "output_path",
    "content_fingerprint",
    "name",
    "report",
    "versions",
    "created_at",
}
REPORT_KEYS = {"verified_tensors", "worst_error", "worst_tensor", "errors", "tolerances", "passed"}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def base(zoo: Zoo) -> Path:
    return zoo.base("llama")


@pytest.fixture(scope="module")
def adapter(zoo: Zoo) -> Path:
    return zoo.adapter("llama-all-linear")


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    return result.stdout


def user_error(*args: str, code: int = 2) -> str:
    """A failing command: its one-line error (and optional hint), never a traceback."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and len(lines) <= 2, result.stderr
    assert all(line.startswith("  hint: ") for line in lines[1:]), result.stderr
    return lines[0]


def test_merge_prints_a_summary(tmp_path: Path, lorahub_env: dict[str, str], base: Path, adapter: Path) -> None:
    out = tmp_path / "out"
    text = run("merge", "--base", str(base), str(adapter), "-o", str(out))
    digest = json.loads((out / "lorahub_merge.json").read_text())["recipe_digest"]
    lines = text.splitlines()
    assert lines[0].startswith("merged 14 tensors, copied ") and lines[0].endswith(f"-> {out}")
    assert "peak memory" in lines[1] and f" on {DEVICE}" in lines[1]
    assert lines[2].startswith("  verified 14 tensors against a float64 recomputation (probe+rows 14; 112 rows, ")
    assert "% of its rounding bound (" in lines[2]
    assert lines[3] == f"  recipe {digest}"
    assert len(lines) == 4  # not registered: no name

    again = run("merge", "--base", str(base), str(adapter), "-o", str(tmp_path / "copy"))
    assert again.splitlines()[0].startswith(f"{tmp_path / 'copy'}: served from the catalog (recipe ")
    assert f"  recipe {digest}" in again.splitlines()


def test_merge_json_keys_are_stable(tmp_path: Path, lorahub_env: dict[str, str], base: Path, adapter: Path) -> None:
    result = runner.invoke(app, ["merge", "--base", str(base), str(adapter), "-o", str(tmp_path / "out"), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    # stable: these keys stay (new ones may be added)
    assert set(doc) >= JSON_KEYS
    assert set(doc["record"]) >= RECORD_KEYS
    assert set(doc["record"]["report"]) >= REPORT_KEYS
    assert doc["path"] == str(tmp_path / "out") and doc["reused"] is False
    assert doc["tensors_merged"] == 14 and doc["tensors_merged"] + doc["tensors_copied"] == 21
    assert doc["bytes_written"] > 0 and doc["seconds"] >= 0 and doc["peak_rss_bytes"] > 0
    assert doc["device"] == DEVICE
    assert doc["record"]["report"]["passed"] is True and doc["record"]["report"]["verified_tensors"] == 14
    assert doc["record"]["recipe_digest"].startswith("sha256:")

    again = runner.invoke(app, ["merge", "--base", str(base), str(adapter), "-o", str(tmp_path / "o2"), "--json"])
    reused = json.loads(again.stdout)
    assert set(reused) == set(doc) and reused["reused"] is True
    assert reused["record"]["recipe_digest"] == doc["record"]["recipe_digest"]


def test_named_merge_shows_its_lineage(tmp_path: Path, lorahub_env: dict[str, str], base: Path, adapter: Path) -> None:
    run("push", str(adapter), "--name", "acme/all")
    run("base", "add", str(base), "--name", "tiny/llama")
    out = tmp_path / "out"
    text = run("merge", "--base", "tiny/llama", "acme/all@0.7", "-o", str(out), "--name", "acme/merged")
    assert text.splitlines()[-1] == "  registered as base acme/merged"
    digest = json.loads((out / "lorahub_merge.json").read_text())["recipe_digest"]
    shown = run("show", "acme/merged")
    lines = shown.splitlines()
    assert "lineage" in lines
    assert f"  recipe        {digest}" in lines
    adapter_line = next(line for line in lines if line.startswith("  adapter "))
    assert "acme/all:1 @ 0.7  sha256:" in adapter_line
    assert any(line.startswith("  method        linear  dtype auto") for line in lines)
    assert any(line.startswith("  versions ") and "torch" in line and "lora_hub" in line for line in lines)
    assert any(line.startswith("  verification  14 tensors") and line.endswith("passed") for line in lines)
    doc = json.loads(run("show", "acme/merged", "--json"))
    assert doc["lineage"]["recipe_digest"] == digest
    assert doc["lineage"]["recipe"]["adapters"][0]["weight"] == 0.7


def test_user_errors_are_one_line(tmp_path: Path, lorahub_env: dict[str, str], base: Path, adapter: Path) -> None:
    run("push", str(adapter), "--name", "acme/all")
    out = tmp_path / "out"
    # "@x" is not a weight: it stays part of the reference, which names no adapter
    assert "1@x" in user_error("merge", "--base", str(base), "acme/all:1@x", "-o", str(out))
    assert "acme/nosuch" in user_error("merge", "--base", str(base), "acme/nosuch@0.5", "-o", str(out))
    assert "no/such-base" in user_error("merge", "--base", "no/such-base", "acme/all", "-o", str(out))
    assert "missing-dir" in user_error("merge", "--base", str(tmp_path / "missing-dir"), "acme/all", "-o", str(out))
    assert "lots" in user_error("merge", "--base", str(base), "acme/all", "-o", str(out), "--shard-size", "lots")
    assert "float8" in user_error("merge", "--base", str(base), "acme/all", "-o", str(out), "--dtype", "float8")
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    line = user_error("merge", "--base", str(base), "acme/all", "-o", str(out))
    assert "not empty" in line
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_incompatible_adapter_lists_problems_without_traceback(
    tmp_path: Path, lorahub_env: dict[str, str], zoo: Zoo, base: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(app, ["merge", "--base", str(base), str(zoo.adapter("gpt2-conv1d")), "-o", str(out)])
    assert result.exit_code == 1, result.stderr
    assert result.stderr.startswith("error: ") and "does not fit base" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert not out.exists()
