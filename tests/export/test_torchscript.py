"""torchscript: the traced artifact, loaded with ``torch.jit.load`` as the README says, computes
what the unmerged PEFT model computes, on shapes and paddings of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_hub.export.run import export_model
from lora_hub.hashing import hash_file
from tests.export.models import Sources, assert_matches, inputs
from tests.helpers import listing

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "minilm"])
def test_traced_model_matches_peft(sources: Sources, kind: str, tmp_path: Path) -> None:
    src = sources(kind)
    result = export_model(src.merged, tmp_path / "ts", "torchscript")
    out = Path(result.path)
    assert listing(out) == ["lorahub_export.json", "model.ts"]
    m = torch.jit.load(str(out / "model.ts"))
    for batch, length in ((3, 10), (1, 21)):
        ids, mask = inputs(src.vocab, batch=batch, length=length)
        with torch.no_grad():
            assert_matches(m(ids, mask), src.reference(ids, mask), mask)
    rec = json.loads((out / "lorahub_export.json").read_text())
    assert rec["parity"]["passed"] and [p["name"] for p in rec["parity"]["probes"]] == ["shape-a", "shape-b", "padded"]
    assert rec["artifacts"] == [{"path": "model.ts", "size": (out / "model.ts").stat().st_size,
                                 "digest": hash_file(out / "model.ts")[0]}]  # fmt: skip
    assert rec["plan"]["model"]["output"] == ("last_hidden_state" if kind == "minilm" else "logits")
