"""``torch-export``: a ``torch.export`` ExportedProgram (``.pt2``), dynamic in batch and length.

The main-output program is exported with ``strict=False`` and ``Dim``s shared by ids and mask;
with ``--with-cache``, the static-cache program of transformers' executorch integration (prompt
of any length up to the cache in one call, then one token per call). Loaded back with
``torch.export.load(path).module()``. torch warns that saved programs may not load in newer
releases, so the record keeps the torch version: it is a precondition of loading.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_hub.export.exporter import BuildContext, Exporter, Runner
from lora_hub.export.plan import ExportPlan

ARTIFACT = "model.pt2"


def build(ctx: BuildContext) -> dict[str, Any]:
    import torch

    from lora_hub.export.wrappers import export_program

    ep = export_program(ctx.model, ctx.plan)
    torch.export.save(ep, str(ctx.folder / ARTIFACT))
    return program_facts(ep)


def program_facts(ep: Any) -> dict[str, Any]:
    sig = ep.graph_signature
    return {
        "user_inputs": [s.arg.name for s in sig.input_specs if s.kind.name == "USER_INPUT"],
        "buffers": len(sig.buffers),
        "parameters": len(sig.parameters),
        "range_constraints": {str(k): [str(v.lower), str(v.upper)] for k, v in ep.range_constraints.items()},
    }


def load(folder: Path, plan: ExportPlan) -> Runner:
    import torch

    from lora_hub.export.wrappers import program_runner

    # The program's weights were saved on the device it was exported on, and load back there.
    return program_runner(torch.export.load(str(folder / ARTIFACT)).module(), plan)


def usage(plan: ExportPlan) -> str:
    if plan.contract.wrapper == "static-cache":
        return (
            "import torch\n"
            f"m = torch.export.load('{ARTIFACT}').module()\n"
            "logits = m(input_ids=prompt, cache_position=torch.arange(prompt.shape[1]))  # prefill\n"
            "logits = m(input_ids=next_token[:, None], cache_position=torch.tensor([pos]))  # one step"
        )
    return (
        "import torch\n"
        f"m = torch.export.load('{ARTIFACT}').module()\n"
        f"{plan.model.output} = m(input_ids, attention_mask)  # int64 [batch, seq] each"
    )


EXPORTER = Exporter(
    name="torch-export",
    summary="torch.export ExportedProgram (.pt2), dynamic batch and sequence; --with-cache: static KV cache",
    artifact=ARTIFACT,
    runtime="torch.export.load(...).module() (Python; the input of AOTInductor, ExecuTorch, TensorRT)",
    build=build,
    load=load,
    usage=usage,
    supports_cache=True,
)
