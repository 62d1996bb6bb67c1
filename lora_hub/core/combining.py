"""Combining adapters into a new adapter (``lora_hub.merge.combine``), pushed with its lineage."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_hub import compat
from lora_hub._context import Context
from lora_hub._fs import Replace, prepare_output, staged_output
from lora_hub.core import adapters as adapter_ops
from lora_hub.core import merging
from lora_hub.core.adapters import check_description
from lora_hub.core.common import (
    copy_tree,
    input_folders,
    library_versions,
    split_weight,
)
from lora_hub.errors import (
    InvalidArgumentError,
)
from lora_hub.formats.peft import write_adapter_dir
from lora_hub.progress import NoProgress, Progress
from lora_hub.refs import AdapterName
from lora_hub.types import (
    CombineResult,
)

if TYPE_CHECKING:
    from lora_hub.merge.plan import AdapterInput


def combine(
    ctx: Context,
    adapters: Sequence[str],
    name: str,
    *,
    method: str = "linear",
    params: Mapping[str, Any] | None = None,
    rank: int | None = None,
    dtype: str = "auto",
    output: str | os.PathLike[str] | None = None,
    force: bool = False,
    overwrite: bool = False,
    description: str | None = None,
    tags: Sequence[str] = (),
    progress: Progress | None = None,
) -> CombineResult:
    """Combine adapters (``ref[@weight]`` or folders) into a new PEFT adapter, pushed as
    ``name`` with its lineage. ``cat`` is exact; other methods are re-factored to ``rank``
    (default: the sum of the input ranks) with each module's error reported. See
    ``lora_hub.merge.combine`` for the formulas. ``output`` also keeps the folder there
    (under the output rule of ``lora_hub._fs``; ``force``/``overwrite`` as for ``pull``)."""
    from lora_hub.merge.combine import combine_adapters
    from lora_hub.merge.methods import get_method

    AdapterName.parse(name)
    description = check_description(description)
    out = None
    replace = Replace.of(force=force, overwrite=overwrite)
    if output is not None:
        protected = ctx.protected(input_folders(split_weight(a)[0] for a in adapters))
        out = prepare_output(Path(output), replace=replace, protected=protected)
    spec = get_method(method)
    checked = spec.check_params(params or {})
    resolved = [merging.adapter_input(ctx, s) for s in adapters]
    if not resolved:
        raise InvalidArgumentError("name at least one adapter to combine")
    inputs = [item for item, _, _ in resolved]
    combined = combine_adapters(inputs, spec, checked, rank=rank, dtype=dtype, model_types=model_types(resolved))
    lineage = {
        "kind": "combine",
        "method": method,
        "params": checked,
        "rank": rank,
        "inputs": [{"ref": a.label, "digest": a.digest, "weight": a.weight} for a in inputs],
        "errors": combined.errors,
        "versions": library_versions(),
    }
    bases = {base for _, _, base in resolved}
    base = next(iter(bases)) if len(bases) == 1 else None
    with tempfile.TemporaryDirectory(prefix="lorahub-combine-") as scratch:
        folder = write_adapter_dir(Path(scratch), combined.tensors, combined.config)
        pushed = adapter_ops.push(ctx, folder, name, description=description, tags=tags, base=base, lineage=lineage,
                           progress=progress)  # fmt: skip
        if out is not None:
            details = {"ref": pushed.version.ref, "digest": pushed.version.digest}
            with staged_output(out, kind="combine", replace=replace, registry=ctx.partials(),
                               details=details) as tmp:  # fmt: skip
                copy_tree(folder, tmp, NoProgress())
    errors = list(combined.errors.values())
    return CombineResult(
        push=pushed,
        method=method,
        ranks=combined.ranks,
        errors=combined.errors,
        max_error=max(errors),
        mean_error=sum(errors) / len(errors),
    )


def model_types(resolved: Sequence[tuple[AdapterInput, compat.AdapterSide, str | None]]) -> list[str | None]:
    return [side.model_type for _, side, _ in resolved]
