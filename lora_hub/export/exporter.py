"""What one export format is: a named strategy with its requirements, and the three functions
that build an artifact, load it back in its own runtime, and tell a user how to load it.

Format modules import torch (and their runtime) inside these functions only, so that reading the
registry, planning and ``lorahub exporters`` stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from lora_hub.progress import NoProgress, Progress

if TYPE_CHECKING:
    from lora_hub.export.environment import Environment
    from lora_hub.export.plan import ExportPlan

DTYPES = ("float32", "bfloat16", "float16")
RECORD_FILE = "lorahub_export.json"
EXPORT_EXTRA = "pip install 'lora-hub[export]'"
TENSORRT_EXTRA = "pip install 'lora-hub[tensorrt]'"

# A loaded artifact: ``runner(input_ids, attention_mask)`` for the main-output programs,
# ``runner(input_ids, cache_position)`` for the static-cache ones; torch tensors in and out.
Runner = Callable[[Any, Any], Any]


class ExporterInfo(BaseModel):
    """A format as plain data (``lorahub exporters --json``), with whether it works on this machine."""

    model_config = ConfigDict(frozen=True)

    name: str
    summary: str
    available: bool
    reason: str | None
    artifact: str
    runtime: str
    with_cache: bool
    no_cache_reason: str | None
    cpu_dtypes: list[str]
    target_specific: bool
    install: str | None


@dataclass
class BuildContext:
    """What a format's ``build`` gets: the plan, the eager model (in the plan's dtype, on its
    device, in eval mode), and the folder to write the artifact files into. ``build`` returns
    the format's facts (opset, compiler metadata, engine settings...) as plain JSON data, and may
    add its own phases to ``timings`` (seconds)."""

    plan: ExportPlan
    model: Any
    folder: Path
    progress: Progress = field(default_factory=NoProgress)
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Exporter:
    name: str
    summary: str
    artifact: str  # the main file written into the output folder
    runtime: str  # what loads and runs it
    build: Callable[[BuildContext], dict[str, Any]]
    load: Callable[[Path, ExportPlan], Runner]
    usage: Callable[[ExportPlan], str]  # the few lines that load and run the artifact
    modules: tuple[str, ...] = ()  # importable modules it needs besides torch and transformers
    install: str | None = None  # how to get them
    needs_cuda: bool = False
    needs_compiler: bool = False
    supports_cache: bool = False
    no_cache: str = ""  # why this format refuses --with-cache
    cpu_dtypes: tuple[str, ...] = DTYPES  # dtypes its runtime can run on the CPU
    cpu_dtype_reason: str = ""
    target_specific: bool = False  # the artifact is bound to the CPU instruction set / GPU architecture
    version_keys: tuple[str, ...] = ()  # library versions that identify its artifacts, beyond torch/transformers
    notes: tuple[str, ...] = ()
    cuda_runtime: Callable[[Environment], str | None] | None = None  # why it cannot run on CUDA here, if so

    def unavailable(self, env: Environment, device: str | None = None) -> str | None:
        """Why this format cannot run on this machine (on ``device``, when given), or None."""
        missing = [m for m in self.modules if not env.modules.get(m)]
        needs: list[str] = []
        if self.needs_cuda and not env.gpus:
            needs.append("a CUDA GPU")
        if missing:
            needs.append(" and ".join(_pip_names(missing)) if len(missing) < 3 else _comma_and(_pip_names(missing)))
        if self.needs_compiler and not env.compiler:
            needs.append("a C++ compiler (g++ or clang++ on PATH, or CXX)")
        if needs:
            text = "needs " + " and ".join(needs)
            return f"{text} (`{self.install}`)" if missing and self.install else text
        if device is not None and device.startswith("cuda"):
            if not env.gpus:
                return "needs a CUDA GPU (none is visible to torch here)"
            if self.cuda_runtime is not None:
                return self.cuda_runtime(env)
        return None

    def describe(self, env: Environment) -> ExporterInfo:
        reason = self.unavailable(env)
        return ExporterInfo(
            name=self.name,
            summary=self.summary,
            available=reason is None,
            reason=reason,
            artifact=self.artifact,
            runtime=self.runtime,
            with_cache=self.supports_cache,
            no_cache_reason=self.no_cache or None,
            cpu_dtypes=list(self.cpu_dtypes),
            target_specific=self.target_specific,
            install=self.install,
        )


def _pip_names(modules: list[str]) -> list[str]:
    return [m.replace("_", "-") for m in modules]


def _comma_and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1]
