"""The modules that are exported, their example inputs and their dynamic dimensions (torch).

- ``MainOutput``: ``forward(input_ids, attention_mask) -> logits`` (or ``last_hidden_state`` for
  a bare encoder such as ``BertModel``). Models that take ``use_cache`` get False: otherwise
  the output carries a ``DynamicCache``, which no tracer accepts.
- the static-cache program: transformers' ``TorchExportableModuleForDecoderOnlyLM`` (its
  ``forward`` cannot be called directly, only its ``export``), exported with ``strict=True``
  (AOTInductor cannot compile the non-strict program: its cache counters become lifted
  constants), a dynamic prompt length, and the cache in buffers mutated in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.export import Dim

from lora_hub.export.plan import ExportPlan

EXAMPLE_SEQ = 16


class MainOutput(torch.nn.Module):
    """The model's main output, as one tensor. ``m`` holds the model, so the artifact's weight
    names are ``m.<checkpoint name>``."""

    def __init__(self, model: torch.nn.Module, output: str, use_cache_kwarg: bool) -> None:
        super().__init__()
        self.m = model
        self.output = output
        self.use_cache_kwarg = use_cache_kwarg

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.use_cache_kwarg:
            out = self.m(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        else:
            out = self.m(input_ids=input_ids, attention_mask=attention_mask)
        return getattr(out, self.output)


def main_output(model: torch.nn.Module, plan: ExportPlan) -> MainOutput:
    return MainOutput(model, plan.model.output, plan.model.use_cache_kwarg).eval()


def device_of(plan: ExportPlan) -> torch.device:
    return torch.device(plan.options.device)


def example_inputs(plan: ExportPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs the graph is traced with: for the main output, (ids, all-ones mask) of batch 2
    (a batch of 1 would be specialised to 1) and length 16 at most; for the cache program, a
    2-token prompt and its positions."""
    device = device_of(plan)
    gen = torch.Generator().manual_seed(plan.options.seed)
    vocab = plan.model.vocab_size or 2
    batch = int(plan.options.max_batch or 1)
    if plan.contract.wrapper == "static-cache":
        ids = torch.randint(0, vocab, (batch, 2), generator=gen)
        return ids.to(device), torch.arange(2, device=device)
    seq = max(2, min(EXAMPLE_SEQ, int(plan.options.max_seq or 2)))
    ids = torch.randint(0, vocab, (min(batch, 2), seq), generator=gen).to(device)
    return ids, torch.ones_like(ids)


def dynamic_shapes(plan: ExportPlan) -> dict[str, dict[int, Any]]:
    """``torch.export`` dimensions from the contract (the batch stays static at 1 when the
    maximum batch is 1); ids and mask share their ``Dim`` objects."""
    dims = {name: Dim(name, min=lo, max=hi) for name, (lo, hi) in plan.contract.dims.items()}
    if plan.contract.wrapper == "static-cache":
        return {"input_ids": {1: dims["seq"]}, "cache_position": {0: dims["seq"]}}
    per_input: dict[int, Any] = {1: dims["seq"]}
    if "batch" in dims:
        per_input[0] = dims["batch"]
    return {"input_ids": dict(per_input), "attention_mask": dict(per_input)}


def export_program(model: torch.nn.Module, plan: ExportPlan) -> torch.export.ExportedProgram:
    """The ``torch.export`` program of the plan's contract."""
    if plan.contract.wrapper == "static-cache":
        return cache_program(model, plan)
    ids, second = example_inputs(plan)
    return torch.export.export(
        main_output(model, plan), (ids, second), dynamic_shapes=dynamic_shapes(plan), strict=False
    )


def cache_program(model: Any, plan: ExportPlan) -> torch.export.ExportedProgram:
    from transformers.integrations.executorch import TorchExportableModuleForDecoderOnlyLM

    cache = plan.contract.cache
    assert cache is not None
    model.config.use_cache = True
    model.generation_config.use_cache = True
    model.generation_config.cache_implementation = "static"
    module = TorchExportableModuleForDecoderOnlyLM(
        model, batch_size=cache.batch_size, max_cache_len=cache.max_cache_len, device=device_of(plan)
    )
    ids, positions = example_inputs(plan)
    return module.export(input_ids=ids, cache_position=positions, dynamic_shapes=dynamic_shapes(plan), strict=True)


def program_runner(module: Any, plan: ExportPlan) -> Any:
    """A callable ``(first, second) -> tensor`` over a loaded program (``ep.module()``, a TorchScript
    module, an AOTInductor package): the cache program is called by keyword, as it was exported."""
    if plan.contract.wrapper == "static-cache":

        def run_cached(input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
            return module(input_ids=input_ids, cache_position=cache_position)

        return run_cached

    def run(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return module(input_ids, attention_mask)

    return run
