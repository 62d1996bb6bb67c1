"""`lorahub base add/list/show/rm`, `validate`, `push --base` and `list --base` from the command line."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lora_hub.cli.main import app
from lora_hub.types import BaseModelInfo
from tests.helpers import save_llama
from tests.test_compat import (
    Q_TARGETS,
    V_TARGETS,
    expected_fingerprints,
    llama_adapter,
    perturb,
    relative_diffs,
    save_adapter,
)

runner = CliRunner()
REPORT_KEYS = {
    "verdict", "adapter", "base", "base_fingerprint", "trained_on_fingerprint", "problems", "notes", "diff",
    "key_mapping",
}  # fmt: skip


@dataclass(frozen=True)
class Models:
    llama: Path
    tuned: Path  # llama with noise on both q_proj weights
    ad_llama: Path  # q/v adapter trained on llama
    ad_bare: Path  # q/v adapter on a bare LlamaModel: needs "model." added to its paths
    ad_wide: Path  # q/v adapter trained on a Llama with hidden size 64


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    transformers = pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("cli-models")
    llama = save_llama(root / "llama", seed=0)
    wide = save_llama(root / "llama-wide", seed=3, hidden=64)
    return Models(
        llama=llama,
        tuned=perturb(llama, root / "llama-tuned", Q_TARGETS, scale=0.01, seed=7),
        ad_llama=llama_adapter(llama, root / "ad-llama"),
        ad_bare=save_adapter(
            transformers.LlamaModel.from_pretrained(llama), root / "ad-bare", target_modules=["q_proj", "v_proj"]
        ),
        ad_wide=llama_adapter(wide, root / "ad-wide"),
    )


def invoke(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


def run(*args: str | Path, code: int = 0) -> str:
    result = invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    return result.stdout


def run_json(*args: str | Path, code: int = 0) -> object:
    return json.loads(run(*args, "--json", code=code))


def fails(*args: str | Path, code: int = 2) -> str:
    """The one-line error of a failing command: exit ``code``, ``error: ...`` on stderr, no traceback."""
    result = invoke(*args)
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stdout + result.stderr
    return result.stderr


# --- base add / list / show / rm -------------------------------------------------------------------------------


def test_base_add_list_show_rm(models: Models, lorahub_env: dict[str, str]) -> None:
    content, structure, digests = expected_fingerprints(models.llama)
    count = len(digests)

    added = run("base", "add", models.llama, "--name", "llama")
    assert re.fullmatch(rf"llama  {content}  \(registered; {count} tensors, hashed [0-9.]+ kB\)\n", added), added
    again = run("base", "add", models.llama, "--name", "llama")
    assert again == f"llama  {content}  (unchanged; {count} tensors, hashes from cache)\n"
    tuned, _, _ = expected_fingerprints(models.tuned)
    stored = run("base", "add", models.tuned, "--name", "llama-tuned", "--store")
    assert re.fullmatch(
        rf"llama-tuned  {tuned}  \(registered; {count} tensors, hashed [0-9.]+ kB, stored [0-9.]+ kB\)\n", stored
    ), stored

    lines = run("base", "list").splitlines()
    assert lines[0].split() == ["NAME", "MODEL_TYPE", "DTYPE", "PARAMS", "SIZE", "STORED", "FOLDER", "FINGERPRINT"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"llama", "llama-tuned"}
    assert rows["llama"][1:3] == ["llama", "F32"] and rows["llama"][-3:-1] == ["no", "ok"]
    assert rows["llama-tuned"][-3:-1] == ["yes", "ok"] and rows["llama"][-1] == content[:19] + "…"
    listed = run_json("base", "list")
    assert isinstance(listed, list) and [b["name"] for b in listed] == ["llama", "llama-tuned"]
    assert all(b["tensors"] is None for b in listed)

    shown = run("base", "show", "llama")
    fields = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in shown.splitlines()[:12])
    assert fields["name"] == "llama" and fields["content"] == content and fields["structure"] == structure
    assert (fields["model_type"], fields["architectures"], fields["dtype"]) == ("llama", "LlamaForCausalLM", "F32")
    assert (fields["tensors"], fields["stored"]) == (str(count), "no")
    assert fields["path"] == str(models.llama.resolve())
    assert "files" in shown.splitlines() and any(
        line.startswith("  model.safetensors  ") for line in shown.splitlines()
    )
    assert "tensors" not in shown.splitlines() and "q_proj" not in shown

    q0 = "model.layers.0.self_attn.q_proj.weight"
    with_tensors = run("base", "show", "llama", "--tensors").splitlines()
    assert f"  {q0}  F32[32, 32]  model.safetensors  {digests[q0]}" in with_tensors
    assert len(with_tensors) == len(shown.splitlines()) + 1 + count

    as_json = run_json("base", "show", "llama-tuned")
    assert isinstance(as_json, dict) and set(as_json) == set(BaseModelInfo.model_fields)
    assert as_json["stored"] is True and len(as_json["tensors"]) == count
    assert all(f["digest"] and f["digest"].startswith("sha256:") for f in as_json["files"])

    assert run("base", "rm", "llama") == "removed base llama\n"
    assert "no base model named 'llama'" in fails("base", "show", "llama")
    assert "no base model named 'llama'" in fails("base", "rm", "llama")
    removed = run_json("base", "rm", "llama-tuned")
    assert isinstance(removed, dict) and removed["name"] == "llama-tuned"
    assert run("base", "list").startswith("no bases registered")


def test_base_add_errors(models: Models, lorahub_env: dict[str, str], tmp_path: Path) -> None:
    assert "no such folder" in fails("base", "add", tmp_path / "nothing", "--name", "llama")
    assert "config.json missing" in fails("base", "add", models.ad_llama, "--name", "llama")
    run("base", "add", models.llama, "--name", "llama")
    assert "already registered with other content" in fails("base", "add", models.tuned, "--name", "llama")


# --- validate ------------------------------------------------------------------------------------------------------


def test_validate_verdicts_and_exit_codes(models: Models, lorahub_env: dict[str, str]) -> None:
    run("base", "add", models.llama, "--name", "llama")
    run("base", "add", models.tuned, "--name", "llama-tuned")
    run("push", models.ad_llama, "--name", "acme/qv", "--base", "llama")

    exact = run("validate", "acme/qv:1", "--base", "llama").splitlines()
    assert exact[0] == "acme/qv:1 on llama: exact"
    assert "  the base's content fingerprint matches the base the adapter was trained on" in exact
    run("validate", "acme/qv:1", "--base", "llama", "--strict")
    assert run("validate", models.ad_llama, "-b", models.llama).startswith(
        f"{models.ad_llama} on {models.llama}: exact"
    )

    rel = relative_diffs(models.tuned, models.llama, Q_TARGETS + V_TARGETS)
    worst = max(rel, key=lambda n: rel[n])
    compatible = run("validate", "acme/qv:1", "--base", "llama-tuned").splitlines()
    assert compatible[0] == "acme/qv:1 on llama-tuned: compatible"
    weights = next(line for line in compatible if line.startswith("  weights: "))
    assert weights.startswith(
        f"  weights: 2 of 4 target tensors differ; relative difference max {rel[worst]:.4g} ({worst}), mean "
    )
    strict = invoke("validate", "acme/qv:1", "--base", "llama-tuned", "--strict")
    assert strict.exit_code == 1 and strict.stdout.startswith("acme/qv:1 on llama-tuned: compatible")

    mapped = run("validate", models.ad_bare, "--base", "llama").splitlines()
    assert mapped[0].endswith(": exact")
    assert "  key mapping: the base's tensors are the adapter's module paths with the prefix 'model.'" in mapped

    for extra in ([], ["--strict"]):
        result = invoke("validate", models.ad_wide, "--base", "llama", *extra)
        assert result.exit_code == 1 and "Traceback" not in result.stdout + result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == f"{models.ad_wide} on llama: incompatible, 8 problem(s)"
        problems = [line for line in lines if line.startswith("  - [")]
        assert len(problems) == 8
        assert (
            "  - [in_features] model.layers.0.self_attn.q_proj: lora_A takes 64 input features, "
            "the base's model.layers.0.self_attn.q_proj.weight has 32" in problems
        )
        assert "  - [out_features] model.layers.1.self_attn.v_proj: lora_B gives 32 output features, " in "\n".join(
            problems
        )

    assert "no base model named 'nothing'" in fails("validate", "acme/qv:1", "--base", "nothing")


def test_validate_json(models: Models, lorahub_env: dict[str, str]) -> None:
    run("base", "add", models.llama, "--name", "llama")
    run("push", models.ad_llama, "--name", "acme/qv", "--base", "llama")
    content, _, _ = expected_fingerprints(models.llama)
    tuned, _, _ = expected_fingerprints(models.tuned)

    exact = run_json("validate", "acme/qv:1", "--base", "llama")
    assert isinstance(exact, dict) and set(exact) == REPORT_KEYS
    assert (exact["verdict"], exact["adapter"], exact["base"]) == ("exact", "acme/qv:1", "llama")
    assert exact["base_fingerprint"] == exact["trained_on_fingerprint"] == content
    assert exact["problems"] == [] and exact["diff"] is None
    assert exact["key_mapping"] == {"strip": "", "add": ""}

    compatible = run_json("validate", "acme/qv:1", "--base", models.tuned)
    assert isinstance(compatible, dict) and set(compatible) == REPORT_KEYS
    assert compatible["verdict"] == "compatible" and compatible["base_fingerprint"] == tuned
    assert set(compatible["diff"]) == {
        "tensors_compared", "tensors_differing", "max_relative_diff", "mean_relative_diff", "worst_tensor",
    }  # fmt: skip
    assert (compatible["diff"]["tensors_compared"], compatible["diff"]["tensors_differing"]) == (4, 2)
    strict = invoke("validate", "acme/qv:1", "--base", models.tuned, "--strict", "--json")
    assert strict.exit_code == 1 and json.loads(strict.stdout)["verdict"] == "compatible"

    bad = run_json("validate", models.ad_wide, "--base", "llama", code=1)
    assert isinstance(bad, dict) and set(bad) == REPORT_KEYS and bad["verdict"] == "incompatible"
    assert len(bad["problems"]) == 8
    assert set(bad["problems"][0]) == {"code", "module", "expected", "found", "message"}
    assert {(p["code"], p["expected"], p["found"]) for p in bad["problems"]} == {
        ("in_features", "64", "32"),
        ("out_features", "64", "32"),
        ("out_features", "32", "16"),
    }


# --- push --base and list --base ---------------------------------------------------------------------------------


def test_push_base_refuses_an_incompatible_adapter(models: Models, lorahub_env: dict[str, str]) -> None:
    run("base", "add", models.llama, "--name", "llama")
    err = fails("push", models.ad_wide, "--name", "acme/wide", "--base", "llama", code=1)
    lines = err.splitlines()
    assert lines[0] == f"error: {models.ad_wide} does not fit base llama (8 problem(s)):"
    assert sum(line.startswith("  - model.layers.") for line in lines) == 8
    assert f"hint: check with `lorahub validate {models.ad_wide} --base llama`" in err
    assert run_json("list") == []
    assert "no adapter named 'acme/wide'" in fails("show", "acme/wide")


def test_list_base(models: Models, lorahub_env: dict[str, str]) -> None:
    run("push", models.ad_llama, "--name", "acme/before")
    run("push", models.ad_wide, "--name", "acme/wide")
    run("base", "add", models.llama, "--name", "llama")
    run("push", models.ad_bare, "--name", "acme/bare")
    run("push", models.ad_llama, "--name", "acme/pinned", "--base", "llama")

    lines = run("list", "--base", "llama").splitlines()
    assert lines[0].split()[0] == "REF"
    assert {line.split()[0] for line in lines[1:]} == {"acme/before:1", "acme/bare:1", "acme/pinned:1"}
    listed = run_json("list", "--base", "llama")
    assert isinstance(listed, list)
    assert {v["ref"] for v in listed} == {"acme/before:1", "acme/bare:1", "acme/pinned:1"}
    pinned = next(v for v in listed if v["ref"] == "acme/pinned:1")
    assert pinned["base"] == "llama" and pinned["base_fingerprint"] == expected_fingerprints(models.llama)[0]
    assert {v["ref"] for v in run_json("list")} >= {"acme/wide:1"}  # type: ignore[union-attr]
