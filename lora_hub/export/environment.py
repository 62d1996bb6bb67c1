"""What this machine offers an export: library versions, optional modules, GPUs, a C++ compiler,
and the CPU's instruction set. Gathered once per export (torch is imported to ask about CUDA);
everything after this is decided from the data."""

from __future__ import annotations

import importlib.util
import os
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

# Optional modules a format may need; found with ``find_spec``, so nothing heavy is imported.
OPTIONAL_MODULES = ("onnx", "onnxscript", "onnxruntime", "torch_tensorrt", "tensorrt")
# Distributions whose versions identify an artifact (the first installed name of each entry wins).
DISTRIBUTIONS = {
    "torch": ("torch",),
    "transformers": ("transformers",),
    "safetensors": ("safetensors",),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch_tensorrt": ("torch-tensorrt", "torch_tensorrt"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
}
# CPU features that decide which kernels a compiled (AOTInductor) library may use.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
)  # fmt: skip


class Gpu(BaseModel):
    model_config = ConfigDict(frozen=True)

    index: int
    name: str
    compute_capability: str = Field(description="e.g. sm_90")


class Environment(BaseModel):
    model_config = ConfigDict(frozen=True)

    python: str
    machine: str
    versions: dict[str, str] = Field(description="installed versions of the libraries an export may use")
    modules: dict[str, bool] = Field(description="which optional modules can be imported")
    gpus: list[Gpu] = Field(default_factory=list)
    cuda: str | None = Field(default=None, description="the CUDA version torch was built with; null for a CPU build")
    onnxruntime_providers: list[str] = Field(default_factory=list)
    compiler: str | None = Field(default=None, description="the C++ compiler AOTInductor would use, and its version")
    cpu: str
    cpu_isa: list[str] = Field(default_factory=list, description="instruction-set extensions of this CPU")


def probe_environment() -> Environment:
    """This machine, as an export sees it."""
    import torch

    versions = {"python": platform.python_version()}
    for key, dists in DISTRIBUTIONS.items():
        for dist in dists:
            try:
                versions[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    from lora_hub._version import __version__

    versions["lora_hub"] = __version__
    gpus: list[Gpu] = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append(Gpu(index=i, name=torch.cuda.get_device_name(i), compute_capability=f"sm_{major}{minor}"))
    modules = {m: importlib.util.find_spec(m) is not None for m in OPTIONAL_MODULES}
    return Environment(
        python=platform.python_version(),
        machine=platform.machine(),
        versions=versions,
        modules=modules,
        gpus=gpus,
        cuda=torch.version.cuda,
        onnxruntime_providers=_ort_providers() if modules["onnxruntime"] else [],
        compiler=_compiler(),
        cpu=_cpu_model(),
        cpu_isa=_cpu_isa(),
    )


def _ort_providers() -> list[str]:
    # Only the onnxruntime-gpu build has the CUDA provider; asking the library itself would load it.
    try:
        metadata.version("onnxruntime-gpu")
    except metadata.PackageNotFoundError:
        return ["CPUExecutionProvider"]
    return ["CPUExecutionProvider", "CUDAExecutionProvider"]


def _compiler() -> str | None:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if not cxx:
        return None
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = out.splitlines()[0].strip() if out else ""
    return f"{Path(cxx).name}: {first}" if first else Path(cxx).name


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_isa() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                have = set(line.split(":", 1)[1].split())
                return [f for f in ISA_FLAGS if f in have]
    except OSError:
        pass
    return []
