"""`lorahub analyze`, `reduce` and `extract` from the command line: the table and summary lines, --json
keys, --plot, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lora_hub.cli.main import app
from tests.rank.conftest import Adapters, Finetunes

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    for key in ("LORAHUB_URL", "LORAHUB_STORE_URL", "LORAHUB_DEBUG"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str | Path) -> str:
    result = invoke(*args)
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def ok_json(*args: str | Path) -> Any:
    return json.loads(ok(*args, "--json"))


def fails(code: int, *args: str | Path) -> str:
    result = invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), lines
    assert len(lines) == 1 or lines[1].startswith("  hint: ")
    return lines[0]


def test_analyze_prints_one_row_per_module_and_the_summary(env: Path, adapters: Adapters) -> None:
    ok("push", adapters.rslora, "--name", "acme/rs")
    text = ok("analyze", "acme/rs", "--base", adapters.base, "--energy", "0.9,0.99")
    lines = text.splitlines()
    assert lines[0].split() == ["MODULE", "RANK", "R@0.9", "R@0.99", "EFF_RANK", "STABLE_RANK", "||dW||/||W||"]
    rows = [line.split() for line in lines[1:7]]
    assert [r[0] for r in rows] == [
        f"model.layers.{i}.{m}" for i in (0, 1) for m in ("mlp.down_proj", "self_attn.q_proj", "self_attn.v_proj")
    ]
    assert all(len(r) == 7 for r in rows)
    assert lines[7] == "acme/rs:1: 6 modules, rank 4/8, 2,944 params (11.8 kB float32)"
    assert re.fullmatch(r"  energy 0\.9: uniform r=\d -> [\d,]+ params \(.+\); rank_pattern \d-\d -> .+", lines[8])
    assert lines[9].startswith("  energy 0.99: ")


def test_analyze_json_and_plot(env: Path, adapters: Adapters) -> None:
    doc = ok_json("analyze", adapters.plain)
    assert set(doc) == {"adapter", "digest", "base", "energies", "dtype", "params", "bytes", "modules",
                        "suggestions", "notes"}  # fmt: skip
    assert set(doc["modules"][0]) == {"path", "kind", "rank", "scale", "shape", "singular_values", "energy",
                                      "rank_for", "effective_rank", "stable_rank", "norm", "relative_norm"}  # fmt: skip
    assert doc["energies"] == [0.9, 0.95, 0.99] and doc["base"] is None
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'rank' extra")
    text = ok("analyze", adapters.plain, "--plot", env / "s.png")
    assert text.splitlines()[-1] == f"  spectra plotted to {env / 's.png'}"
    assert (env / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_reduce_and_extract_print_what_they_did(env: Path, adapters: Adapters, finetunes: Finetunes) -> None:
    text = ok("reduce", adapters.plain, "--rank", "2", "--name", "acme/r2")
    first, second, third = text.splitlines()
    assert re.fullmatch(r"acme/r2:1  sha256:[0-9a-f]{64}  \(new\)", first)
    assert re.fullmatch(
        r"  reduce to rank 2: 8 modules, rank 8 -> 2; 3,584 -> 896 params; relative error: max [\d.]+, mean [\d.]+",
        second,
    )
    assert third.startswith("  worst: model.layers.")
    doc = ok_json("reduce", adapters.plain, "--energy", "0.9", "--name", "acme/e9")
    assert set(doc) == {"push", "rank", "energy", "ranks", "ranks_before", "errors", "bounds", "max_error",
                        "mean_error", "params_before", "params_after"}  # fmt: skip
    assert doc["energy"] == 0.9 and doc["rank"] is None

    ok("base", "add", finetunes.base, "--name", "tiny")
    text = ok("extract", "--base", "tiny", "--tuned", finetunes.noisy, "--rank", "4", "--name", "acme/ft")
    lines = text.splitlines()
    assert re.fullmatch(r"acme/ft:1  sha256:[0-9a-f]{64}  \(new\)", lines[0])
    assert lines[1].startswith("  extract at rank 4: 14 modules, rank 4; relative error: max ")
    assert lines[3] == "  changed but not captured: lm_head.weight, model.norm.weight (see --modules-to-save)"
    assert re.fullmatch(r"  [\d.]+ s on cpu, peak memory .+", lines[4])
    assert ok("validate", "acme/ft", "--base", "tiny").splitlines()[0] == "acme/ft:1 on tiny: exact"
    doc = ok_json("extract", "--base", "tiny", "--tuned", finetunes.noisy, "--energy", "0.95", "--name", "acme/ft2",
                  "--modules-to-save", "lm_head")  # fmt: skip
    assert set(doc) == {"push", "rank", "energy", "ranks", "errors", "max_error", "mean_error", "saved", "unchanged",
                        "not_captured", "seconds", "peak_rss_bytes", "device"}  # fmt: skip
    assert doc["saved"] == ["lm_head.weight"] and doc["not_captured"] == ["model.norm.weight"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reduce", "acme/nothing:1", "--rank", "2", "--name", "acme/x"], "error: no adapter named"),
        (["reduce", "PLAIN", "--rank", "2", "--energy", "0.5", "--name", "acme/x"], "not both"),
        (["reduce", "PLAIN", "--name", "acme/x"], "--rank K or --energy E"),
        (["reduce", "PLAIN", "--rank", "0", "--name", "acme/x"], "at least 1"),
        (["reduce", "PLAIN", "--energy", "1.5", "--name", "acme/x"], "(0, 1]"),
        (["reduce", "DORA", "--rank", "2", "--name", "acme/x"], "DoRA"),
        (["analyze", "PLAIN", "--energy", "0.9,abc"], "not a comma-separated list"),
        (["analyze", "PLAIN", "--energy", "0"], "(0, 1]"),
        (["extract", "--base", "BASE", "--tuned", "BASE", "--rank", "2", "--name", "acme/x"], "no target weight"),
        (["extract", "--base", "BASE", "--tuned", "NOWHERE", "--rank", "2", "--name", "acme/x"], "no such folder"),
    ],
)
def test_user_errors_are_one_line(env: Path, adapters: Adapters, args: list[str], message: str) -> None:
    names = {"PLAIN": str(adapters.plain), "DORA": str(adapters.dora), "BASE": str(adapters.base),
             "NOWHERE": str(env / "nowhere")}  # fmt: skip
    line = fails(2, *(names.get(a, a) for a in args))
    assert message in line, line
    assert "acme/x" not in ok("list")
