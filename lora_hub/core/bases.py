"""Base models: register, list, show, remove; where their weights are read from."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from lora_hub import compat
from lora_hub._context import Context
from lora_hub.core import adapters, fits
from lora_hub.core.common import (
    check_space,
    is_base_name,
)
from lora_hub.errors import (
    BaseNotFoundError,
    InvalidModelError,
    LoraHubError,
    NotFoundError,
)
from lora_hub.formats.hf import ModelDir, model_from_files, read_model_dir
from lora_hub.hashing import hash_file
from lora_hub.progress import NoProgress, Progress
from lora_hub.refs import AdapterName
from lora_hub.types import (
    AdapterVersion,
    BaseAddResult,
    BaseFile,
    BaseModelInfo,
)

if TYPE_CHECKING:
    pass


def add(
    ctx: Context, path: str | os.PathLike[str], name: str, *, store: bool = False, progress: Progress | None = None
) -> BaseAddResult:
    """Fingerprint the HF model folder at ``path`` and register it as ``name``.

    The weights stay where they are unless ``store``, which also copies every file into the
    blob store. Tensor hashes are cached by (path, size, mtime, ctime, inode): re-adding an
    unchanged folder reads no weights. ``hf://REPO_ID[@REVISION]`` downloads the model from the
    Hugging Face Hub first, pinned and verified (``lora_hub.core.hubsync.add_base``).
    """
    progress = progress or NoProgress()
    if str(path).startswith("hf:/"):
        from lora_hub.core import hubsync  # imports huggingface_hub: only when used

        if hubsync.is_hub_spec(str(path)):
            return hubsync.add_base(ctx, str(path), name, store=store, progress=progress)
    name = str(AdapterName.parse(name))
    model = read_model_dir(path)
    with progress.task("hashing", model.weight_bytes) as advance:
        digests, hashed = compat.hash_tensors(model, ctx.catalog.hashes, advance)
    files = [BaseFile(path=rel, size=p.stat().st_size) for rel, p in model.files.items()]
    stored_bytes = 0
    if store:
        files = []
        with ctx.catalog.leases.writing():
            total = sum(p.stat().st_size for p in model.files.values())
            check_space(ctx.store, total)
            with progress.task("storing", total) as advance:
                for rel, p in model.files.items():
                    digest, size = hash_file(p)
                    stored_bytes += ctx.store.put_file(p, digest, advance)
                    files.append(BaseFile(path=rel, size=size, digest=digest))
            info, created = ctx.catalog.bases.add(
                compat.describe_model(model, digests, name=name, stored=True, files=files)
            )
    else:
        info, created = ctx.catalog.bases.add(compat.describe_model(model, digests, name=name, files=files))
    fits.record_fits_for_base(ctx, name, info)
    warnings = []
    if ctx.catalog.adapters.versions_of(AdapterName.parse(name)):
        warnings.append(
            f"an adapter is also named {name}; `lorahub show {name}` shows the adapter, "
            f"`lorahub base show {name}` the base"
        )
    return BaseAddResult(base=info, created=created, hashed_bytes=hashed, stored_bytes=stored_bytes, warnings=warnings)


def list_bases(ctx: Context) -> list[BaseModelInfo]:
    """Every registered base, with ``status``: whether its folder still holds its files."""
    return [b.model_copy(update={"status": folder_status(b)}) for b in ctx.catalog.bases.all()]


def show_base(ctx: Context, name: str) -> BaseModelInfo:
    return _shown(ctx, ctx.catalog.bases.get(name))


def _shown(ctx: Context, info: BaseModelInfo) -> BaseModelInfo:
    """``info`` with what ``show`` adds: its folder's status and its recorded exports."""
    exports = ctx.catalog.exports.of_source(info.content_fingerprint)
    return info.model_copy(update={"status": folder_status(info), "exports": exports})


def remove_base(ctx: Context, name: str) -> BaseModelInfo:
    """Forget a base (its files stay; stored blobs are freed by ``gc``). Adapters pushed against
    it keep its fingerprint."""
    return ctx.catalog.bases.remove(name)


def open_base(
    ctx: Context, spec: str | os.PathLike[str], progress: Progress | None = None
) -> tuple[BaseModelInfo, str, ModelDir | None]:
    """A registered base (by name) or a model folder: its description with tensors, a label,
    and its readable weights where they are at hand."""
    text = str(spec)
    if is_base_name(text) and ctx.catalog.bases.has(text):
        info = ctx.catalog.bases.get(text)
        return info, text, base_weights(ctx, info)
    if not Path(text).is_dir():
        if is_base_name(text):
            raise BaseNotFoundError(text)
        raise InvalidModelError("no such folder, and no registered base by that name", path=text)
    model = read_model_dir(text)
    with (progress or NoProgress()).task("hashing base", model.weight_bytes) as advance:
        digests, _ = compat.hash_tensors(model, ctx.catalog.hashes, advance)
    return compat.describe_model(model, digests), text, model


def base_weights(ctx: Context, info: BaseModelInfo) -> ModelDir | None:
    """The registered base's weights, read from its folder if it still holds the same content,
    else from the blob store if they were stored there. ``_why_no_weights`` says why not."""
    model, _ = folder_weights(ctx, info)
    if model is not None:
        return model
    if info.stored:
        try:
            paths = {f.path: ctx.local_copy(f.digest) for f in info.files if f.digest}
            model = model_from_files(Path(info.path or "."), paths)
            digests, _ = compat.hash_tensors(model, ctx.catalog.hashes)
        except (LoraHubError, OSError):
            return None
        if compat.describe_model(model, digests).content_fingerprint == info.content_fingerprint:
            return model
    return None


def folder_weights(ctx: Context, info: BaseModelInfo) -> tuple[ModelDir | None, str]:
    """The base's folder if it still holds the registered content, else why it does not."""
    if not info.path or not Path(info.path).is_dir():
        return None, f"its folder {info.path} no longer exists"
    try:
        model = read_model_dir(info.path)
        digests, _ = compat.hash_tensors(model, ctx.catalog.hashes)
    except (LoraHubError, OSError) as exc:
        return None, f"its folder {info.path} cannot be read ({exc})"
    if compat.describe_model(model, digests).content_fingerprint != info.content_fingerprint:
        return None, f"its folder {info.path} now holds other weights (the content fingerprint changed)"
    return model, ""


def why_no_weights(ctx: Context, info: BaseModelInfo, label: str) -> InvalidModelError:
    _, reason = folder_weights(ctx, info)
    stored = "its stored copy is incomplete" if info.stored else "it is not stored in the blob store"
    return InvalidModelError(
        f"the weights of this base are not at hand: {reason}, and {stored}",
        path=label,
        hint=f"register the folder again with `lorahub base add DIR --name {label}` (add --store to keep a copy)",
    )


def model_by_fingerprint(ctx: Context, fingerprint: str) -> tuple[ModelDir, BaseModelInfo] | None:
    for info in ctx.catalog.bases.all():
        if info.content_fingerprint == fingerprint:
            model = base_weights(ctx, ctx.catalog.bases.get(info.name or ""))
            if model is not None:
                return model, info
    return None


def show_any(ctx: Context, ref: str) -> AdapterVersion | BaseModelInfo:
    """An adapter version, or else a base (merged models are bases with a lineage)."""
    try:
        return adapters.show(ctx, ref)
    except NotFoundError:
        if ":" not in ref and is_base_name(ref) and ctx.catalog.bases.has(ref):
            return _shown(ctx, ctx.catalog.bases.get(ref, with_tensors=False))
        raise


def folder_status(info: BaseModelInfo) -> str:
    """``ok`` when the base's folder holds every registered file at its registered size, ``missing``
    when the folder is gone, ``changed`` otherwise (sizes only: hashes are checked when used)."""
    if not info.path or not Path(info.path).is_dir():
        return "missing"
    for f in info.files:
        p = Path(info.path) / f.path
        if not p.is_file() or p.stat().st_size != f.size:
            return "changed"
    return "ok"
