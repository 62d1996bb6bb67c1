"""onnx: the graph, run with ONNX Runtime as the README says, matches the unmerged PEFT model,
padded batches included (the mask is an input); the combinations that would be silently wrong
or cannot run are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from lora_hub.errors import InvalidArgumentError
from lora_hub.export.plan import make_options
from lora_hub.export.run import export_model
from tests.export.models import Sources, assert_matches, inputs, leftovers
from tests.helpers import listing

pytestmark = [
    pytest.mark.slow,  # an ONNX export takes 10-30 s even for a tiny model
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"),
]
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'lora-hub[export]')")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "minilm"])
def test_onnx_runtime_matches_peft(sources: Sources, kind: str, tmp_path: Path) -> None:
    src = sources(kind)
    result = export_model(src.merged, tmp_path / "onnx", "onnx", make_options(max_seq=64))
    out = Path(result.path)
    assert listing(out) == ["lorahub_export.json", "model.onnx"]  # no external data under 2 GB
    s = ort.InferenceSession(str(out / "model.onnx"))
    for batch, length in ((3, 10), (2, 33)):
        ids, mask = inputs(src.vocab, batch=batch, length=length)
        (got,) = s.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
        assert_matches(got, src.reference(ids, mask), mask)
    facts = result.record.format_facts
    assert facts["opset"]["ai.onnx"] == 20 and facts["external_data"] == []
    assert list(facts["inputs"]) == ["input_ids", "attention_mask"]
    assert list(facts["outputs"]) == ["last_hidden_state" if kind == "minilm" else "logits"]
    assert {"onnx", "onnxscript", "onnxruntime"} <= set(result.record.plan.versions)


@pytest.mark.parametrize(
    ("options", "match"),
    [({"with_cache": True}, "silently drops its KV state"), ({"dtype": "bfloat16"}, "no bfloat16 kernels")],
)
def test_refused_before_any_work(sources: Sources, tmp_path: Path, options: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        export_model(sources("llama").merged, tmp_path / "onnx", "onnx", make_options(**options))
    assert leftovers(tmp_path / "onnx") == []
