"""Exporting models for deployment (``lora_hub.export``)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lora_hub._context import Context
from lora_hub._fs import Replace, prepare_output
from lora_hub.core import bases
from lora_hub.core.common import (
    input_folders,
)
from lora_hub.progress import Progress

if TYPE_CHECKING:
    from lora_hub.export.exporter import ExporterInfo
    from lora_hub.export.run import ExportResult


def export(
    ctx: Context,
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    max_batch: int | None = None,
    max_seq: int | None = None,
    opset: int | None = None,
    with_cache: bool = False,
    force: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` (a registered base, merged or not, or an HF model folder) to ``format``
    at ``output``, checked against the eager model by the parity gate (``lora_hub.export``).

    The result carries the base's content fingerprint and the export's key (fingerprint +
    format + options + library versions + target); nothing is recorded in the catalog yet.
    ``output`` follows the rule of ``lora_hub._fs`` (``force``: replace an earlier lora-hub
    output; ``overwrite``: replace any folder), checked before the base is read."""
    from lora_hub.export import get_exporter
    from lora_hub.export.plan import make_options
    from lora_hub.export.run import export_model, linked_folder

    get_exporter(format)  # an unknown format is refused before the base is read
    options = make_options(dtype=dtype, device=device, max_batch=max_batch, max_seq=max_seq, opset=opset,
                           with_cache=with_cache)  # fmt: skip
    protected = ctx.protected(input_folders([str(model)]))
    out = prepare_output(Path(output), replace=Replace.of(force=force, overwrite=overwrite), protected=protected)
    info, label, weights = bases.open_base(ctx, model, progress)
    if weights is None:
        raise bases.why_no_weights(ctx, info, label)
    in_place = all(p == weights.root / rel for rel, p in weights.files.items())
    staged = linked_folder(weights.files, ctx.settings.home / "export-sources")
    with contextlib.nullcontext(weights.root) if in_place else staged as folder:
        return export_model(folder, out, format, options, source_fingerprint=info.content_fingerprint, force=force,
                            overwrite=overwrite, protected=protected, registry=ctx.partials(),
                            progress=progress)  # fmt: skip


def exporters(ctx: Context) -> list[ExporterInfo]:
    """Every export format, and whether (or why not) it works on this machine."""
    from lora_hub.export.run import exporter_infos

    return exporter_infos()
