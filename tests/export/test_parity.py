"""The parity gate's arithmetic, on tensors whose answer is known: the rule
``max|a - r| <= atol + rtol * max|r|`` over the kept positions, non-finite outputs, shapes, and
the greedy check with its tie rule."""

from __future__ import annotations

import pytest
import torch

from lora_hub.export import get_exporter
from lora_hub.export.parity import EagerGeneration, Reference, check, check_generation, compare, make_probes
from lora_hub.export.plan import TOLERANCES, Tolerance, make_options, plan_export
from tests.export.test_plan import LLAMA, env

TOL = Tolerance(dtype="float32", atol=1e-4, rtol=1e-4)


def test_compare_applies_the_rule_over_kept_positions_only() -> None:
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(2, 5, 7, generator=gen) * 3
    keep = torch.ones(2, 5, dtype=torch.bool)
    keep[1, 3:] = False
    out = ref.clone()
    out[1, 4] += 100.0  # masked out: ignored
    scale = float(ref.double()[keep].abs().max())
    bound = 1e-4 + 1e-4 * scale
    out[0, 2, 3] += 0.9 * bound
    r = compare("p", ref, out, keep, TOL)
    assert r.passed and r.scale == pytest.approx(scale) and r.bound == pytest.approx(bound)
    assert r.max_abs == pytest.approx(0.9 * bound, rel=1e-3) and r.max_rel == pytest.approx(r.max_abs / scale)
    out[0, 2, 3] += 0.2 * bound
    assert not compare("p", ref, out, keep, TOL).passed
    assert not compare("p", ref, out, None, TOL).passed  # unmasked, the padded position counts


def test_compare_fails_on_non_finite_and_on_shape() -> None:
    ref = torch.ones(1, 3, 4)
    bad = ref.clone()
    bad[0, 1, 2] = float("nan")
    r = compare("p", ref, bad, None, TOL)
    assert not r.passed and "non-finite" in (r.note or "")
    r = compare("p", ref, torch.ones(1, 3, 5), None, TOL)
    assert not r.passed and "shape [1, 3, 5]" in (r.note or "")


def eager(tokens: list[list[int]], logits: torch.Tensor) -> EagerGeneration:
    return EagerGeneration(torch.zeros(1, 4, dtype=torch.long), torch.tensor(tokens), list(logits))


def test_greedy_tokens_must_equal_unless_the_step_is_a_tie() -> None:
    logits = torch.zeros(3, 1, 10)
    logits[0, 0, 2], logits[1, 0, 5], logits[2, 0, 7] = 4.0, 3.0, 1.0
    ref = eager([[2, 5, 7]], logits)
    ok = check_generation(ref, torch.tensor([[2, 5, 7]]), list(logits), TOL)
    assert ok.passed and ok.tokens_equal and ok.compared_steps == 3 and ok.max_abs == 0
    wrong = check_generation(ref, torch.tensor([[2, 6, 7]]), list(logits), TOL)
    assert not wrong.passed and "differ from HF generate() at step 1" in (wrong.note or "")
    tied = logits.clone()
    tied[1, 0, 6] = 3.0 - 1e-5  # eager's top-2 at step 1 are 1e-5 apart: rounding may pick either
    tie = check_generation(eager([[2, 5, 7]], tied), torch.tensor([[2, 6, 0]]), list(tied), TOL)
    assert tie.passed and not tie.tokens_equal and tie.tie_at_step == 1 and tie.compared_steps == 2
    drift = list(logits.clone())
    drift[2] = drift[2] + 0.01  # tokens equal, but the last step's logits are off
    assert not check_generation(ref, torch.tensor([[2, 5, 7]]), drift, TOL).passed


def test_probes_cover_two_shapes_and_both_paddings() -> None:
    plan = plan_export("/m", LLAMA, get_exporter("torch-export"), make_options(), env())
    a, b, padded = make_probes(plan)
    assert a.first.shape == (2, 16) and b.first.shape == (3, 7) and padded.first.shape == (3, 12)
    assert bool(a.second.all()) and bool(b.second.all())
    mask = padded.second
    assert mask[0].all() and not mask[1, -1] and mask[1, 0] and not mask[2, 0] and mask[2, -1]
    assert torch.equal(padded.keep, mask.bool())
    assert torch.equal(make_probes(plan)[0].first, a.first)  # seeded
    cached = plan_export("/m", LLAMA, get_exporter("aoti"), make_options(with_cache=True, max_seq=32), env())
    assert [p.name for p in make_probes(cached)] == ["prefill-16", "prefill-7"]
    assert [p.second.tolist() for p in make_probes(cached)][1] == list(range(7))


def test_the_gate_fails_on_a_wrong_reference() -> None:
    """An artifact that equals the model, checked against a reference that is off by a little
    more than the bound in one place, fails; the same reference, exact, passes."""
    plan = plan_export("/m", LLAMA, get_exporter("torch-export"), make_options(), env())
    probes = make_probes(plan)
    table = torch.randn(128, 128, generator=torch.Generator().manual_seed(3))

    def runner(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # a stand-in model: logits = table[ids]
        return table[ids]

    exact = [table[p.first] for p in probes]
    assert check(runner, plan, Reference(probes, exact, None), lambda n: None).passed
    wrong = [t.clone() for t in exact]
    wrong[1][2, 3, 4] += 2 * (TOLERANCES["float32"].atol + TOLERANCES["float32"].rtol * float(wrong[1].abs().max()))
    report = check(runner, plan, Reference(probes, wrong, None), lambda n: None)
    assert not report.passed and [p.passed for p in report.probes] == [True, False, True]
    assert "shape-b 3x7" in report.summary()
