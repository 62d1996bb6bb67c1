"""Adapters: push, pull, show, list, tag, metrics, remove."""

from __future__ import annotations

import json
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_hub import _faults, compat
from lora_hub._context import Context
from lora_hub._direct import DirectFile
from lora_hub._fs import Replace, prepare_output, staged_output
from lora_hub.catalog.query import check_metric_name
from lora_hub.core import bases, fits
from lora_hub.core.common import (
    check_free_space,
    check_space,
    is_base_name,
)
from lora_hub.errors import (
    IncompatibleError,
    IntegrityError,
    InvalidArgumentError,
)
from lora_hub.formats.peft import check_finite_tensors, read_adapter_dir
from lora_hub.formats.safetensors_file import nonfinite_tensors
from lora_hub.hashing import hash_bytes, hash_file, parse_digest
from lora_hub.progress import NoProgress, Progress
from lora_hub.refs import AdapterName, Ref, check_tag
from lora_hub.types import (
    AdapterVersion,
    BaseModelInfo,
    FileEntry,
    ListQuery,
    PullResult,
    PushResult,
    VersionPage,
)

if TYPE_CHECKING:
    pass


def push(
    ctx: Context,
    path: str | os.PathLike[str],
    name: str,
    *,
    metrics: Mapping[str, float] | None = None,
    tags: Sequence[str] = (),
    description: str | None = None,
    base: str | None = None,
    lineage: dict[str, Any] | None = None,
    progress: Progress | None = None,
    verified: Mapping[str, tuple[str, int]] | None = None,
    scanned: Mapping[str, list[str]] | None = None,
) -> PushResult:
    """Validate the PEFT folder at ``path`` and store it as the next version of ``name``.

    With ``base`` (a registered base or a model folder), the adapter must fit it, and it is
    recorded as the base the adapter was trained on; an incompatible adapter is refused with
    every problem listed. Content identical to an existing version of ``name`` returns that
    version and writes nothing. The version becomes visible only once every blob is durable.

    ``verified`` is for lora-hub's own callers only (a Hub import, a server's commit): files of
    the folder, by relative path, whose (sha256, size) lora-hub computed itself in this process
    over the bytes it wrote there. They are not hashed again, and they are handed to the store
    (``BlobStore.adopt_file``: linked into place, not copied), so they are gone from the folder
    afterwards. Every file is still validated in full (config, safetensors headers, NaN/Inf scan).
    A digest a client or a remote sent must never be passed here. ``scanned``: of the verified
    files, the NaN/Inf scans lora-hub made over the same bytes as it hashed them (the names of
    the non-finite tensors), so that the weights are not read again for it.
    """
    progress = progress or NoProgress()
    adapter_name = AdapterName.parse(name)
    tag_list = [check_tag(t) for t in dict.fromkeys(tags)]
    metric_map = check_metrics(metrics or {})
    description = check_description(description)
    adapter = read_adapter_dir(path, check_finite=False)
    known = _check_verified(adapter.files, verified or {})
    to_hash = {rel: p for rel, p in adapter.files.items() if rel not in known}

    # The NaN/Inf scan and the hashing read the same bytes; run them side by side.
    with (
        progress.task("checking", sum(p.stat().st_size for p in to_hash.values())) as advance,
        ThreadPoolExecutor(2) as pool,
    ):
        weights = next((rel for rel, p in adapter.files.items() if p == adapter.header.path), None)
        done = (scanned or {}).get(weights) if weights in known else None
        scan = pool.submit(nonfinite_tensors, adapter.header) if done is None else None
        hashed = {rel: hash_file(p, advance) for rel, p in to_hash.items()}
        sums = {**hashed, **known}
        entries = [FileEntry(path=rel, digest=sums[rel][0], size=sums[rel][1]) for rel in adapter.files]
        bad = scan.result() if scan is not None else done
    check_finite_tensors(adapter.header, bad)
    base_info: BaseModelInfo | None = None
    if base is not None:
        base_info, base_label, _ = bases.open_base(ctx, base, progress)
        side = compat.AdapterSide(
            str(adapter_name),
            adapter.facts,
            adapter.layout,
            adapter.facts.model_type,
            base_info.content_fingerprint,
        )
        report = compat.check(side, base_info, base_label)
        if report.verdict == "incompatible":
            raise IncompatibleError(
                f"{path} does not fit base {base_label} ({len(report.problems)} problem(s)):",
                problems=[p.message for p in report.problems],
                hint=f"check with `lorahub validate {path} --base {base}`",
            )
    warnings = list(adapter.warnings)
    if ctx.catalog.bases.has(str(adapter_name)):
        warnings.append(
            f"a base model is also named {adapter_name}; `lorahub show {adapter_name}` shows the adapter, "
            f"`lorahub base show {adapter_name}` the base"
        )
    model_type = base_info.model_type if base_info else adapter.facts.model_type
    signature = compat.structure_signature(adapter.facts, adapter.layout, model_type)
    digest = manifest_digest(entries)
    existing = ctx.catalog.adapters.find_by_digest(adapter_name, digest)

    written, repaired = 0, []
    with ctx.catalog.leases.writing():
        # Blobs already stored are re-hashed and rewritten if damaged: pushing the folder
        # again is how a user repairs a store.
        present = [e for e in entries if ctx.store.has(e.digest)]
        missing = [e for e in entries if e not in present]
        check_space(ctx.store, sum(e.size for e in missing))
        with progress.task("storing", sum(e.size for e in entries)) as advance:
            for entry in entries:
                src = adapter.files[entry.path]
                if entry.path in known:
                    n = ctx.store.adopt_file(src, entry.digest, entry.size, advance, repair=True)
                else:
                    n = ctx.store.put_file(src, entry.digest, advance, repair=True)
                written += n
                if n and entry in present:
                    repaired.append(entry.path)
        if existing is not None:
            version, updated = apply_to_existing(ctx, existing, metric_map, tag_list, description)
            return PushResult(
                version=version,
                created=False,
                bytes_written=written,
                updated=updated,
                repaired=repaired,
                warnings=warnings,
            )
        _faults.checkpoint("push.before_catalog")
        version, created = ctx.catalog.adapters.add_version(
            adapter_name,
            digest=digest,
            facts=adapter.facts,
            layout=adapter.layout,
            files=entries,
            description=description,
            metrics=metric_map,
            tags=tag_list,
            signature=signature,
            base=base_info,
            lineage=lineage,
        )
    if created:
        fits.record_fits_for_signature(ctx, signature, version, model_type)
    return PushResult(version=version, created=created, bytes_written=written, repaired=repaired, warnings=warnings)


def _check_verified(files: Mapping[str, Path], verified: Mapping[str, tuple[str, int]]) -> dict[str, tuple[str, int]]:
    """``push``'s ``verified``, checked against the folder as read: each path is one of its files
    (a plain file, as ``read_adapter_dir`` allows), with the size that was hashed."""
    out = {}
    for rel, (digest, size) in verified.items():
        parse_digest(digest)
        if rel not in files:
            raise InvalidArgumentError(f"{rel!r} was given as verified but is not a file of the adapter's folder")
        found = files[rel].stat().st_size
        if found != size:
            raise IntegrityError(
                f"{files[rel]} changed after it was hashed ({found:,} bytes, {size:,} when hashed); nothing was stored",
                hint="run the command again",
            )
        out[rel] = (digest, size)
    return out


def apply_to_existing(
    ctx: Context, version: AdapterVersion, metrics: Mapping[str, float], tags: Sequence[str], description: str | None
) -> tuple[AdapterVersion, list[str]]:
    """A push of content already stored as ``version``: apply its metrics, tags and description
    to that version, and say what changed."""
    updated = []
    ref = Ref.parse(version.ref)
    changed = {k: v for k, v in metrics.items() if version.metrics.get(k) != v}
    if changed:
        version = ctx.catalog.adapters.set_metrics(ref, dict(changed))
        updated.append("metric(s) " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
    for tag in tags:
        if tag not in version.tags:
            version = ctx.catalog.adapters.tag(ref, tag)
            updated.append(f"tag {tag}")
    if description is not None and description != version.description:
        version = ctx.catalog.adapters.set_description(ref, description)
        updated.append("description")
    return version, updated


def pull(
    ctx: Context,
    ref: str,
    dest: str | os.PathLike[str],
    *,
    force: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PullResult:
    """Write the version's files to ``dest``, byte-identical to what was pushed (plus lora-hub's
    hidden marker file, ``.lorahub-output.json``).

    ``dest`` must be absent or empty, unless ``force`` (replace a folder lora-hub wrote) or
    ``overwrite`` (replace any folder); it may never be, hold or lie inside lora-hub's own
    data or a registered base's folder (see ``lora_hub._fs``). The files are written to a
    temporary folder beside ``dest``, checked against their digests, and renamed into place,
    so ``dest`` is never left half-written.
    """
    progress = progress or NoProgress()
    version = show(ctx, ref)
    replace = Replace.of(force=force, overwrite=overwrite)
    out = prepare_output(Path(dest), replace=replace, protected=ctx.protected())
    check_free_space(out.parent, sum(f.size for f in version.files), what="the adapter")
    written = 0
    details = {"ref": version.ref, "digest": version.digest}
    with (
        staged_output(out, kind="pull", replace=replace, registry=ctx.partials(), details=details) as tmp,
        progress.task(f"pulling {version.ref}", sum(f.size for f in version.files)) as advance,
    ):
        for entry in version.files:
            target = (tmp / entry.path).resolve()
            if not target.is_relative_to(tmp.resolve()):
                raise InvalidArgumentError(f"refusing a file path outside the folder: {entry.path!r}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with DirectFile(target, direct=ctx.settings.direct_io) as fh:  # past the page cache; fsynced
                written += ctx.store.copy_out(entry.digest, fh, advance)
            _faults.checkpoint("pull.after_file")
    return PullResult(version=version, path=str(out), bytes_written=written)


def show(ctx: Context, ref: str) -> AdapterVersion:
    return ctx.catalog.adapters.get(Ref.parse(ref))


def search(ctx: Context, query: ListQuery | None = None, **filters: object) -> VersionPage:
    """The page of versions matching ``query`` (or the same fields as keywords), newest first
    by default, with how many match in all."""
    if query is None:
        query = ListQuery.model_validate(filters)
    elif filters:
        query = query.model_copy(update=filters)
    return ctx.catalog.adapters.search(query)


class SearchCache:
    """Pages of ``search`` as JSON, by (catalog generation, query): a server answers a listing
    it answered before from memory for as long as the catalog generation has not moved (every
    write that may change a listing moves it, in its own transaction: ``Database.session``), at
    the cost of one one-row query. Bounded: the oldest pages go first.

    Why this is exact: the generation is read before the page is built, so a page stored under
    generation g shows the catalog as of g or later; once a write moves it, no reader asks for g
    again."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._pages: OrderedDict[tuple[int, str], bytes] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, query: ListQuery, generation: int) -> bytes | None:
        """The page's JSON when it is kept here for ``generation``, else None (no catalog read)."""
        key = (generation, query.model_dump_json())
        with self._lock:
            page = self._pages.get(key)
            if page is not None:
                self._pages.move_to_end(key)
            return page

    def page_json(self, ctx: Context, query: ListQuery, generation: int | None = None) -> bytes:
        """The page's JSON; ``generation``: the catalog generation read by the caller before
        (a request's, read once), else read now."""
        if generation is None:
            generation = ctx.catalog.db.generation()
        page = self.peek(query, generation)
        if page is not None:
            return page
        key = (generation, query.model_dump_json())
        page = search(ctx, query).model_dump_json().encode()
        with self._lock:
            self._pages[key] = page
            while len(self._pages) > self.limit:
                self._pages.popitem(last=False)
        return page


def list_versions(ctx: Context, query: ListQuery | None = None, **filters: object) -> list[AdapterVersion]:
    """The versions of ``search``'s page."""
    return search(ctx, query, **filters).items


def versions(ctx: Context, name: str) -> list[int]:
    return ctx.catalog.adapters.versions_of(AdapterName.parse(name))


def tag(ctx: Context, ref: str, tag: str) -> AdapterVersion:
    """Point ``tag`` at ``ref``; it moves off the version that had it. ``latest`` is implicit."""
    return ctx.catalog.adapters.tag(Ref.parse(ref), check_tag(tag))


def untag(ctx: Context, ref: str, tag: str) -> AdapterVersion:
    """Remove ``tag`` from the name of ``ref`` (a name, or a reference whose version is ignored)."""
    return ctx.catalog.adapters.untag(Ref.parse(ref).adapter, check_tag(tag))


def set_metrics(ctx: Context, ref: str, metrics: Mapping[str, float], *, remove: Sequence[str] = ()) -> AdapterVersion:
    """Set (overwrite) the given metrics of a version, and delete those in ``remove``."""
    for key in remove:
        check_metric_name(key)
    return ctx.catalog.adapters.set_metrics(Ref.parse(ref), check_metrics(metrics), remove=remove)


def remove(ctx: Context, ref: str) -> AdapterVersion:
    """Remove one version. A bare name is refused: say which version."""
    parsed = Ref.parse(ref)
    if ":" not in ref:
        raise InvalidArgumentError(
            f"say which version of {parsed.adapter} to remove",
            hint=f"e.g. `lorahub rm {parsed.adapter}:1`",
        )
    return ctx.catalog.adapters.delete_version(parsed)


def name_clash(ctx: Context, ref: str) -> str | None:
    """A note when ``ref`` names both an adapter and a base (``show`` shows the adapter)."""
    name = ref.split(":", 1)[0]
    if is_base_name(name) and ctx.catalog.bases.has(name):
        return f"a base model is also named {name}: see `lorahub base show {name}`"
    return None


MAX_DESCRIPTION = 10_000


def manifest_digest(files: Iterable[FileEntry]) -> str:
    """sha256 of the canonical JSON list of (path, digest, size), sorted by path: the identity of
    a version's content."""
    doc = [{"path": f.path, "digest": f.digest, "size": f.size} for f in sorted(files, key=lambda f: f.path)]
    return hash_bytes(json.dumps(doc, separators=(",", ":"), sort_keys=True).encode())


def check_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        check_metric_name(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidArgumentError(f"metric {key} must be a finite number, got {value!r}")
        out[key] = float(value)
    return out


def check_description(text: str | None) -> str | None:
    """A description is free text of at most ``MAX_DESCRIPTION`` characters, without control
    characters other than newline and tab (an escape sequence would reach every reader's terminal)."""
    if text is None:
        return None
    if len(text) > MAX_DESCRIPTION:
        raise InvalidArgumentError(
            f"the description is {len(text):,} characters long; the limit is {MAX_DESCRIPTION:,}"
        )
    bad = sorted({f"U+{ord(c):04X}" for c in text if not c.isprintable() and c not in "\n\t"})
    if bad:
        raise InvalidArgumentError(
            f"the description holds control characters ({', '.join(bad[:5])})",
            hint="use plain text; newlines and tabs are allowed",
        )
    return text
