"""aoti: one AOTInductor compile per test (each takes tens of seconds, so there are two in the
whole suite): the package matches the unmerged PEFT model, records the instruction set it needs,
and takes another merge's weights without a recompile; the cached package's greedy tokens equal
PEFT's ``generate()``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_hub.export.aoti import load_package
from lora_hub.export.plan import make_options
from lora_hub.export.run import export_model
from tests.export.models import Sources, assert_matches, greedy, inputs

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"),
]


def test_package_matches_peft_and_takes_other_weights(sources: Sources, tmp_path: Path) -> None:
    src = sources("llama")
    result = export_model(src.merged, tmp_path / "aoti", "aoti", make_options(max_batch=4, max_seq=32))
    out = Path(result.path)
    m = torch._inductor.aoti_load_package(str(out / "model.pt2"))
    for batch, length in ((3, 10), (4, 32), (1, 3)):
        ids, mask = inputs(src.vocab, batch=batch, length=length)
        assert_matches(m(ids, mask), src.reference(ids, mask), mask)
    meta = result.record.format_facts["metadata"]
    assert meta["AOTI_DEVICE_KEY"] == "cpu" and meta["AOTI_CPU_ISA"] and meta["lora_hub_format"] == "aoti"
    assert result.record.format_facts["inductor_configs"]["aot_inductor.package_constants_in_so"] is False
    assert result.record.plan.target.cpu_isa and "compile_s" in result.record.timings

    # the same package, with the base's weights swapped in, computes the base (PEFT with its adapter off)
    ids, mask = inputs(src.vocab)
    with torch.no_grad(), src.peft.disable_adapter():
        base_ref = src.reference(ids, mask)
    assert float((base_ref - src.reference(ids, mask)).abs().max()) > 0.01  # the merge really changed it
    swapped = load_package(out, weights=src.base)
    assert_matches(swapped(ids, mask), base_ref, mask)


def test_cached_package_greedy_tokens_equal_peft_generate(sources: Sources, tmp_path: Path) -> None:
    src = sources("llama")
    result = export_model(src.merged, tmp_path / "aoti", "aoti", make_options(with_cache=True, max_seq=32))
    gen = result.record.parity.generation
    assert gen is not None and gen.passed and gen.tokens_equal
    m = torch._inductor.aoti_load_package(str(Path(result.path) / "model.pt2"))
    prompt = torch.randint(0, src.vocab, (1, 7), generator=torch.Generator().manual_seed(8))
    ours = greedy(lambda ids, pos: m(input_ids=ids, cache_position=pos), prompt, 10)
    assert torch.equal(ours, src.generate(prompt, 10))
