"""Execution: the parity gate fails an export whose artifact is wrong and leaves nothing; so do
Ctrl-C and bad input; the output folder follows lora-hub's rule; the record says what was made."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from lora_hub.errors import DestinationExistsError, InvalidArgumentError, InvalidModelError
from lora_hub.export import EXPORTERS
from lora_hub.export.exporter import BuildContext
from lora_hub.export.parity import ParityError
from lora_hub.export.plan import make_options
from lora_hub.export.run import ExportRecord, export_model, inspect_model
from lora_hub.hashing import hash_file
from tests.export.models import Sources, leftovers
from tests.helpers import TouchOnUnpickle

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


def perturbing(fmt: str, monkeypatch: pytest.MonkeyPatch, what: str = "weight") -> None:
    """Make ``fmt`` export a model whose weights were changed after the eager reference was taken
    (or, with ``what="interrupt"``, press Ctrl-C once the artifact is half written)."""
    exporter = EXPORTERS[fmt]

    def build(ctx: BuildContext) -> dict[str, Any]:
        if what == "interrupt":
            (ctx.folder / "model.ts").write_bytes(b"half")
            raise KeyboardInterrupt
        with torch.no_grad():
            next(p for n, p in ctx.model.named_parameters() if n.endswith("mlp.down_proj.weight")).mul_(1.01)
        return exporter.build(ctx)

    monkeypatch.setitem(EXPORTERS, fmt, dataclasses.replace(exporter, build=build))


def test_a_wrong_artifact_fails_the_gate_and_leaves_nothing(
    sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt = "torchscript"
    perturbing(fmt, monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(ParityError) as info:
        export_model(sources("llama").merged, out, fmt)
    report = info.value.report
    assert not report.passed and all(not p.passed for p in report.probes)  # 1% on one matrix shows everywhere
    assert info.value.exit_code == 3 and f"the {fmt} artifact failed its parity check" in info.value.message
    assert leftovers(out) == []


def test_a_wrong_cache_artifact_fails_on_its_greedy_check(
    sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    perturbing("torch-export", monkeypatch)
    with pytest.raises(ParityError) as info:
        export_model(
            sources("llama").merged, tmp_path / "out", "torch-export", make_options(with_cache=True, max_seq=24)
        )
    gen = info.value.report.generation
    assert gen is not None and not gen.passed
    assert leftovers(tmp_path / "out") == []


def test_ctrl_c_leaves_nothing(sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    perturbing("torchscript", monkeypatch, "interrupt")
    with pytest.raises(KeyboardInterrupt):
        export_model(sources("llama").merged, tmp_path / "out", "torchscript")
    assert leftovers(tmp_path / "out") == []


def test_output_folder_rule(sources: Sources, tmp_path: Path) -> None:
    src = sources("gpt2").merged
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DestinationExistsError, match="not a folder lora-hub wrote"):
        export_model(src, out, "torchscript")
    with pytest.raises(DestinationExistsError):
        export_model(src, out, "torchscript", force=True)  # force replaces only lora-hub's own output
    assert (out / "notes.txt").read_text() == "mine"
    export_model(src, out, "torchscript", overwrite=True)
    assert not (out / "notes.txt").exists() and (out / "model.ts").is_file()
    with pytest.raises(DestinationExistsError, match="earlier lora-hub export"):
        export_model(src, out, "torchscript")
    before = json.loads((out / "lorahub_export.json").read_text())["created_at"]
    result = export_model(src, out, "torchscript", force=True)
    assert result.record.created_at.isoformat() != before and sorted(p.name for p in out.iterdir()) == [
        ".lorahub-output.json",
        "lorahub_export.json",
        "model.ts",
    ]
    with pytest.raises(Exception, match="the model being exported"):
        export_model(src, src / "inside", "torchscript")


def test_the_record_describes_the_artifact(sources: Sources, tmp_path: Path) -> None:
    src = sources("llama")
    fp = "sha256:" + "1" * 64
    result = export_model(src.merged, tmp_path / "out", "torchscript", source_fingerprint=fp)
    out = Path(result.path)
    saved = ExportRecord.model_validate_json((out / "lorahub_export.json").read_text())
    assert saved == result.record
    plan = saved.plan
    assert plan.source_fingerprint == fp and plan.key and plan.key.startswith("sha256:")
    assert plan.model.architecture == "LlamaForCausalLM" and plan.options.dtype == "float32"
    assert {"torch", "transformers", "python", "lora_hub"} <= set(plan.versions)
    assert plan.target.device == "cpu" and plan.target.cpu
    for a in saved.artifacts:
        assert hash_file(out / a.path) == (a.digest, a.size)
    assert saved.parity.passed and saved.parity.tolerance.atol == 1e-4
    assert {"load_s", "export_s", "check_s", "total_s"} <= set(saved.timings)
    assert saved.peak_rss_bytes > 0 and "torch.jit.load('model.ts')" in saved.usage
    marker = json.loads((out / ".lorahub-output.json").read_text())
    assert marker["kind"] == "export" and marker["key"] == plan.key


# --- bad input --------------------------------------------------------------------------------


def model_folder(tmp_path: Path, config: dict, *, weights: bool = True) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    if weights:
        save_file({"w": torch.zeros(2, 2)}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"model_type": "fancy", "architectures": ["FancyForCausalLM"]}, "does not know the model type 'fancy'"),
        ({"model_type": "llama", "architectures": ["LlamaForTimeTravel"]}, "has no architecture 'LlamaForTimeTravel'"),
        ({"architectures": ["LlamaForCausalLM"]}, "config.json has no model_type"),
        ({"model_type": "t5", "architectures": ["T5ForConditionalGeneration"]}, "encoder-decoder"),
    ],
)
def test_models_transformers_cannot_load_are_refused(tmp_path: Path, config: dict, match: str) -> None:
    folder = model_folder(tmp_path, config)
    with pytest.raises(InvalidModelError, match=match):
        export_model(folder, tmp_path / "out", "torch-export")
    assert leftovers(tmp_path / "out") == []


def test_pickled_weights_are_refused_unread(tmp_path: Path) -> None:
    folder = model_folder(tmp_path, {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, weights=False)
    touched = tmp_path / "unpickled"
    torch.save({"w": TouchOnUnpickle(touched)}, folder / "pytorch_model.bin")
    with pytest.raises(InvalidModelError, match="has only pickled weights") as info:
        export_model(folder, tmp_path / "out", "onnx")
    assert "safetensors" in (info.value.hint or "")
    assert not touched.exists() and leftovers(tmp_path / "out") == []


def test_unknown_format_and_cache_on_an_encoder(sources: Sources, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="unknown export format 'tflite'"):
        export_model(sources("llama").merged, tmp_path / "out", "tflite")
    with pytest.raises(InvalidArgumentError, match="a KV-cache export is for decoder language models; BertModel"):
        export_model(sources("minilm").merged, tmp_path / "out", "torch-export", make_options(with_cache=True))
    assert leftovers(tmp_path / "out") == []


def test_inspect_reads_facts_without_weights(sources: Sources) -> None:
    facts = inspect_model(sources("minilm").merged)
    assert (facts.architecture, facts.task, facts.output) == ("BertModel", "feature-extraction", "last_hidden_state")
    assert not facts.decoder and facts.max_positions == 512 and facts.vocab_size == 30522
    gpt2 = inspect_model(sources("gpt2").merged)
    assert gpt2.decoder and gpt2.static_cache and gpt2.max_positions == 64 and gpt2.use_cache_kwarg


def test_a_stale_partial_of_a_killed_export_is_removed(sources: Sources, tmp_path: Path) -> None:
    out = tmp_path / "out"
    stale = tmp_path / f".out.lorahub-partial-{2**22 + 12345}-dead"
    stale.mkdir()
    (stale / "model.ts").write_bytes(b"x")
    assert not _alive(2**22 + 12345)
    export_model(sources("gpt2").merged, out, "torchscript")
    assert not stale.exists() and out.is_dir()
    shutil.rmtree(out)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
