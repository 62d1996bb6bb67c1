"""Pipelines (``lora_hub.core.pipeline``): a YAML file's merge and exports, each step served from
its record when unchanged; everything refused before any work when the file is wrong."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from lora_hub import Hub
from lora_hub.errors import DestinationExistsError, ExportError, InvalidArgumentError
from lora_hub.export import run as export_run
from lora_hub.merge import execute as merge_execute
from tests.export.models import Sources, assert_matches, inputs

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


def spy(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What actually ran: ``merge`` for the merge engine, the format for an export."""
    calls: list[str] = []
    real_merge, real_export = merge_execute.execute, export_run.execute

    def merged(*args: Any, **kwargs: Any) -> Any:
        calls.append("merge")
        return real_merge(*args, **kwargs)

    def exported(plan: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(plan.format)
        return real_export(plan, *args, **kwargs)

    monkeypatch.setattr(merge_execute, "execute", merged)
    monkeypatch.setattr(export_run, "execute", exported)
    return calls


def write(folder: Path, text: str, name: str = "pipeline.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def llama(hub: Hub, sources: Sources) -> Sources:
    src = sources("llama")
    hub.base_add(src.base, "tiny-llama")
    hub.push(src.adapter, "acme/llama-lora")
    return sources


def test_a_pipeline_merges_exports_and_does_nothing_the_second_time(
    hub: Hub, llama: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = llama("llama")
    path = write(
        tmp_path / "job",
        """\
        base_model: tiny-llama
        models:
          - model: acme/llama-lora:1
            parameters: {weight: 1.0}
        output: ./merged            # relative to this file
        name: acme/llama-merged
        exports:
          - format: torchscript
          - format: torch-export
            output: ../pt2
            max_seq: 64
        """,
    )
    calls = spy(monkeypatch)
    result = hub.run_pipeline(path)
    assert calls == ["merge", "torchscript", "torch-export"] and result.work_done
    assert result.merge.path == str(tmp_path / "job" / "merged") and result.merge.registered == "acme/llama-merged"
    ts, pt2 = result.exports
    assert ts.path == str(tmp_path / "job" / "merged-torchscript") and pt2.path == str(tmp_path / "pt2")
    assert pt2.record.plan.options.max_seq == 64

    # the artifact computes what the unmerged PEFT model computes (independent of the merge)
    model = torch.jit.load(str(Path(ts.path) / "model.ts"))
    ids, mask = inputs(src.vocab)
    with torch.no_grad():
        assert_matches(model(ids, mask), src.reference(ids, mask), mask)

    # the same file again: every step served from its record, nothing run
    again = hub.run_pipeline(path)
    assert calls == ["merge", "torchscript", "torch-export"] and not again.work_done
    assert again.merge.reused and all(e.reused for e in again.exports)
    # the exports are the merged base's
    assert {e.format for e in hub.base_show("acme/llama-merged").exports} == {"torchscript", "torch-export"}

    # recompute: everything again, into the folders lora-hub wrote (force)
    redone = hub.run_pipeline(path, recompute=True, force=True)
    assert calls[3:] == ["merge", "torchscript", "torch-export"] and redone.work_done


def test_merge_pipeline_exports_beside_the_merge(
    hub: Hub, llama: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = spy(monkeypatch)
    spec = hub.merge_pipeline(
        "tiny-llama", ["acme/llama-lora:1@0.5"], tmp_path / "m", formats=["torchscript", "torchscript"]
    )
    assert [m.spec for m in spec.models] == ["acme/llama-lora:1@0.5"] and [e.format for e in spec.exports] == [
        "torchscript"
    ]
    result = hub.run_pipeline(spec)
    assert calls == ["merge", "torchscript"]
    assert result.exports[0].path == str(tmp_path / "m-torchscript") and result.merge.registered is None
    # an unregistered merge's exports are recorded by the merged content's fingerprint
    tree = hub.lineage("acme/llama-lora:1")
    (merge,) = tree.children
    assert merge.kind == "merge" and merge.path == str(tmp_path / "m") and "@ 0.5" in (merge.how or "")
    assert [(c.kind, c.label, c.path) for c in merge.children] == [
        ("export", "torchscript", str(tmp_path / "m-torchscript"))
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("base_model: tiny-llama\nmodels: [\n", "not valid YAML: line 3"),
        ("- a\n- b\n", "a pipeline is a mapping"),
        ("base_model: tiny-llama\nmodels: []\noutput: ./m\n", "models: List should have at least 1 item"),
        ("models: [{model: a}]\noutput: ./m\n", "base_model: Field required"),
        ("base_model: tiny-llama\nmodels: [{model: a}]\noutput: [m]\n", "output: Input should be a valid string"),
        ("base_model: tiny-llama\nmodels: [{model: a}]\noutput: m\nmerge_metod: ties\n", "merge_metod: Extra inputs"),
        (
            "base_model: tiny-llama\nmodels: [{model: a, weight: 1, parameters: {weight: 2}}]\noutput: m\n",
            "give the weight once",
        ),
        (
            "base_model: tiny-llama\nmodels: [{model: a, parameters: {density: 1}}]\noutput: m\n",
            "other than weight are not supported: density",
        ),
    ],
)
def test_a_wrong_file_is_refused_with_what_is_wrong(hub: Hub, tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        hub.run_pipeline(write(tmp_path, text))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipeline.yaml"]


def test_files_that_are_not_pipelines(hub: Hub, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="no such pipeline file"):
        hub.run_pipeline(tmp_path / "none.yaml")
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00base")
    with pytest.raises(InvalidArgumentError, match="not a text file"):
        hub.run_pipeline(tmp_path / "binary.yaml")
    (tmp_path / "huge.yaml").write_bytes(b"#" * (1 << 20 + 1))
    with pytest.raises(InvalidArgumentError, match="at most"):
        hub.run_pipeline(tmp_path / "huge.yaml")


@pytest.mark.parametrize(
    ("exports", "error", "message"),
    [
        ("[{format: tflite}]", InvalidArgumentError, r"exports\[0\] \(tflite\): unknown export format"),
        ("[{format: onnx, max_batch: 0}]", InvalidArgumentError, r"exports\[0\] \(onnx\): bad export option"),
        ("[{format: torchscript}, {format: torchscript}]", InvalidArgumentError, "each needs a folder of its own"),
        ("[{format: torchscript, output: ./m/ts}]", InvalidArgumentError, "each needs a folder of its own"),
        # known only from the model's config: planned on the base's before the merge
        (
            "[{format: onnx}, {format: torch-export, max_seq: 100000}]",
            InvalidArgumentError,
            r"exports\[1\] \(torch-export\): --max-seq 100000 is longer than the model's \d+ positions",
        ),
    ],
)
def test_a_wrong_export_is_refused_before_the_merge(
    hub: Hub,
    llama: Sources,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    exports: str,
    error: type[Exception],
    message: str,
) -> None:
    calls = spy(monkeypatch)
    path = write(
        tmp_path, f"base_model: tiny-llama\nmodels: [{{model: acme/llama-lora}}]\noutput: ./m\nexports: {exports}\n"
    )
    with pytest.raises(error, match=message):
        hub.run_pipeline(path)
    assert calls == [] and not (tmp_path / "m").exists()


def test_an_unavailable_format_is_refused_before_the_merge(
    hub: Hub, llama: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lora_hub.export import EXPORTERS
    from lora_hub.export.environment import probe_environment

    if EXPORTERS["tensorrt"].unavailable(probe_environment()) is None:
        pytest.skip("tensorrt works on this machine")
    calls = spy(monkeypatch)
    with pytest.raises(ExportError, match="cannot export to tensorrt on this machine") as info:
        hub.run_pipeline(hub.merge_pipeline("tiny-llama", ["acme/llama-lora"], tmp_path / "m", formats=["tensorrt"]))
    assert "nothing was merged" in (info.value.hint or "") and calls == []


def test_the_merge_dtype_is_planned_into_the_exports(
    hub: Hub, llama: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bfloat16 merge exported to ONNX on the CPU (no bfloat16 kernels there): refused before
    the merge, although the base's own config says float32."""
    calls = spy(monkeypatch)
    spec = hub.merge_pipeline("tiny-llama", ["acme/llama-lora"], tmp_path / "m", formats=["onnx"], dtype="bfloat16")
    if str(spec.exports[0].device) not in ("auto", "cpu") or torch.cuda.is_available():
        pytest.skip("onnx would run on a GPU here, where bfloat16 works")
    with pytest.raises(InvalidArgumentError, match=r"exports\[0\] \(onnx\): onnx cannot run bfloat16 on the CPU"):
        hub.run_pipeline(spec)
    assert calls == [] and not (tmp_path / "m").exists()


def test_an_existing_output_is_refused_before_any_step(hub: Hub, llama: Sources, tmp_path: Path) -> None:
    (tmp_path / "m-torchscript").mkdir()
    (tmp_path / "m-torchscript" / "mine.txt").write_text("keep me")
    spec = hub.merge_pipeline("tiny-llama", ["acme/llama-lora"], tmp_path / "m", formats=["torchscript"])
    with pytest.raises(DestinationExistsError):
        hub.run_pipeline(spec)
    assert (tmp_path / "m-torchscript" / "mine.txt").read_text() == "keep me"
