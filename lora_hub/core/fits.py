"""Whether adapters fit bases: ``validate``, and the fits recorded for ``list --base``."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from lora_hub import compat
from lora_hub._context import Context
from lora_hub.core import bases
from lora_hub.errors import (
    InvalidAdapterError,
    LoraHubError,
    NotFoundError,
)
from lora_hub.formats.hf import ModelDir, read_model_dir
from lora_hub.formats.peft import read_adapter_dir
from lora_hub.refs import Ref
from lora_hub.types import (
    AdapterVersion,
    BaseModelInfo,
    CompatReport,
)

if TYPE_CHECKING:
    pass


def validate(ctx: Context, adapter: str | os.PathLike[str], base: str | os.PathLike[str]) -> CompatReport:
    """Does ``adapter`` (a reference or a PEFT folder) fit ``base`` (a registered base or an HF
    model folder)? See ``lora_hub.compat`` for the three verdicts."""
    side, trained_on_model = adapter_side(ctx, adapter)
    info, label, model = bases.open_base(ctx, base)
    report = compat.check(side, info, label)
    if report.verdict != "compatible" or side.trained_on is None:
        return report
    if trained_on_model is None:
        trained_on_model = bases.model_by_fingerprint(ctx, side.trained_on)
    if trained_on_model is None or model is None:
        return report.model_copy(
            update={"notes": [*report.notes, "the weights of both bases are not at hand: no weight comparison"]}
        )
    old_model = trained_on_model[0]
    keys = [m.path + ".weight" for m in side.layout.modules]
    km_new = compat.KeyMap(**report.key_mapping)
    km_old = compat.choose_key_map(keys, old_model.tensors.keys())
    pairs = [
        (new_key, old_key)
        for k in keys
        if (new_key := km_new.resolve(k, model.tensors)) and (old_key := km_old.resolve(k, old_model.tensors))
    ]
    old_digests, _ = compat.hash_tensors(old_model, ctx.catalog.hashes)
    new_digests, _ = compat.hash_tensors(model, ctx.catalog.hashes)
    diff = compat.weight_diff(pairs, model, old_model, new_digests, old_digests)
    return report.model_copy(update={"diff": diff})


def adapter_side(
    ctx: Context, spec: str | os.PathLike[str]
) -> tuple[compat.AdapterSide, tuple[ModelDir, BaseModelInfo] | None]:
    text = str(spec)
    if Path(text).is_dir():
        folder = read_adapter_dir(text, check_finite=False, strict=False)
        trained_on: tuple[ModelDir, BaseModelInfo] | None = None
        notes: list[str] = []
        named = folder.facts.base_model_name_or_path
        if named and Path(named).is_dir():
            with contextlib.suppress(LoraHubError, OSError):
                model = read_model_dir(named)
                digests, _ = compat.hash_tensors(model, ctx.catalog.hashes)
                trained_on = model, compat.describe_model(model, digests)
                notes.append(
                    f"the adapter's config names the folder {named} as its base; its content is what was compared"
                )
        side = compat.AdapterSide(
            label=text,
            facts=folder.facts,
            layout=folder.layout,
            model_type=folder.facts.model_type,
            trained_on=trained_on[1].content_fingerprint if trained_on else None,
            parse_problems=folder.problems,
            notes=tuple(notes),
        )
        return side, trained_on
    try:
        version, base_model_type = ctx.catalog.adapters.trained_on(Ref.parse(text))
    except NotFoundError:
        if "/" in text or text.startswith("."):
            raise InvalidAdapterError("no such folder, and no adapter by that name", path=text) from None
        raise
    assert version.layout is not None
    side = compat.AdapterSide(
        label=version.ref,
        facts=version.facts,
        layout=version.layout,
        model_type=base_model_type or version.facts.model_type,
        trained_on=version.base_fingerprint,
    )
    return side, None


def record_fits_for_base(ctx: Context, name: str, info: BaseModelInfo) -> None:
    fits = {}
    for signature, version, model_type in ctx.catalog.bases.signatures_without_fit(name):
        assert version.layout is not None
        side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type or version.facts.model_type)
        fits[signature] = compat.check(side, info, name).verdict != "incompatible"
    ctx.catalog.bases.record_fits(name, fits)


def record_fits_for_signature(ctx: Context, signature: str, version: AdapterVersion, model_type: str | None) -> None:
    assert version.layout is not None
    side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type)
    for name in ctx.catalog.bases.without_fit(signature):
        info = ctx.catalog.bases.get(name)
        ctx.catalog.bases.record_fits(name, {signature: compat.check(side, info, name).verdict != "incompatible"})
