"""Export a model folder (a merged model, or any HF model folder) for deployment: a registry of
named exporters, each importing what it needs only when it runs.

=================  =====================================================================
``torchscript``    ``torch.jit.trace`` of the main output                 (``model.ts``)
``torch-export``   ``torch.export`` ExportedProgram, dynamic batch/length (``model.pt2``)
``aoti``           AOTInductor package, compiled for this CPU/GPU         (``model.pt2``)
``onnx``           ``torch.onnx.export(dynamo=True)``, run with ONNX Runtime (``model.onnx``)
``tensorrt``       torch-tensorrt engines in an ExportedProgram (CUDA)    (``model.ep``)
=================  =====================================================================

``torch-export`` and ``aoti`` also build a static-KV-cache program for decoder LMs
(``with_cache``). Flow: ``run.inspect_model`` (the folder's facts) -> ``plan.plan_export`` (pure:
options resolved, refusals, the key) -> ``run.execute`` (export into a hidden folder beside the
output, run back, parity gate, record, rename into place). This package never touches the
catalog or the blob store: it takes a folder and returns a result.
"""

from __future__ import annotations

from lora_hub.errors import InvalidArgumentError
from lora_hub.export import aoti, onnx, tensorrt, torch_export, torchscript
from lora_hub.export.exporter import Exporter

EXPORTERS: dict[str, Exporter] = {
    e.name: e for e in (torchscript.EXPORTER, torch_export.EXPORTER, aoti.EXPORTER, onnx.EXPORTER, tensorrt.EXPORTER)
}


def get_exporter(name: str) -> Exporter:
    try:
        return EXPORTERS[name]
    except KeyError:
        raise InvalidArgumentError(
            f"unknown export format {name!r}", hint=f"choose one of {', '.join(EXPORTERS)} (see `lorahub exporters`)"
        ) from None


__all__ = ["EXPORTERS", "Exporter", "get_exporter"]
