"""tensorrt: refused before any work where CUDA or torch-tensorrt is missing (here: always, on
these CPU machines); on a GPU with torch-tensorrt (``scripts/gpu_check.sh``), the engine-backed
program matches the unmerged PEFT model, and its record names the GPU and engine settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from lora_hub.errors import ExportError
from lora_hub.export.plan import make_options
from lora_hub.export.run import export_model
from tests.export.models import Sources, assert_matches, inputs, leftovers

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")
HAVE_CUDA = torch.cuda.is_available()
HAVE_TRT = importlib.util.find_spec("torch_tensorrt") is not None


@pytest.mark.skipif(HAVE_CUDA and HAVE_TRT, reason="CUDA and torch-tensorrt are present: nothing to refuse")
def test_refused_before_any_work(sources: Sources, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import lora_hub.export.run as run

    def no_load(plan: object) -> None:
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(run, "load_model", no_load)
    with pytest.raises(ExportError) as info:
        export_model(sources("llama").merged, tmp_path / "trt", "tensorrt")
    needs = [w for w, missing in (("a CUDA GPU", not HAVE_CUDA), ("torch-tensorrt", not HAVE_TRT)) if missing]
    assert info.value.message.startswith(f"cannot export to tensorrt on this machine: needs {' and '.join(needs)}")
    if not HAVE_TRT:
        assert "pip install 'lora-hub[tensorrt]'" in info.value.message
    assert info.value.exit_code == 3 and leftovers(tmp_path / "trt") == []


@pytest.mark.gpu
@pytest.mark.skipif(not (HAVE_CUDA and HAVE_TRT), reason="needs a CUDA GPU and torch-tensorrt (scripts/gpu_check.sh)")
def test_tensorrt_export_matches_peft(sources: Sources, tmp_path: Path) -> None:
    import torch_tensorrt

    src = sources("llama")
    result = export_model(src.merged, tmp_path / "trt", "tensorrt", make_options(max_batch=4, max_seq=64))
    rec = result.record
    assert rec.parity.passed and rec.plan.options.device == "cuda:0"
    assert rec.format_facts["settings"]["immutable_weights"] is False
    assert rec.format_facts["compute_capability"].startswith("sm_")
    m = torch_tensorrt.load(str(Path(result.path) / "model.ep")).module()
    for batch, length in ((3, 10), (4, 64), (1, 5)):
        ids, mask = inputs(src.vocab, batch=batch, length=length)
        with torch.no_grad():
            got = m(ids.cuda(), mask.cuda()).cpu()
        assert_matches(got, src.reference(ids, mask), mask, atol=1e-3)
