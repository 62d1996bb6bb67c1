"""``aoti``: an AOTInductor package (``.pt2``): the ExportedProgram compiled ahead of time into a
shared library for this machine's CPU (or GPU), loaded with ``aoti_load_package`` and run with no
Python model code.

The weights are kept outside the compiled library (``aot_inductor.package_constants_in_so=False``,
as a binary blob in the package), so a package built once per base can run another merge of the
same base: ``load_package(folder, weights=merged_folder)`` swaps them in with
``runner.load_constants`` (about 0.6 s for a 212M model, against 40 s or more for a compile).
Always swap in full merged weights, never deltas. The library uses the instruction set of the
machine that compiled it (``AOTI_CPU_ISA`` in the record, e.g. ``AVX512 AVX512_VNNI``); a CPU
without it cannot run the package.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from lora_hub.errors import ExportError, InvalidModelError
from lora_hub.export.exporter import RECORD_FILE, BuildContext, Exporter, Runner
from lora_hub.export.plan import ExportPlan

ARTIFACT = "model.pt2"
CACHE_BUFFERS = ("key_cache_", "value_cache_", "cumulative_length_")


def build(ctx: BuildContext) -> dict[str, Any]:
    import time

    import torch

    from lora_hub.export.wrappers import export_program

    ep = export_program(ctx.model, ctx.plan)
    meta = {
        "lora_hub_format": "aoti",
        "lora_hub_wrapper": ctx.plan.contract.wrapper,
        "lora_hub_source_fingerprint": ctx.plan.source_fingerprint or "",
        "lora_hub_key": ctx.plan.key or "",
    }
    configs = {
        "aot_inductor.package_constants_in_so": False,
        "aot_inductor.package_constants_on_disk_format": "binary_blob",
        "aot_inductor.metadata": meta,
    }
    start = time.perf_counter()
    with ctx.progress.task("compiling (AOTInductor, C++)", None, unit="step"):
        torch._inductor.aoti_compile_and_package(ep, package_path=str(ctx.folder / ARTIFACT), inductor_configs=configs)
    ctx.timings["compile_s"] = time.perf_counter() - start
    return {"metadata": package_metadata(ctx.folder / ARTIFACT), "inductor_configs": {k: v for k, v in configs.items()
            if k != "aot_inductor.metadata"}}  # fmt: skip


def package_metadata(path: Path) -> dict[str, str]:
    """The metadata AOTInductor compiled into the package (``AOTI_CPU_ISA``, ``AOTI_DEVICE_KEY``...),
    read from the archive without loading the library."""
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if name.endswith("wrapper_metadata.json"):
                return {str(k): str(v) for k, v in json.loads(z.read(name)).items()}
    return {}


def _device_index(device: str) -> int:
    return int(device.partition(":")[2] or 0) if device.startswith("cuda") else -1


def load(folder: Path, plan: ExportPlan) -> Runner:
    import torch

    from lora_hub.export.wrappers import program_runner

    runner = torch._inductor.aoti_load_package(str(folder / ARTIFACT), device_index=_device_index(plan.options.device))
    return program_runner(runner, plan)


def load_package(folder: str | Path, weights: str | Path | None = None) -> Any:
    """The package exported into ``folder``, loaded; with ``weights`` (an HF model folder of the
    same architecture and shapes, e.g. another merge of the same base), those weights swapped in.

    Returns the ``AOTICompiledModel`` (call it as the record's ``usage`` says)."""
    import torch

    folder = Path(folder)
    record = json.loads((folder / RECORD_FILE).read_text())
    plan = record["plan"]
    device = _device_index(plan["options"]["device"])
    runner = torch._inductor.aoti_load_package(str(folder / ARTIFACT), device_index=device)
    if weights is not None:
        runner.load_constants(_constants(runner, plan, Path(weights)), check_full_update=False, user_managed=False)
    return runner


def _constants(runner: Any, plan: dict[str, Any], weights: Path) -> dict[str, Any]:
    import torch
    import transformers

    arch = plan["model"]["architecture"]
    config = json.loads((weights / "config.json").read_text()) if (weights / "config.json").is_file() else {}
    if arch not in (config.get("architectures") or [arch]):
        found = config.get("architectures")
        raise InvalidModelError(f"holds a {found} model; the package runs {arch}", path=str(weights))
    dtype = getattr(torch, plan["options"]["dtype"])
    model = getattr(transformers, arch).from_pretrained(weights, dtype=dtype).to(plan["options"]["device"])
    prefix = "m." if plan["contract"]["wrapper"] == "main-output" else "model."
    new = {prefix + k: v for k, v in model.state_dict().items()}
    wanted = [f for f in runner.get_constant_fqns() if not f.startswith(CACHE_BUFFERS)]
    missing = [f for f in wanted if f not in new]
    if missing:
        raise ExportError(
            f"{weights}: the weights do not fit this package ({len(missing)} of its tensors missing, "
            f"e.g. {', '.join(missing[:3])})",
            hint="swap in weights of the same architecture and shapes only (another merge of the same base)",
        )
    return {f: new[f].contiguous() for f in wanted}


def usage(plan: ExportPlan) -> str:
    if plan.contract.wrapper == "static-cache":
        return (
            "import torch\n"
            f"m = torch._inductor.aoti_load_package('{ARTIFACT}')\n"
            "logits = m(input_ids=prompt, cache_position=torch.arange(prompt.shape[1]))  # prefill\n"
            "logits = m(input_ids=next_token[:, None], cache_position=torch.tensor([pos]))  # one step"
        )
    return (
        "import torch\n"
        f"m = torch._inductor.aoti_load_package('{ARTIFACT}')\n"
        f"{plan.model.output} = m(input_ids, attention_mask)  # int64 [batch, seq] each"
    )


EXPORTER = Exporter(
    name="aoti",
    summary="AOTInductor package: compiled ahead of time for this CPU/GPU, weights kept outside the library "
    "(swappable); --with-cache: static KV cache",
    artifact=ARTIFACT,
    runtime="torch._inductor.aoti_load_package (or the C++ AOTIModelPackageLoader)",
    build=build,
    load=load,
    usage=usage,
    needs_compiler=True,
    supports_cache=True,
    target_specific=True,
    notes=("compiling takes tens of seconds even for a tiny model (a C++ build)",),
)
