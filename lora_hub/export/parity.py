"""The parity gate: every artifact is run back in its own runtime and compared with the eager
transformers model (same weights, dtype and device) on seeded probes; above the tolerance the
export fails.

Probes, for the main-output programs (``input_ids, attention_mask``):
- ``shape-a``: batch ``min(2, max_batch)`` x ``min(16, max_seq)``, no padding;
- ``shape-b``: another batch and length (``min(3, max_batch)`` x ``min(7, max_seq - 1)``), which
  shows that the artifact really is dynamic;
- ``padded``: a batch with one right-padded and one left-padded row and its mask, compared at the
  positions the mask keeps.
For the static-cache programs (``input_ids, cache_position``): two prompt lengths, prefilled in
one call each, against the eager forward; and ``steps`` greedy tokens, prompt prefilled then one
token per call, against HF ``generate()`` (greedy, dynamic cache), token for token, with the
logits of every step compared too.

For each probe: ``max_abs = max|a - r|`` and ``scale = max|r|`` over the compared positions,
``rel = max_abs / scale``; it passes when ``max_abs <= atol + rtol * scale`` (``plan.TOLERANCES``)
and every output is finite where the eager one is. Greedy tokens must be equal; where they differ
at a step whose eager top-2 logits are closer than the tolerance (a tie that rounding may break
either way), the check stops there and says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from lora_hub.errors import ExportError
from lora_hub.export.plan import ExportPlan, Tolerance

if TYPE_CHECKING:
    import torch


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProbeResult(_Frozen):
    name: str
    shape: list[int]
    padded: bool
    max_abs: float
    max_rel: float
    scale: float = Field(description="max |eager output| over the compared positions")
    bound: float = Field(description="atol + rtol * scale")
    passed: bool
    note: str | None = None


class GenerationCheck(_Frozen):
    reference: str
    prompt_tokens: int
    steps: int
    eager_tokens: list[list[int]]
    artifact_tokens: list[list[int]]
    tokens_equal: bool
    compared_steps: int
    max_abs: float
    max_rel: float
    bound: float
    tie_at_step: int | None = Field(default=None, description="a step whose eager top-2 logits were within the bound")
    passed: bool
    note: str | None = None


class ParityReport(_Frozen):
    passed: bool
    reference: str
    tolerance: Tolerance
    rule: str = "max|artifact - eager| <= atol + rtol * max|eager|, over the compared positions"
    seed: int
    probes: list[ProbeResult]
    generation: GenerationCheck | None = None
    not_checked: list[str] = Field(default_factory=list)
    worst_abs: float
    worst_rel: float

    def summary(self) -> str:
        """One line for an error message or the CLI."""
        bad = [p for p in self.probes if not p.passed]
        parts = [
            f"{p.name} {'x'.join(map(str, p.shape))}: max abs {p.max_abs:.3g} > {p.bound:.3g}"
            + (f" ({p.note})" if p.note else "")
            for p in bad
        ]
        gen = self.generation
        if gen is not None and not gen.passed:
            parts.append(gen.note or f"greedy tokens: max abs {gen.max_abs:.3g} > {gen.bound:.3g}")
        if not parts:
            return f"worst max abs {self.worst_abs:.3g} (relative {self.worst_rel:.3g})"
        return "; ".join(parts)


class ParityError(ExportError):
    """An artifact that does not compute what the eager model computes; ``report`` says where."""

    def __init__(self, fmt: str, report: ParityReport) -> None:
        tol = report.tolerance
        super().__init__(
            f"the {fmt} artifact failed its parity check against the eager model "
            f"({tol.dtype}: atol {tol.atol:g} + rtol {tol.rtol:g} x max|eager|): {report.summary()}",
            hint="nothing was written; rerun with LORAHUB_DEBUG=1 for the traceback, and report it with the "
            "library versions if the model loads and runs in transformers",
        )
        self.report = report


@dataclass(frozen=True)
class Probe:
    name: str
    first: torch.Tensor  # input_ids
    second: torch.Tensor  # attention_mask, or cache_position
    keep: torch.Tensor | None  # [batch, seq] bool: positions compared (None: all)
    padded: bool = False


def make_probes(plan: ExportPlan) -> list[Probe]:
    """The seeded probe inputs of ``plan`` (on the CPU)."""
    import torch

    gen = torch.Generator().manual_seed(plan.options.seed + 1)
    vocab = plan.model.vocab_size or 2
    max_batch, max_seq = int(plan.options.max_batch or 1), int(plan.options.max_seq or 2)

    def ids(batch: int, seq: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, seq), generator=gen)

    if plan.contract.wrapper == "static-cache":
        prompt = max_seq - 1
        lengths = sorted({min(16, prompt), min(7, prompt - 1)}, reverse=True)
        return [Probe(f"prefill-{n}", ids(max_batch, n), torch.arange(n), None) for n in lengths if n >= 1]
    seq_a = max(1, min(16, max_seq))
    seq_b = max(1, min(7, max_seq - 1))
    probes = [
        Probe("shape-a", ids(min(2, max_batch), seq_a), torch.ones(min(2, max_batch), seq_a, dtype=torch.long), None),
        Probe("shape-b", ids(min(3, max_batch), seq_b), torch.ones(min(3, max_batch), seq_b, dtype=torch.long), None),
    ]
    seq_p = min(12, max_seq)
    if seq_p >= 3:
        rows = min(3, max_batch)
        x = ids(rows, seq_p)
        mask = torch.ones(rows, seq_p, dtype=torch.long)
        cut = seq_p // 3
        pad = plan.model.pad_token_id if plan.model.pad_token_id is not None else 0
        patterns = ["right", "left", "full"] if rows < 3 else ["full", "right", "left"]
        for row, kind in enumerate(patterns[:rows]):
            if kind == "right":
                mask[row, seq_p - cut :] = 0
            elif kind == "left":
                mask[row, :cut] = 0
            x[row][mask[row] == 0] = pad
        probes.append(Probe("padded", x, mask, mask.bool(), padded=True))
    return probes


def generation_prompt(plan: ExportPlan) -> tuple[torch.Tensor, int]:
    """The prompt of the greedy check and how many tokens to generate (both fit in the cache)."""
    import torch

    cache = plan.contract.cache
    assert cache is not None
    gen = torch.Generator().manual_seed(plan.options.seed + 2)
    length = max(1, min(8, cache.max_cache_len // 2))
    steps = max(1, min(plan.options.steps, cache.max_cache_len - length))
    return torch.randint(0, plan.model.vocab_size or 2, (cache.batch_size, length), generator=gen), steps


def to_device(t: torch.Tensor, plan: ExportPlan) -> torch.Tensor:
    return t.to(plan.options.device)


def eager_outputs(model: Any, plan: ExportPlan, probes: list[Probe]) -> list[torch.Tensor]:
    """The eager model's main output for every probe, on the CPU."""
    import torch

    from lora_hub.export.wrappers import main_output

    outs = []
    with torch.no_grad():
        if plan.contract.wrapper == "static-cache":
            for p in probes:
                outs.append(model(input_ids=to_device(p.first, plan), use_cache=False).logits.cpu())
        else:
            wrapped = main_output(model, plan)
            for p in probes:
                outs.append(wrapped(to_device(p.first, plan), to_device(p.second, plan)).cpu())
    return outs


@dataclass(frozen=True)
class EagerGeneration:
    prompt: torch.Tensor
    tokens: torch.Tensor  # [batch, steps]
    logits: list[torch.Tensor]  # per step, [batch, vocab], raw (before any logits processor)


def eager_generation(model: Any, plan: ExportPlan) -> EagerGeneration:
    """HF ``generate()``, greedy, with its default (dynamic) cache and a clean generation config
    (no EOS stop, no repetition penalty), so that it runs every step and picks the argmax."""
    import torch
    from transformers import GenerationConfig

    prompt, steps = generation_prompt(plan)
    saved = model.generation_config
    pad = plan.model.pad_token_id if plan.model.pad_token_id is not None else 0
    model.generation_config = GenerationConfig(pad_token_id=pad, bos_token_id=None, eos_token_id=None)
    try:
        with torch.no_grad():
            out = model.generate(
                input_ids=to_device(prompt, plan),
                attention_mask=to_device(torch.ones_like(prompt), plan),  # never inferred from a pad id in the prompt
                max_new_tokens=steps,
                do_sample=False,
                num_beams=1,
                output_logits=True,
                return_dict_in_generate=True,
            )
    finally:
        model.generation_config = saved
    tokens = out.sequences[:, prompt.shape[1] :].cpu()
    return EagerGeneration(prompt, tokens, [x.float().cpu() for x in out.logits])


def compare(
    name: str, ref: torch.Tensor, out: Any, keep: torch.Tensor | None, tol: Tolerance, padded: bool = False
) -> ProbeResult:
    """One probe's result (see the module docstring for the rule)."""
    import torch

    out = torch.as_tensor(out)
    shape = list(ref.shape)
    note: str | None = None
    if list(out.shape) != shape:
        note = f"the artifact returned shape {list(out.shape)}, the eager model {shape}"
        inf = float("inf")
        return ProbeResult(name=name, shape=shape, padded=padded, max_abs=inf, max_rel=inf, scale=0.0, bound=0.0,
                           passed=False, note=note)  # fmt: skip
    r = ref.detach().to("cpu", torch.float64)
    a = out.detach().to("cpu", torch.float64)
    if keep is not None and r.dim() >= 2 and tuple(keep.shape) == tuple(r.shape[:2]):
        r, a = r[keep], a[keep]
    finite = torch.isfinite(r)
    r, a = r[finite], a[finite]
    if not bool(torch.isfinite(a).all()):
        max_abs = float("inf")
        note = f"{int((~torch.isfinite(a)).sum())} non-finite value(s) where the eager output is finite"
    else:
        max_abs = float((a - r).abs().max()) if r.numel() else 0.0
    scale = float(r.abs().max()) if r.numel() else 0.0
    bound = tol.atol + tol.rtol * scale
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return ProbeResult(
        name=name,
        shape=shape,
        padded=padded,
        max_abs=max_abs,
        max_rel=rel,
        scale=scale,
        bound=bound,
        passed=max_abs <= bound,
        note=note,
    )


def artifact_generation(
    runner: Callable[[Any, Any], Any], plan: ExportPlan, prompt: torch.Tensor, steps: int
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy decoding with the artifact: the prompt in one call, then one token per call."""
    import torch

    length = prompt.shape[1]
    with torch.no_grad():
        logits = torch.as_tensor(runner(to_device(prompt, plan), to_device(torch.arange(length), plan)))
        step_logits = [logits[:, -1].float().cpu()]
        tokens = [step_logits[-1].argmax(-1)]
        for i in range(1, steps):
            nxt = tokens[-1][:, None]
            logits = torch.as_tensor(runner(to_device(nxt, plan), to_device(torch.tensor([length + i - 1]), plan)))
            step_logits.append(logits[:, -1].float().cpu())
            tokens.append(step_logits[-1].argmax(-1))
    return torch.stack(tokens, dim=1), step_logits


def check_generation(
    eager: EagerGeneration, tokens: torch.Tensor, logits: list[torch.Tensor], tol: Tolerance
) -> GenerationCheck:
    import torch

    steps = eager.tokens.shape[1]
    compared = steps
    tie_at = None
    note = None
    equal = bool(torch.equal(tokens, eager.tokens))
    if not equal:
        first = int((tokens != eager.tokens).any(dim=0).nonzero()[0])
        ref = eager.logits[first].double()
        rows = (tokens[:, first] != eager.tokens[:, first]).nonzero().flatten().tolist()
        scale = float(ref.abs().max())
        gaps = [float(ref[r, eager.tokens[r, first]] - ref[r, tokens[r, first]]) for r in rows]
        if max(gaps) <= tol.atol + tol.rtol * scale:
            tie_at, compared = first, first + 1
            note = f"step {first}: the eager top-2 logits are {max(gaps):.3g} apart (a tie); compared up to it"
        else:
            compared = first + 1
            note = (
                f"greedy tokens differ from HF generate() at step {first} "
                f"(eager {eager.tokens[rows[0], first].item()}, artifact {tokens[rows[0], first].item()})"
            )
    diffs = [float((logits[i].double() - eager.logits[i].double()).abs().max()) for i in range(compared)]
    scale = max(float(eager.logits[i].abs().max()) for i in range(compared))
    bound = tol.atol + tol.rtol * scale
    max_abs = max(diffs)
    passed = (equal or tie_at is not None) and max_abs <= bound
    if note is None and not passed:
        note = f"greedy tokens are equal, but the step logits differ by {max_abs:.3g} > {bound:.3g}"
    return GenerationCheck(
        reference="HF generate(), greedy, dynamic cache, no EOS stop",
        prompt_tokens=int(eager.prompt.shape[1]),
        steps=steps,
        eager_tokens=eager.tokens.tolist(),
        artifact_tokens=tokens.tolist(),
        tokens_equal=equal,
        compared_steps=compared,
        max_abs=max_abs,
        max_rel=max_abs / scale if scale else 0.0,
        bound=bound,
        tie_at_step=tie_at,
        passed=passed,
        note=note,
    )


@dataclass
class Reference:
    """What the eager model computed, kept while the artifact is built and loaded."""

    probes: list[Probe]
    outputs: list[torch.Tensor]
    generation: EagerGeneration | None


def reference(model: Any, plan: ExportPlan) -> Reference:
    probes = make_probes(plan)
    gen = eager_generation(model, plan) if plan.contract.wrapper == "static-cache" else None
    return Reference(probes, eager_outputs(model, plan, probes), gen)


def check(
    runner: Callable[[Any, Any], Any], plan: ExportPlan, ref: Reference, advance: Callable[[int], None]
) -> ParityReport:
    """Run every probe through ``runner`` and compare it with ``ref``."""
    import torch

    tol = plan.tolerance
    results = []
    with torch.no_grad():
        for probe, expected in zip(ref.probes, ref.outputs, strict=True):
            out = runner(to_device(probe.first, plan), to_device(probe.second, plan))
            results.append(compare(probe.name, expected, torch.as_tensor(out).cpu(), probe.keep, tol, probe.padded))
            advance(1)
    generation = None
    not_checked = []
    if ref.generation is not None:
        tokens, logits = artifact_generation(runner, plan, ref.generation.prompt, ref.generation.tokens.shape[1])
        generation = check_generation(ref.generation, tokens, logits, tol)
        advance(1)
        not_checked.append("padded batch: the static-cache program takes no attention mask")
    worst = max(results, key=lambda r: r.max_abs)
    return ParityReport(
        passed=all(r.passed for r in results) and (generation is None or generation.passed),
        reference=f"eager transformers model ({plan.model.architecture}), {plan.options.dtype}, {plan.options.device}",
        tolerance=tol,
        seed=plan.options.seed,
        probes=results,
        generation=generation,
        not_checked=not_checked,
        worst_abs=max([worst.max_abs] + ([generation.max_abs] if generation else [])),
        worst_rel=max([r.max_rel for r in results] + ([generation.max_rel] if generation else [])),
    )


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Tracers and exporters warn at length about things that do not concern the user (the
    deprecation of ``jit.trace``, constant folding of shapes...); the parity gate is what says
    whether the artifact is right."""
    import logging
    import warnings

    names = ("torch.onnx", "torch._dynamo", "torch._inductor", "torch.export", "torch.fx", "onnxscript", "transformers")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)
