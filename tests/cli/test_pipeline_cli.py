"""`lorahub merge --export`, `lorahub run`, `lorahub lineage` and `lorahub export --recompute`:
what they print, their JSON, and that a second run is served from the records."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from tests.export.conftest import sources
from tests.export.models import Sources

__all__ = ["sources"]

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")

runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout if code == 0 else result.stderr


@pytest.fixture
def registered(lorahub_env: dict[str, str], sources: Sources) -> Sources:
    src = sources("llama")
    run("base", "add", str(src.base), "--name", "tiny-llama")
    run("push", str(src.adapter), "--name", "acme/llama-lora")
    return sources


def test_merge_then_export_prints_both_and_serves_them_again(registered: Sources, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    args = ["merge", "--base", "tiny-llama", "acme/llama-lora:1", "-o", str(out), "--name", "acme/merged"]
    text = run(*args, "--export", "torchscript")
    lines = text.splitlines()
    assert lines[0].startswith("merged ") and lines[0].endswith(f"-> {out}")
    assert "  registered as base acme/merged" in lines
    exported = next(line for line in lines if line.startswith("exported "))
    assert exported == f"exported acme/merged -> {tmp_path / 'merged-torchscript'}  (torchscript, float32, cpu)"
    assert (tmp_path / "merged-torchscript" / "model.ts").is_file()

    again = run(*args, "--export", "torchscript")
    assert again.splitlines()[0].startswith(f"{out}: served from the catalog (recipe ")
    served = [line for line in again.splitlines() if "served from the catalog" in line]
    assert any("merged-torchscript" in line for line in served), again

    doc = json.loads(run(*args, "--export", "torchscript", "--json"))
    assert set(doc) >= {"merge", "exports", "work_done"} and doc["work_done"] is False
    assert doc["merge"]["reused"] is True and [e["reused"] for e in doc["exports"]] == [True]
    assert doc["exports"][0]["record"]["plan"]["format"] == "torchscript"

    shown = run("base", "show", "acme/merged")
    assert "exports" in shown and "torchscript" in shown and str(tmp_path / "merged-torchscript") in shown


def test_merge_refuses_an_unknown_export_format_before_merging(registered: Sources, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    error = run("merge", "--base", "tiny-llama", "acme/llama-lora:1", "-o", str(out), "--export", "gguf", code=2)
    assert error.startswith("error: ") and "gguf" in error
    assert not out.exists() and not (tmp_path / "merged-gguf").exists()


def test_run_a_pipeline_twice(registered: Sources, tmp_path: Path) -> None:
    path = tmp_path / "job" / "pipeline.yaml"
    path.parent.mkdir()
    path.write_text(
        textwrap.dedent(
            """\
            base_model: tiny-llama
            models:
              - model: acme/llama-lora:1
                weight: 1.0
            output: ./merged
            name: acme/piped
            exports:
              - format: torchscript
            """
        )
    )
    first = run("run", str(path))
    assert first.splitlines()[0].startswith("merged ") and "exported acme/piped -> " in first
    assert "nothing to do" not in first
    second = run("run", str(path))
    assert (
        second.splitlines()[-1] == "nothing to do: every step was served from its record (--recompute does them again)"
    )

    # --recompute into the pipeline's own, registered folder needs --force, and then redoes both steps
    refused = run("run", str(path), "--recompute", code=2)
    assert refused.startswith("error: ") and "--force" in refused
    redone = run("run", str(path), "--recompute", "--force")
    assert redone.splitlines()[0].startswith("merged ") and "nothing to do" not in redone

    doc = json.loads(run("run", str(path), "--json"))
    assert doc["work_done"] is False and doc["merge"]["registered"] == "acme/piped"

    bad = path.with_name("bad.yaml")
    bad.write_text("base_model: tiny-llama\nmodels: [\n")
    error = run("run", str(bad), code=2)
    assert error.startswith("error: ") and "bad.yaml" in error and "line" in error


def test_lineage_shows_merges_and_exports(registered: Sources, tmp_path: Path) -> None:
    out = tmp_path / "merged"
    run("merge", "--base", "tiny-llama", "acme/llama-lora:1", "-o", str(out), "--name", "acme/merged",
        "--export", "torchscript")  # fmt: skip
    text = run("lineage", "acme/llama-lora:1")
    lines = text.splitlines()
    assert lines[0].startswith("acme/llama-lora:1  sha256:")
    merge_line = next(line for line in lines if "acme/merged" in line)
    assert merge_line.lstrip("|`- ").startswith("merge") and str(out) in merge_line
    assert any("torchscript" in line and "merged-torchscript" in line for line in lines), text

    doc = json.loads(run("lineage", "acme/llama-lora:1", "--json"))
    assert doc["kind"] == "adapter" and doc["label"] == "acme/llama-lora:1"
    (merge,) = doc["children"]
    assert merge["label"] == "acme/merged" and merge["path"] == str(out)
    assert [c["label"] for c in merge["children"]] and "torchscript" in json.dumps(merge["children"])

    alone = run("lineage", "tiny-llama")
    assert "acme/merged" in alone
    missing = run("lineage", "acme/nothing:1", code=2)
    assert missing.startswith("error: ")


def test_export_recompute_does_the_export_again(registered: Sources, tmp_path: Path) -> None:
    first = run("export", "tiny-llama", "--format", "torchscript", "-o", str(tmp_path / "ts"))
    assert first.splitlines()[0].startswith("exported tiny-llama -> ")
    again = run("export", "tiny-llama", "--format", "torchscript", "-o", str(tmp_path / "ts"))
    assert "served from the catalog" in again.splitlines()[0]
    args = ["export", "tiny-llama", "--format", "torchscript", "-o", str(tmp_path / "ts"), "--recompute"]
    refused = run(*args, code=2)
    assert refused.startswith("error: ") and "--force" in refused
    redone = run(*args, "--force")
    assert redone.splitlines()[0].startswith("exported tiny-llama -> ")
