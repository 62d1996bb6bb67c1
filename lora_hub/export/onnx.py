"""``onnx``: ``torch.onnx.export(dynamo=True)`` of the main-output module (``input_ids`` and
``attention_mask`` as inputs, dynamic batch and length), run back with ONNX Runtime.

The mask is a graph input: without it, transformers' packed-sequence detection adds an op that
the exporters cannot translate, and padded batches would be wrong. Weights go into one
``model.onnx`` up to protobuf's 2 GB limit, into ``model.onnx.data`` beside it past that.
There is no cached ONNX export: exporting the static-cache program "succeeds" but drops the KV
state (the logits then ignore the earlier tokens, with no error), and an ONNX KV cache needs the
cache as explicit inputs and outputs (``past_key_values.*`` / ``present.*``), not built here.
ONNX Runtime's CPU provider has no bfloat16 kernels for these graphs, so bfloat16 is refused on
the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lora_hub.export.environment import Environment
from lora_hub.export.exporter import EXPORT_EXTRA, BuildContext, Exporter, Runner
from lora_hub.export.plan import ExportPlan

ARTIFACT = "model.onnx"
# protobuf refuses messages over 2 GiB; leave room for the graph itself
EXTERNAL_DATA_ABOVE = 1_800_000_000


def build(ctx: BuildContext) -> dict[str, Any]:
    import torch

    from lora_hub.export.wrappers import dynamic_shapes, example_inputs, main_output

    path = ctx.folder / ARTIFACT
    weights = sum(p.numel() * p.element_size() for p in ctx.model.parameters())
    external = weights > EXTERNAL_DATA_ABOVE
    torch.onnx.export(
        main_output(ctx.model, ctx.plan),
        example_inputs(ctx.plan),
        str(path),
        dynamo=True,
        dynamic_shapes=dynamic_shapes(ctx.plan),
        input_names=["input_ids", "attention_mask"],
        output_names=[ctx.plan.model.output],
        opset_version=ctx.plan.options.opset,
        external_data=external,
        verbose=False,
    )
    return graph_facts(path)


def graph_facts(path: Path) -> dict[str, Any]:
    """What a loader must know of the graph: opset, IR version, producer, inputs and outputs, and
    the external data files it needs beside it."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    external = sorted(
        {
            entry.value
            for init in model.graph.initializer
            if init.data_location == onnx.TensorProto.EXTERNAL
            for entry in init.external_data
            if entry.key == "location"
        }
    )

    def shape(v: Any) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]

    return {
        "opset": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "ir_version": model.ir_version,
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
        "inputs": {v.name: shape(v) for v in model.graph.input},
        "outputs": {v.name: shape(v) for v in model.graph.output},
        "nodes": len(model.graph.node),
        "external_data": external,
    }


def session(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """An ONNX Runtime session with its worker threads not spinning (spinning threads steal the
    CPU from whatever runs next, which skews every comparison)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        providers = [("CUDAExecutionProvider", {"device_id": int(device.partition(":")[2] or 0)}), *providers]
    return ort.InferenceSession(str(path), options, providers=providers)


def load(folder: Path, plan: ExportPlan) -> Runner:
    import torch

    sess = session(folder / ARTIFACT, plan.options.device, threads=torch.get_num_threads())

    def run(input_ids: Any, attention_mask: Any) -> Any:
        feed = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        return torch.from_numpy(sess.run(None, feed)[0])

    return run


def usage(plan: ExportPlan) -> str:
    return (
        "import onnxruntime as ort\n"
        f"s = ort.InferenceSession('{ARTIFACT}')\n"
        f"(out,) = s.run(None, {{'input_ids': ids, 'attention_mask': mask}})  # int64 numpy arrays; "
        f"out: {plan.model.output}"
    )


def _cuda_runtime(env: Environment) -> str | None:
    if "CUDAExecutionProvider" in env.onnxruntime_providers:
        return None
    return "needs onnxruntime-gpu to run on CUDA (the onnxruntime package runs on the CPU only)"


EXPORTER = Exporter(
    name="onnx",
    summary="ONNX graph from torch.onnx.export(dynamo=True), attention mask as an input, run with ONNX Runtime",
    artifact=ARTIFACT,
    runtime="onnxruntime.InferenceSession (any ONNX runtime)",
    build=build,
    load=load,
    usage=usage,
    modules=("onnx", "onnxscript", "onnxruntime"),
    install=EXPORT_EXTRA,
    no_cache="exporting the static-cache program to ONNX silently drops its KV state (the logits ignore earlier "
    "tokens, with no error); an ONNX KV cache needs the cache as explicit inputs and outputs, not built here",
    cpu_dtypes=("float32", "float16"),
    cpu_dtype_reason="ONNX Runtime's CPU provider has no bfloat16 kernels for these graphs",
    version_keys=("onnx", "onnxscript", "onnxruntime"),
    cuda_runtime=_cuda_runtime,
)
