"""Exporting models for deployment (``lora_hub.export``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from lora_hub._context import Context
from lora_hub._fs import Protected, Replace, prepare_output, staged_output
from lora_hub.core import bases
from lora_hub.core.common import copy_tree, input_folders
from lora_hub.hashing import hash_file
from lora_hub.progress import NoProgress, Progress
from lora_hub.types import ExportEntry

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
    recompute: bool = False,
    force: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ExportResult:
    """Export ``model`` (a registered base, merged or not, or an HF model folder) to ``format``
    at ``output``, checked against the eager model by the parity gate (``lora_hub.export``), and
    record it in the catalog by its key (source content fingerprint + format + resolved options +
    library versions + target). The same key again is served from the record, after checking the
    recorded artifact's digests (copied if ``output`` is elsewhere), unless ``recompute``.
    ``output`` follows the rule of ``lora_hub._fs`` (``force``: replace an earlier lora-hub
    output; ``overwrite``: replace any folder), checked before the base is read."""
    from lora_hub.export import get_exporter
    from lora_hub.export.exporter import RECORD_FILE
    from lora_hub.export.plan import make_options
    from lora_hub.export.run import execute, linked_folder, plan

    get_exporter(format)  # an unknown format is refused before the base is read
    options = make_options(dtype=dtype, device=device, max_batch=max_batch, max_seq=max_seq, opset=opset,
                           with_cache=with_cache)  # fmt: skip
    replace = Replace.of(force=force, overwrite=overwrite)
    protected = ctx.protected(input_folders([str(model)]))
    out = Path(os.path.abspath(output))
    if not ((out / RECORD_FILE).is_file() and not recompute):  # a recorded export may be served where it is
        prepare_output(out, replace=replace, protected=protected)
    info, label, weights = bases.open_base(ctx, model, progress)
    if weights is None:
        raise bases.why_no_weights(ctx, info, label)
    in_place = all(p == weights.root / rel for rel, p in weights.files.items())
    staged = linked_folder(weights.files, ctx.settings.home / "export-sources", ctx.partials())
    with contextlib.nullcontext(weights.root) if in_place else staged as folder:
        planned = plan(folder, format, options, source_fingerprint=info.content_fingerprint)
        if not recompute and planned.key is not None:
            reused = _reuse(ctx, planned.key, out, replace, protected)
            if reused is not None:
                return reused
        out = prepare_output(out, replace=replace, protected=protected)
        result = execute(planned, out, replace=replace, protected=protected, registry=ctx.partials(),
                         progress=progress)  # fmt: skip
    if planned.key is not None:
        ctx.catalog.exports.record(
            ExportEntry(
                key=planned.key,
                source_fingerprint=info.content_fingerprint,
                base_name=info.name,
                format=planned.format,
                output_path=result.path,
                record=result.record.model_dump(mode="json"),
            )
        )
    return result


def _reuse(ctx: Context, key: str, out: Path, replace: Replace, protected: Sequence[Protected]) -> ExportResult | None:
    """The recorded export of ``key``, if its folder still holds every artifact file with its
    recorded digest: served where it is when ``out`` is that folder, else copied to ``out``."""
    from lora_hub.export.run import ExportRecord, ExportResult

    entry = ctx.catalog.exports.find(key)
    if entry is None:
        return None
    record = ExportRecord.model_validate(entry.record)
    source = Path(entry.output_path)
    for artifact in record.artifacts:
        path = source / artifact.path
        if not path.is_file() or path.stat().st_size != artifact.size or hash_file(path)[0] != artifact.digest:
            return None
    if source.resolve() != out.resolve():
        out = prepare_output(out, replace=replace, protected=protected)
        details = {"format": record.plan.format, "key": key, "copied_from": str(source)}
        with staged_output(out, kind="export", replace=replace, registry=ctx.partials(), details=details) as tmp:
            copy_tree(source, tmp, NoProgress())
    return ExportResult(path=str(out), record=record, reused=True)


def exporters(ctx: Context) -> list[ExporterInfo]:
    """Every export format, and whether (or why not) it works on this machine."""
    from lora_hub.export.run import exporter_infos

    return exporter_infos()
