"""``lorahub export`` and ``lorahub exporters``: the summary, ``--json``, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lora_hub.cli.main import app
from tests.export.models import Sources, leftovers

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
runner = CliRunner()
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    for var in ("LORAHUB_URL", "LORAHUB_STORE_URL", "LORAHUB_DEBUG"):
        monkeypatch.delenv(var, raising=False)


def user_error(*args: str, code: int) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == "" and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: ") and all(line.startswith("  hint: ") for line in lines[1:]), result.stderr
    return lines[0]


def test_export_prints_a_summary_and_json(sources: Sources, tmp_path: Path) -> None:
    src = sources("gpt2").merged
    result = runner.invoke(app, ["export", str(src), "--format", "torchscript", "-o", str(tmp_path / "ts")])
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"exported {src} -> {tmp_path / 'ts'}  (torchscript, float32, cpu)"
    assert lines[1].startswith("  model.ts  ") and "sha256:" in lines[1]
    assert lines[2].startswith("  parity vs eager (float32: atol 0.0001 + rtol 0.0001 x max|eager|): passed; worst")
    assert lines[3].startswith("  export ") and "peak memory" in lines[3]
    assert lines[4].startswith("  key sha256:")

    result = runner.invoke(app, ["export", str(src), "--format", "torchscript", "-o", str(tmp_path / "j"), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc) == {"path", "record", "reused"}
    assert doc["reused"] is True  # the same content, format and options: copied from the first export
    assert set(doc["record"]) >= {"plan", "artifacts", "format_facts", "parity", "usage", "timings", "peak_rss_bytes"}
    assert doc["record"]["parity"]["passed"] is True and doc["record"]["plan"]["format"] == "torchscript"


def test_exporters_and_list_formats(tmp_path: Path) -> None:
    result = runner.invoke(app, ["exporters"])
    assert result.exit_code == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert names == ["torchscript", "torch-export", "aoti", "onnx", "tensorrt"]
    assert "torch-export  ok  (--with-cache)" in result.stdout
    if NO_CUDA:
        assert "tensorrt  unavailable: needs a CUDA GPU" in result.stdout
    listed = runner.invoke(app, ["export", "--list-formats"])
    assert listed.exit_code == 0 and listed.stdout == result.stdout
    doc = json.loads(runner.invoke(app, ["exporters", "--json"]).stdout)
    assert [d["name"] for d in doc] == names and all({"available", "reason"} <= set(d) for d in doc)


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA; this one has a GPU")
def test_tensorrt_is_refused_in_one_line(sources: Sources, tmp_path: Path) -> None:
    line = user_error("export", str(sources("gpt2").merged), "--format", "tensorrt", "-o", str(tmp_path / "t"), code=3)
    assert line.startswith("error: cannot export to tensorrt on this machine: needs a CUDA GPU")
    assert leftovers(tmp_path / "t") == []


def test_user_errors_are_one_line(sources: Sources, tmp_path: Path) -> None:
    src = str(sources("gpt2").merged)
    assert "unknown export format 'tflite'" in user_error("export", src, "--format", "tflite", "-o", "x", code=2)
    assert "missing --output" in user_error("export", src, "--format", "onnx", code=2)
    line = user_error("export", src, "--format", "onnx", "--with-cache", "-o", str(tmp_path / "o"), code=2)
    assert "onnx cannot carry a KV cache" in line
    assert leftovers(tmp_path / "o") == []
