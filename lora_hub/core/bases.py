"""Base models: register, list, show, remove; where their weights are read from."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

from lora_hub import compat
from lora_hub._context import Context
from lora_hub._direct import DirectFile
from lora_hub._fs import PartialRegistry, Protected, Replace, prepare_output, staged_output
from lora_hub.core import adapters, fits
from lora_hub.core.common import (
    check_free_space,
    check_space,
    is_base_name,
)
from lora_hub.errors import (
    BaseNotFoundError,
    InvalidArgumentError,
    InvalidModelError,
    LoraHubError,
    NotFoundError,
    NotSupportedError,
)
from lora_hub.formats.hf import ModelDir, model_from_files, read_model_dir
from lora_hub.hashing import hash_file
from lora_hub.progress import Advance, NoProgress, Progress
from lora_hub.refs import AdapterName
from lora_hub.types import (
    AdapterVersion,
    BaseAddResult,
    BaseFile,
    BaseModelInfo,
)

if TYPE_CHECKING:
    pass


class BasePullResult(BaseModel):
    """What ``base pull`` wrote: the base, the folder, how many files and bytes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: BaseModelInfo
    path: str
    files: int
    bytes_written: int


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
    return _registered(ctx, name, info, created, hashed, stored_bytes)


def pull(
    ctx: Context,
    name: str,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> BasePullResult:
    """Write the stored files of base ``name`` to ``dest`` as an HF model folder (plus lora-hub's
    hidden marker file, ``.lorahub-output.json``), each file checked against its digest as it
    is copied out of the blob store (``write_pulled``, which the remote client uses as well).

    Only a base whose every file is in the blob store can be pulled (``base add --store``, or a
    merge stored by a job). ``dest`` follows the output rule of ``lora_hub._fs``: absent or
    empty, or replaced only with ``force`` (a folder lora-hub wrote) or ``overwrite`` (any
    folder); never lora-hub's own data or a registered base's folder.
    """
    info = ctx.catalog.bases.get(str(AdapterName.parse(name)), with_tensors=False)
    return write_stored(ctx, info, dest, replace=Replace.of(force=force, overwrite=overwrite),
                        protected=ctx.protected(), progress=progress)  # fmt: skip


def write_stored(
    ctx: Context,
    info: BaseModelInfo,
    dest: str | os.PathLike[str],
    *,
    replace: Replace,
    protected: Sequence[Protected],
    progress: Progress | None = None,
) -> BasePullResult:
    """``write_pulled`` from this context's blob store."""

    def copy(f: BaseFile, target: Path, advance: Advance) -> int:
        assert f.digest is not None
        with DirectFile(target, direct=ctx.settings.direct_io) as fh:  # past the page cache; fsynced
            return ctx.store.copy_out(f.digest, fh, advance)  # raises on a digest mismatch

    return write_pulled(info, dest, copy, replace=replace, protected=protected, registry=ctx.partials(),
                        progress=progress)  # fmt: skip


def pullable(info: BaseModelInfo) -> list[BaseFile]:
    """The files of a base that can be pulled (every one in the blob store), else
    ``NotSupportedError`` saying why not and what to do."""
    missing = [f.path for f in info.files if not f.digest]
    if not info.stored or not info.files or missing:
        why = (
            "it is not stored in the blob store"
            if not info.stored or not info.files
            else (f"{len(missing)} of its files are not in the blob store ({', '.join(missing[:3])})")
        )
        raise NotSupportedError(
            f"base {info.name} cannot be pulled: {why}",
            hint=f"register its folder with `lorahub base add DIR --name {info.name} --store` to keep a copy",
        )
    return list(info.files)


def stored_file(ctx: Context, name: str, path: str) -> BaseFile:
    """The file ``path`` of the pullable base ``name`` (``NotFoundError`` if it has none)."""
    info = ctx.catalog.bases.get(str(AdapterName.parse(name)), with_tensors=False)
    for f in pullable(info):
        if f.path == path:
            return f
    raise NotFoundError(f"base {info.name} has no file {path[:200]!r}", hint=f"`lorahub base show {info.name}`")


def write_pulled(
    info: BaseModelInfo,
    dest: str | os.PathLike[str],
    copy: Callable[[BaseFile, Path, Advance], int],
    *,
    replace: Replace,
    protected: Sequence[Protected],
    registry: PartialRegistry | None,
    progress: Progress | None = None,
) -> BasePullResult:
    """Write the files of the pullable base ``info`` into ``dest`` under the output rule: each
    file is written by ``copy(file, target, advance)``, which creates ``target``, makes it
    durable, returns how many bytes it wrote and raises ``IntegrityError`` when they do not match
    the file's digest. The files are written
    into a hidden folder beside ``dest`` that is renamed into place once all of them are
    checked, so ``dest`` never holds a partial base. Where the bytes come from is the caller's:
    the blob store here (``pull``), the server for the remote client."""
    progress = progress or NoProgress()
    files = pullable(info)
    out = prepare_output(Path(dest), replace=replace, protected=protected)
    total = sum(f.size for f in files)
    check_free_space(out.parent, total, what="the base")
    written = 0
    details = {"base": info.name, "content_fingerprint": info.content_fingerprint}
    with (
        staged_output(out, kind="base", replace=replace, registry=registry, details=details) as tmp,
        progress.task(f"pulling base {info.name}", total) as advance,
    ):
        root = tmp.resolve()
        for f in files:
            target = (tmp / f.path).resolve()
            if not target.is_relative_to(root) or target == root:
                raise InvalidArgumentError(f"refusing a file path outside the folder: {f.path!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            written += copy(f, target, advance)
    return BasePullResult(base=info, path=str(out), files=len(files), bytes_written=written)


def add_stored(
    ctx: Context, name: str, files: Sequence[BaseFile], *, source: str | None = None, progress: Progress | None = None
) -> BaseAddResult:
    """Register base ``name`` made of blobs already in the store (``files``, every one with its
    digest): a folder uploaded to the server (``lora_hub.core.transfer.commit_base_manifest``).
    The fingerprints are computed here, from the stored blobs, as ``add`` computes them from a
    folder; the base has no folder (``path`` is None) and is pullable. ``source`` names the
    client's folder in error messages."""
    progress = progress or NoProgress()
    name = str(AdapterName.parse(name))
    paths = {f.path: ctx.local_copy(f.digest or "") for f in files}
    model = model_from_files(Path(source or name), paths)
    with progress.task("hashing", model.weight_bytes) as advance:
        digests, hashed = compat.hash_tensors(model, ctx.catalog.hashes, advance)
    described = compat.describe_model(model, digests, name=name, stored=True)
    info, created = ctx.catalog.bases.add(described.model_copy(update={"path": None, "files": list(files)}))
    return _registered(ctx, name, info, created, hashed, 0)


def _registered(
    ctx: Context, name: str, info: BaseModelInfo, created: bool, hashed: int, stored_bytes: int
) -> BaseAddResult:
    """What follows a registration: the fits of the base, and a warning when an adapter has its name."""
    fits.record_fits_for_base(ctx, name, info)
    warnings = []
    if ctx.catalog.adapters.versions_of(AdapterName.parse(name)):
        warnings.append(
            f"an adapter is also named {name}; `lorahub show {name}` shows the adapter, "
            f"`lorahub base show {name}` the base"
        )
    return BaseAddResult(base=info, created=created, hashed_bytes=hashed, stored_bytes=stored_bytes, warnings=warnings)


def store_folder(ctx: Context, folder: Path, name: str, *, progress: Progress | None = None) -> BaseModelInfo:
    """Move the model folder ``folder`` into the blob store as base ``name``, which then has no
    folder: its files are only in the store (``pull`` writes them out). For a merge that a job
    wrote into a folder of its own: ``name`` may already be registered with this content (the
    merge registers its output with its lineage, which is kept). The files are taken over by the
    store (``adopt_file``): ``folder`` must be discarded afterwards."""
    progress = progress or NoProgress()
    model = read_model_dir(folder)
    digests, _ = compat.hash_tensors(model, ctx.catalog.hashes)
    described = compat.describe_model(model, digests, name=name, stored=True)
    files = []
    with ctx.catalog.leases.writing():
        total = sum(p.stat().st_size for p in model.files.values())
        check_space(ctx.store, total)
        with progress.task("storing the merged model", total) as advance:
            for rel, p in sorted(model.files.items()):
                digest, size = hash_file(p)
                ctx.store.adopt_file(p, digest, size, advance)
                files.append(BaseFile(path=rel, size=size, digest=digest))
        info, _ = ctx.catalog.bases.add(described.model_copy(update={"path": None, "files": files}))
    fits.record_fits_for_base(ctx, name, info)
    return info


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
