"""``tensorrt``: torch-tensorrt's dynamo path. The main-output ExportedProgram is compiled into
TensorRT engines with an optimisation profile per input (``Input(min/opt/max)`` from the
contract's batch and length) and saved as an ExportedProgram that embeds them.

It needs a CUDA GPU and torch-tensorrt, whose wheels link CUDA builds of torch and pin its minor
version (torch-tensorrt 2.13.x <-> torch 2.13.x): ``pip install 'lora-hub[tensorrt]'`` into an
environment with a CUDA torch (``scripts/gpu_check.sh`` builds one). Elsewhere the format is
refused before any work. Written against torch-tensorrt 2.13's documented API; it has run only
where ``scripts/gpu_check.sh`` has run (see the README).

Settings, recorded with the artifact: ``immutable_weights=False`` (so that the engines can be
refitted with another merge's full weights; the default True forbids it), ``hardware_compatible``
and ``version_compatible`` False (an engine runs on the GPU architecture and TensorRT version
that built it), ``min_block_size=1``, TF32 off (float32 artifacts are checked at float32
tolerance). ``save`` gets explicit shared ``Dim``s, because it would otherwise give ids and mask
separate dimensions. Precision follows the model's dtype (``enabled_precisions`` is not used by
the dynamo path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_hub.export.exporter import TENSORRT_EXTRA, BuildContext, Exporter, Runner
from lora_hub.export.plan import ExportPlan

ARTIFACT = "model.ep"
OPT_SEQ = 128
SETTINGS: dict[str, Any] = {
    "min_block_size": 1,
    "immutable_weights": False,
    "hardware_compatible": False,
    "version_compatible": False,
    "disable_tf32": True,
}


def profile(plan: ExportPlan) -> dict[str, list[int]]:
    """min/opt/max shape of each input, from the contract."""
    b_lo, b_hi = plan.contract.dims.get("batch", (1, 1))
    s_lo, s_hi = plan.contract.dims["seq"]
    return {"min": [b_lo, s_lo], "opt": [b_lo, min(OPT_SEQ, s_hi)], "max": [b_hi, s_hi]}


def build(ctx: BuildContext) -> dict[str, Any]:
    import torch
    import torch_tensorrt

    from lora_hub.export.wrappers import dynamic_shapes, example_inputs, export_program

    plan = ctx.plan
    ep = export_program(ctx.model, plan)
    shapes = profile(plan)
    inputs = [
        torch_tensorrt.Input(
            min_shape=tuple(shapes["min"]),
            opt_shape=tuple(shapes["opt"]),
            max_shape=tuple(shapes["max"]),
            dtype=torch.int64,
            name=name,
        )
        for name in ("input_ids", "attention_mask")
    ]
    with ctx.progress.task("building TensorRT engines", None, unit="step"):
        compiled = torch_tensorrt.dynamo.compile(ep, arg_inputs=inputs, **SETTINGS)
    torch_tensorrt.save(
        compiled,
        str(ctx.folder / ARTIFACT),
        output_format="exported_program",
        arg_inputs=list(example_inputs(plan)),
        dynamic_shapes=dynamic_shapes(plan),
        retrace=True,
    )
    index = int(plan.options.device.partition(":")[2] or 0)
    major, minor = torch.cuda.get_device_capability(index)
    return {
        "settings": SETTINGS,
        "profile": {name: shapes for name in ("input_ids", "attention_mask")},
        "gpu": torch.cuda.get_device_name(index),
        "compute_capability": f"sm_{major}{minor}",
        "torch_tensorrt": getattr(torch_tensorrt, "__version__", "unknown"),
    }


def load(folder: Path, plan: ExportPlan) -> Runner:
    import torch_tensorrt

    from lora_hub.export.wrappers import program_runner

    return program_runner(torch_tensorrt.load(str(folder / ARTIFACT)).module(), plan)


def usage(plan: ExportPlan) -> str:
    return (
        "import torch, torch_tensorrt\n"
        f"m = torch_tensorrt.load('{ARTIFACT}').module()\n"
        f"{plan.model.output} = m(input_ids.cuda(), attention_mask.cuda())  # int64 [batch, seq] each"
    )


EXPORTER = Exporter(
    name="tensorrt",
    summary="TensorRT engines via torch-tensorrt (dynamo path, min/opt/max profiles), saved as an ExportedProgram",
    artifact=ARTIFACT,
    runtime="torch_tensorrt.load(...).module() on the GPU that built it",
    build=build,
    load=load,
    usage=usage,
    modules=("torch_tensorrt",),
    install=TENSORRT_EXTRA,
    needs_cuda=True,
    no_cache="a TensorRT KV cache needs torch-tensorrt's static-cache lowering passes, not built here",
    target_specific=True,
    version_keys=("torch_tensorrt", "tensorrt"),
)
