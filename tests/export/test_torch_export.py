"""torch-export: the ExportedProgram, loaded with ``torch.export.load(...).module()``, matches
the unmerged PEFT model at batch and lengths it was not traced with; with ``--with-cache``, its
greedy tokens equal PEFT's ``generate()``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_hub.export.plan import make_options
from lora_hub.export.run import export_model
from tests.export.models import Sources, assert_matches, greedy, inputs

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning")


@pytest.mark.parametrize("kind", ["llama", "gpt2", "minilm"])
def test_exported_program_matches_peft(sources: Sources, kind: str, tmp_path: Path) -> None:
    src = sources(kind)
    result = export_model(src.merged, tmp_path / "pt2", "torch-export", make_options(max_batch=4, max_seq=48))
    m = torch.export.load(str(Path(result.path) / "model.pt2")).module()
    for batch, length in ((3, 10), (4, 48), (1, 5)):
        ids, mask = inputs(src.vocab, batch=batch, length=length)
        with torch.no_grad():
            assert_matches(m(ids, mask), src.reference(ids, mask), mask)
    with pytest.raises(Exception, match=r"Guard failed|size"):  # the contract's bound is enforced
        m(*inputs(src.vocab, batch=5, length=8))
    facts = result.record.format_facts
    assert facts["user_inputs"] == ["input_ids", "attention_mask"]
    assert result.record.plan.contract.dims == {"batch": (1, 4), "seq": (1, 48)}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_static_cache_greedy_tokens_equal_peft_generate(sources: Sources, kind: str, tmp_path: Path) -> None:
    src = sources(kind)
    result = export_model(src.merged, tmp_path / "cache", "torch-export", make_options(with_cache=True, max_seq=40))
    rec = result.record
    gen = rec.parity.generation
    assert gen is not None and gen.passed and gen.tokens_equal and gen.steps == 8
    assert rec.plan.contract.cache is not None and rec.plan.contract.cache.max_cache_len == 40
    assert "padded batch" in rec.parity.not_checked[0]

    m = torch.export.load(str(Path(result.path) / "model.pt2")).module()
    prompt = torch.randint(0, src.vocab, (1, 9), generator=torch.Generator().manual_seed(5))
    ours = greedy(lambda ids, pos: m(input_ids=ids, cache_position=pos), prompt, 12)
    assert torch.equal(ours, src.generate(prompt, 12))
    # a second sequence on the same program starts over at position 0
    other = torch.randint(0, src.vocab, (1, 6), generator=torch.Generator().manual_seed(6))
    assert torch.equal(greedy(lambda ids, pos: m(input_ids=ids, cache_position=pos), other, 5), src.generate(other, 5))
    saved = json.loads((Path(result.path) / "lorahub_export.json").read_text())
    assert saved["plan"]["contract"]["wrapper"] == "static-cache"
