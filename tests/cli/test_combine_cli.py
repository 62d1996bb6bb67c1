"""`lorahub methods`, `lorahub combine` and `lorahub merge --method` from the command line: output
lines, --json keys, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lora_hub.cli.main import app
from lora_hub.merge.methods import METHODS
from tests.helpers import listing
from tests.merge.test_methods import Models, build_models, save_peft_adapter

runner = CliRunner()
MODULES = 10  # a: q, k, v, o; b: q, v, down; two layers


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return build_models(tmp_path_factory.mktemp("cli-combine-models"))


@pytest.fixture(scope="module")
def dora(models: Models, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-combine-dora") / "dora"
    return save_peft_adapter(models.base, folder, seed=5, r=4, lora_alpha=8, use_dora=True, target_modules=["q_proj"])


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private home and SQLite catalog for the CLI."""
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


def fails(code: int, *args: str | Path) -> list[str]:
    """The error's lines (``error: ...`` and perhaps ``  hint: ...``), checked to be short."""
    result = invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr and result.stdout == ""
    lines = result.stderr.splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), lines
    assert len(lines) == 1 or lines[1].startswith("  hint: ")
    return lines


# --- lorahub methods --------------------------------------------------------------------------


def test_methods_lists_every_method_with_its_params() -> None:
    text = invoke("methods")
    assert text.exit_code == 0 and text.stderr == ""
    blocks: dict[str, list[str]] = {}
    for line in text.stdout.splitlines():
        if not line.startswith(" "):
            blocks[line.split()[0]] = [line]
        else:
            blocks[list(blocks)[-1]].append(line.strip())
    assert list(blocks) == list(METHODS)
    for name, lines in blocks.items():
        m = METHODS[name]
        assert lines[0] == f"{name}  ({', '.join(m.outputs)})  {m.summary}"
        assert lines[1] == m.formula
        flags = [line.split()[0] for line in lines[2:] if line.startswith("--")]
        assert flags == [f"--{p.name.replace('_', '-')}" for p in m.params] + (["--seed"] if m.random else [])
        assert (f"paper: {m.reference}" in lines) == (m.reference is not None)
    assert "--density float = 1.0: fraction of each update kept" in blocks["ties"]
    assert any(line.startswith("--majority-sign str (sum|count) = sum: ") for line in blocks["dare_ties"])
    assert any(line.startswith("--lambda float = 1.0: ") for line in blocks["task_arithmetic"])
    assert "--seed int = 0: seed of the random draws" in blocks["dare_linear"]
    assert blocks["svd"][0].startswith("svd  (combine)  ")
    assert blocks["linear"][0].startswith("linear  (merge, combine)  ")


def test_methods_json_keys() -> None:
    doc = ok_json("methods")
    assert [m["name"] for m in doc] == list(METHODS)
    for m in doc:
        assert set(m) == {"name", "summary", "formula", "reference", "random", "outputs", "params"}
        for p in m["params"]:
            assert set(p) == {"name", "type", "default", "help", "choices", "min_exclusive", "max"}
        assert ("seed" in [p["name"] for p in m["params"]]) == m["random"]
    by_name = {m["name"]: m for m in doc}
    assert by_name["svd"]["outputs"] == ["combine"] and by_name["cat"]["outputs"] == ["merge", "combine"]
    assert [(p["name"], p["type"], p["default"]) for p in by_name["ties"]["params"]] == [
        ("density", "float", 1.0),
        ("majority_sign", "str", "sum"),
    ]
    assert by_name["ties"]["params"][1]["choices"] == ["sum", "count"]
    assert (by_name["ties"]["params"][0]["min_exclusive"], by_name["ties"]["params"][0]["max"]) == (0.0, 1.0)
    assert [p["name"] for p in by_name["dare_linear"]["params"]] == ["density", "seed"]
    assert by_name["dare_ties"]["random"] is True and by_name["ties"]["random"] is False
    assert by_name["ties"]["reference"].startswith("Yadav et al. 2023") and by_name["linear"]["reference"] is None


# --- lorahub combine ----------------------------------------------------------------------------

HEAD = re.compile(r"^(?P<ref>\S+)  sha256:[0-9a-f]{64}  \((?P<state>.*)\)$")
SUMMARY = re.compile(
    r"^  (?P<method>\w+): (?P<n>\d+) modules, rank (?P<ranks>[\d/]+); "
    r"relative error of the rank cut: max (?P<max>\S+), mean (?P<mean>\S+)$"
)


def test_combine_cat_prints_the_version_and_an_exact_cut(env: Path, models: Models) -> None:
    out = env / "ab"
    lines = ok("combine", f"{models.a}@0.6", f"{models.b}@0.4", "--method", "cat", "--name", "acme/ab", "-o", out)
    lines = lines.splitlines()
    assert len(lines) == 2, lines
    head = HEAD.match(lines[0])
    assert head and head["ref"] == "acme/ab:1" and head["state"] == "new"
    assert lines[1] == f"  cat: {MODULES} modules, rank 4/8/12; relative error of the rank cut: max 0, mean 0"
    assert listing(out) == ["adapter_config.json", "adapter_model.safetensors"]
    # the same content again: unchanged, the same version
    again = ok("combine", f"{models.a}@0.6", f"{models.b}@0.4", "--method", "cat", "-n", "acme/ab").splitlines()
    head = HEAD.match(again[0])
    assert head and head["ref"] == "acme/ab:1"
    assert head["state"] == "unchanged: identical content is already this version"
    # the pushed version carries its lineage
    shown = ok_json("show", "acme/ab:1")
    assert shown["lineage"]["method"] == "cat" and [i["weight"] for i in shown["lineage"]["inputs"]] == [0.6, 0.4]


def test_combine_svd_prints_the_worst_modules(env: Path, models: Models) -> None:
    args = ["combine", models.a, models.b, "--method", "svd", "--rank", "2", "--name", "acme/ab2"]
    lines = ok(*args).splitlines()
    assert len(lines) == 3, lines
    summary = SUMMARY.match(lines[1])
    assert summary and summary["method"] == "svd" and summary["n"] == str(MODULES) and summary["ranks"] == "2"
    doc = ok_json(*args)  # the same content: unchanged, and the same errors
    assert set(doc) == {"push", "method", "ranks", "errors", "max_error", "mean_error"}
    assert set(doc["push"]) == {"version", "created", "bytes_written", "updated", "repaired", "warnings"}
    assert doc["push"]["created"] is False
    assert doc["method"] == "svd" and set(doc["ranks"].values()) == {2} and len(doc["errors"]) == MODULES
    errors = doc["errors"]
    assert float(summary["max"]) == pytest.approx(max(errors.values()), rel=1e-2)
    assert float(summary["mean"]) == pytest.approx(sum(errors.values()) / len(errors), rel=1e-2)
    assert doc["max_error"] == max(errors.values())
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    assert lines[2] == "  worst: " + ", ".join(f"{k} {e:.3g}" for k, e in worst)


def test_combine_method_options_reach_the_lineage(env: Path, models: Models) -> None:
    ok(
        "combine", models.a, models.b, "--method", "dare_ties", "--density", "0.5", "--majority-sign", "count",
        "--seed", "7", "--rank", "4", "--name", "acme/dt",
    )  # fmt: skip
    lineage = ok_json("show", "acme/dt:1")["lineage"]
    assert lineage["params"] == {"density": 0.5, "majority_sign": "count", "seed": 7} and lineage["rank"] == 4
    # --param is the same as the named option: the same content again
    again = ok(
        "combine", models.a, models.b, "--method", "dare_ties", "--param", "density=0.5",
        "--param", "majority_sign=count", "--seed", "7", "--rank", "4", "--name", "acme/dt",
    )  # fmt: skip
    assert "acme/dt:1" in again and "unchanged" in again
    # another seed is other content
    other = ok(
        "combine", models.a, models.b, "--method", "dare_ties", "--density", "0.5", "--majority-sign", "count",
        "--seed", "8", "--rank", "4", "--name", "acme/dt",
    )  # fmt: skip
    assert other.startswith("acme/dt:2  ")
    ok("combine", models.a, models.b, "--method", "task_arithmetic", "--lambda", "0.5", "--name", "acme/ta")
    assert ok_json("show", "acme/ta:1")["lineage"]["params"] == {"lambda": 0.5}


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (
            ["--method", "cat", "--rank", "4"],
            2,
            "error: cat is exact at rank sum_i r_i; drop --rank, or use --method svd",
        ),
        (["--method", "nope"], 2, "error: unknown method 'nope'"),
        (["--method", "ties", "--density", "1.5"], 2, "error: ties: density must be in (0.0, 1.0], got 1.5"),
        (["--method", "ties", "--density", "0"], 2, "error: ties: density must be in (0.0, 1.0], got 0.0"),
        (["--method", "ties", "--majority-sign", "median"], 2, "error: ties: majority_sign must be one of sum, count"),
        (["--method", "linear", "--density", "0.5"], 2, "error: method linear takes no parameters; not density"),
        (["--method", "svd", "--seed", "1", "--param", "k=3"], 2, "error: method svd takes no parameters; not k"),
        (["--method", "ties", "--param", "density=lots"], 2, "error: ties: density must be a float, got 'lots'"),
        (["--param", "oops"], 2, "error: --param 'oops' is not KEY=VALUE"),
        (["--method", "svd", "--rank", "0"], 2, "error: --rank must be at least 1, got 0"),
    ],
)
def test_combine_refusals_are_one_line(env: Path, models: Models, extra: list[str], code: int, message: str) -> None:
    lines = fails(code, "combine", models.a, models.b, "--name", "acme/bad", *extra)
    assert lines[0] == message
    if "unknown method" in message:
        assert lines[1].startswith("  hint: choose one of linear, task_arithmetic, ")
    assert ok("list").count("acme/bad") == 0


def test_combine_seed_given_as_param_is_the_same_as_seed(env: Path, models: Models) -> None:
    """``--param`` values are text: ``--param density=0.5`` is converted, so must ``seed=7`` be
    (it is refused with "seed must be a non-negative integer")."""
    args = ["combine", models.a, models.b, "--method", "dare_linear", "--density", "0.5", "--name", "acme/s"]
    ok(*args, "--seed", "7")
    again = ok(*args, "--param", "seed=7")
    assert again.startswith("acme/s:1  ") and "unchanged" in again


@pytest.mark.parametrize("command", ["combine", "merge"])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_lambda_is_a_one_line_usage_error(env: Path, models: Models, command: str, value: str) -> None:
    """Not ``internal error: _LinAlgError`` (combine, exit 70) nor a failed verification that asks
    for a bug report (merge, exit 3)."""
    where = ["--name", "acme/bad"] if command == "combine" else ["--base", models.base, "-o", env / "out"]
    lines = fails(2, command, models.a, models.b, *where, "--method", "task_arithmetic", "--lambda", value)
    assert "lambda" in lines[0]


def test_combine_refuses_a_dora_input(env: Path, models: Models, dora: Path) -> None:
    lines = fails(2, "combine", models.a, dora, "--name", "acme/bad")
    assert lines[0] == f"error: DoRA adapters cannot be combined into a LoRA: {dora}"


def test_combine_unknown_dtype_is_a_one_line_usage_error(env: Path, models: Models) -> None:
    """Not ``internal error: KeyError: 'fp8'`` (exit 70)."""
    lines = fails(2, "combine", models.a, models.b, "--name", "acme/bad", "--dtype", "fp8")
    assert "dtype" in lines[0]


def test_combine_into_an_occupied_folder_is_refused(env: Path, models: Models) -> None:
    (env / "busy").mkdir()
    (env / "busy" / "file").write_text("x")
    lines = fails(2, "combine", models.a, "--name", "acme/bad", "-o", env / "busy")
    assert "is not empty" in lines[0]


# --- lorahub merge --method ---------------------------------------------------------------------


def test_merge_with_a_method(env: Path, models: Models) -> None:
    args = ["merge", f"{models.a}@0.5", f"{models.b}@0.5", "--base", models.base, "--method", "dare_ties"]
    args += ["--density", "0.5", "--seed", "7"]
    first = ok(*args, "-o", env / "m1").splitlines()
    assert first[0].startswith(f"merged {MODULES} tensors, copied ") and first[0].endswith(f"-> {env / 'm1'}")
    assert first[-1].startswith("  recipe sha256:")
    record = json.loads((env / "m1" / "lorahub_merge.json").read_text())
    assert record["recipe"]["method"] == "dare_ties"
    assert record["recipe"]["params"] == {"density": 0.5, "majority_sign": "sum", "seed": 7}
    # the same recipe elsewhere is served from the catalog; another seed is a new merge
    assert "served from the catalog" in ok(*args, "-o", env / "m2").splitlines()[0]
    other = ok(*args[:-1], "8", "-o", env / "m3").splitlines()
    assert other[0].startswith("merged ") and other[-1] != first[-1]


@pytest.mark.parametrize(
    ("extra", "message", "hint"),
    [
        (["--method", "svd"], "error: method svd produces an adapter, not a merged model",
         "  hint: use `lorahub combine --method svd`"),
        (["--method", "ties", "--density", "2"], "error: ties: density must be in (0.0, 1.0], got 2.0", None),
        (["--method", "dare_linear", "--lambda", "2"], "error: method dare_linear takes density; not lambda", None),
    ],
)  # fmt: skip
def test_merge_method_refusals_are_one_line(
    env: Path, models: Models, extra: list[str], message: str, hint: str | None
) -> None:
    lines = fails(2, "merge", models.a, models.b, "--base", models.base, "-o", env / "out", *extra)
    assert lines[0] == message
    assert (lines[1] if len(lines) > 1 else None) == hint
    assert not (env / "out").exists()
