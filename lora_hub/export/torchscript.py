"""``torchscript``: ``torch.jit.trace`` of the main-output module, saved with ``torch.jit.save``.

``torch.jit.script`` cannot compile transformers models (it needs the source of their configs),
and transformers 5 no longer has a ``torchscript`` config flag, so the model is traced through
``MainOutput`` (``use_cache=False``). The trace records one example's path: shapes generalise
for these models (checked by the second probe shape), but a KV cache would not (the trace bakes
``is_causal = q_len > 1``), so there is no cached TorchScript export. ``jit.trace`` is deprecated
in torch 2.x; prefer ``torch-export`` for new deployments.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_hub.export.exporter import BuildContext, Exporter, Runner
from lora_hub.export.plan import ExportPlan

ARTIFACT = "model.ts"


def build(ctx: BuildContext) -> dict[str, Any]:
    import torch

    from lora_hub.export.wrappers import example_inputs, main_output

    module = main_output(ctx.model, ctx.plan)
    with torch.no_grad():
        traced = torch.jit.trace(module, example_inputs(ctx.plan), check_trace=False)
    torch.jit.save(traced, str(ctx.folder / ARTIFACT))
    return {
        "traced_with": "torch.jit.trace(MainOutput(model), (input_ids, attention_mask))",
        "deprecated": "torch.jit.trace is deprecated by torch 2.x (and unsupported on Python 3.14+)",
    }


def load(folder: Path, plan: ExportPlan) -> Runner:
    import torch

    from lora_hub.export.wrappers import program_runner

    module = torch.jit.load(str(folder / ARTIFACT), map_location=plan.options.device)
    return program_runner(module.eval(), plan)


def usage(plan: ExportPlan) -> str:
    return (
        "import torch\n"
        f"m = torch.jit.load('{ARTIFACT}')\n"
        f"{plan.model.output} = m(input_ids, attention_mask)  # int64 [batch, seq] each"
    )


EXPORTER = Exporter(
    name="torchscript",
    summary="torch.jit.trace of the model's main output (deprecated by torch, still widely loadable)",
    artifact=ARTIFACT,
    runtime="torch.jit.load (libtorch, C++ or Python)",
    build=build,
    load=load,
    usage=usage,
    no_cache="a trace bakes the causal-mask choice of its example (is_causal = q_len > 1), which is wrong "
    "for cached decoding",
)
