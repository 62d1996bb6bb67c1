"""``Hub``: the one core API. The CLI and the HTTP service parse input, call it, and format output.

push:  formats.peft (parse + validate) -> hash -> store.put_file (atomic) -> catalog.add_version
pull:  catalog.get -> store.copy_out (digest checked) into a temporary folder -> rename into place
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_hub import _faults, compat
from lora_hub._fs import fsync_dir, pid_alive
from lora_hub.catalog import Catalog
from lora_hub.catalog.query import check_metric_name
from lora_hub.errors import (
    BaseNotFoundError,
    ConflictError,
    DestinationExistsError,
    IncompatibleError,
    IntegrityError,
    InvalidAdapterError,
    InvalidArgumentError,
    InvalidModelError,
    LoraHubError,
    MergeError,
    NotFoundError,
)
from lora_hub.formats.hf import ModelDir, model_from_files, read_model_dir
from lora_hub.formats.peft import read_adapter_dir
from lora_hub.formats.safetensors_file import nonfinite_tensors
from lora_hub.hashing import hash_bytes, hash_file
from lora_hub.progress import NoProgress, Progress
from lora_hub.refs import AdapterName, Ref, check_tag
from lora_hub.settings import Settings
from lora_hub.store import BlobStore, open_store
from lora_hub.types import (
    AdapterVersion,
    BaseAddResult,
    BaseFile,
    BaseModelInfo,
    CombineResult,
    CompatReport,
    FileEntry,
    GcReport,
    ListQuery,
    MergeRecord,
    MergeReport,
    MergeResult,
    PullResult,
    PushResult,
)

if TYPE_CHECKING:
    from lora_hub.merge.plan import AdapterInput, MergePlan

MERGE_RECORD_FILE = "lorahub_merge.json"
PARTIAL_MARK = ".lorahub-partial-"
# Checked before any work; whether torch can use the device is asked once torch has loaded.
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?")


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


def parse_metric_args(items: Sequence[str]) -> dict[str, float]:
    """``["accuracy=0.81", "bleu=31.2"]`` -> ``{"accuracy": 0.81, "bleu": 31.2}``."""
    out: dict[str, float] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not raw:
            raise InvalidArgumentError(f"metric {item!r} is not KEY=VALUE", hint="e.g. --metric accuracy=0.81")
        try:
            out[key.strip()] = float(raw)
        except ValueError:
            raise InvalidArgumentError(f"metric {key}: {raw!r} is not a number") from None
    return check_metrics(out)


class Hub:
    """The registry. ``Hub()`` reads ``LORAHUB_*`` from the environment; arguments override it.

    The catalog is opened (and migrated) on first use, so creating a ``Hub`` is free.
    """

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        store_url: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(home=home, database_url=database_url, store_url=store_url)
        self._catalog: Catalog | None = None
        self._store: BlobStore | None = None

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            if self.settings.server_url:
                raise LoraHubError(
                    f"LORAHUB_URL is set ({self.settings.server_url}), but talking to a lorahub server is not "
                    "built yet",
                    hint="unset LORAHUB_URL to use the local catalog",
                )
            self._catalog = Catalog(self.settings.database_url)
        return self._catalog

    @property
    def store(self) -> BlobStore:
        if self._store is None:
            self._store = open_store(self.settings.store_url)
        return self._store

    # --- adapters ----------------------------------------------------------------------------

    def push(
        self,
        path: str | os.PathLike[str],
        name: str,
        *,
        metrics: Mapping[str, float] | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        base: str | None = None,
        lineage: dict[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> PushResult:
        """Validate the PEFT folder at ``path`` and store it as the next version of ``name``.

        With ``base`` (a registered base or a model folder), the adapter must fit it, and it is
        recorded as the base the adapter was trained on; an incompatible adapter is refused with
        every problem listed. Content identical to an existing version of ``name`` returns that
        version and writes nothing. The version becomes visible only once every blob is durable.
        """
        progress = progress or NoProgress()
        adapter_name = AdapterName.parse(name)
        tag_list = [check_tag(t) for t in dict.fromkeys(tags)]
        metric_map = check_metrics(metrics or {})
        adapter = read_adapter_dir(path, check_finite=False)
        total = sum(p.stat().st_size for p in adapter.files.values())

        # The NaN/Inf scan and the hashing read the same bytes; run them side by side.
        with progress.task("checking", total) as advance, ThreadPoolExecutor(2) as pool:
            scan = pool.submit(nonfinite_tensors, adapter.header)
            entries = [
                FileEntry(path=rel, digest=d, size=n)
                for rel, (d, n) in ((rel, hash_file(p, advance)) for rel, p in adapter.files.items())
            ]
            bad = scan.result()
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise InvalidAdapterError(
                f"NaN or Inf values in {', '.join(bad[:3])}{more}",
                path=str(adapter.header.path),
                hint="the training diverged or the file is damaged",
            )
        base_info: BaseModelInfo | None = None
        if base is not None:
            base_info, base_label, _ = self._open_base(base, progress)
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
        model_type = base_info.model_type if base_info else adapter.facts.model_type
        signature = compat.structure_signature(adapter.facts, adapter.layout, model_type)
        digest = manifest_digest(entries)
        existing = self.catalog.find_by_digest(adapter_name, digest)
        if existing is not None:
            return PushResult(version=existing, created=False, bytes_written=0)

        written = 0
        with self.store.writing():
            missing = [e for e in entries if not self.store.has(e.digest)]
            with progress.task("storing", sum(e.size for e in missing)) as advance:
                for entry in missing:
                    written += self.store.put_file(adapter.files[entry.path], entry.digest, advance)
            _faults.checkpoint("push.before_catalog")
            version, created = self.catalog.add_version(
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
            self._record_fits_for_signature(signature, version, model_type)
        return PushResult(version=version, created=created, bytes_written=written)

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> PullResult:
        """Write the version's files to ``dest``, byte-identical to what was pushed.

        ``dest`` must be absent or empty unless ``force``, which replaces it. The files are
        written to a temporary folder beside ``dest``, checked against their digests, and renamed
        into place, so ``dest`` is never left half-written.
        """
        progress = progress or NoProgress()
        version = self.show(ref)
        dest = Path(dest).absolute()
        _check_destination(dest, force)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(dest)
        tmp = dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        written = 0
        try:
            with progress.task(f"pulling {version.ref}", sum(f.size for f in version.files)) as advance:
                for entry in version.files:
                    target = (tmp / entry.path).resolve()
                    if not target.is_relative_to(tmp.resolve()):
                        raise InvalidArgumentError(f"refusing a file path outside the folder: {entry.path!r}")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with open(target, "wb", buffering=0) as fh:
                        written += self.store.copy_out(entry.digest, fh, advance)
                        os.fsync(fh.fileno())
                    _faults.checkpoint("pull.after_file")
            _swap_into_place(tmp, dest)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return PullResult(version=version, path=str(dest), bytes_written=written)

    def show(self, ref: str) -> AdapterVersion:
        return self.catalog.get(Ref.parse(ref))

    def list(self, query: ListQuery | None = None, **filters: object) -> list[AdapterVersion]:
        """Versions matching ``query`` (or the same fields as keywords), newest first by default."""
        if query is None:
            query = ListQuery.model_validate(filters)
        elif filters:
            query = query.model_copy(update=filters)
        return self.catalog.list(query)

    def versions(self, name: str) -> list[int]:
        return self.catalog.versions_of(AdapterName.parse(name))

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        """Point ``tag`` at ``ref``; it moves off the version that had it. ``latest`` is implicit."""
        return self.catalog.tag(Ref.parse(ref), check_tag(tag))

    def untag(self, name: str, tag: str) -> AdapterVersion:
        return self.catalog.untag(AdapterName.parse(name), check_tag(tag))

    def set_metrics(self, ref: str, metrics: Mapping[str, float], *, remove: Sequence[str] = ()) -> AdapterVersion:
        """Set (overwrite) the given metrics of a version, and delete those in ``remove``."""
        for key in remove:
            check_metric_name(key)
        return self.catalog.set_metrics(Ref.parse(ref), check_metrics(metrics), remove=remove)

    def remove(self, ref: str) -> AdapterVersion:
        """Remove one version. A bare name is refused: say which version."""
        parsed = Ref.parse(ref)
        if ":" not in ref:
            raise InvalidArgumentError(
                f"say which version of {parsed.adapter} to remove",
                hint=f"e.g. `lorahub rm {parsed.adapter}:1`",
            )
        return self.catalog.delete_version(parsed)

    # --- base models ---------------------------------------------------------------------------

    def base_add(
        self, path: str | os.PathLike[str], name: str, *, store: bool = False, progress: Progress | None = None
    ) -> BaseAddResult:
        """Fingerprint the HF model folder at ``path`` and register it as ``name``.

        The weights stay where they are unless ``store``, which also copies every file into the
        blob store. Tensor hashes are cached by (path, size, mtime, inode): re-adding an unchanged
        folder reads no weights.
        """
        progress = progress or NoProgress()
        name = str(AdapterName.parse(name))
        model = read_model_dir(path)
        with progress.task("hashing", model.weight_bytes) as advance:
            digests, hashed = compat.hash_tensors(model, self.catalog, advance)
        files = [BaseFile(path=rel, size=p.stat().st_size) for rel, p in model.files.items()]
        stored_bytes = 0
        if store:
            files = []
            with self.store.writing():
                total = sum(p.stat().st_size for p in model.files.values())
                with progress.task("storing", total) as advance:
                    for rel, p in model.files.items():
                        digest, size = hash_file(p)
                        stored_bytes += self.store.put_file(p, digest, advance)
                        files.append(BaseFile(path=rel, size=size, digest=digest))
                info, created = self.catalog.add_base(
                    compat.describe_model(model, digests, name=name, stored=True, files=files)
                )
        else:
            info, created = self.catalog.add_base(compat.describe_model(model, digests, name=name, files=files))
        self._record_fits_for_base(name, info)
        return BaseAddResult(base=info, created=created, hashed_bytes=hashed, stored_bytes=stored_bytes)

    def base_list(self) -> list[BaseModelInfo]:
        return self.catalog.list_bases()

    def base_show(self, name: str) -> BaseModelInfo:
        return self.catalog.get_base(name)

    def base_remove(self, name: str) -> BaseModelInfo:
        """Forget a base (its files stay; stored blobs are freed by ``gc``). Adapters pushed against
        it keep its fingerprint."""
        return self.catalog.remove_base(name)

    def validate(self, adapter: str | os.PathLike[str], base: str | os.PathLike[str]) -> CompatReport:
        """Does ``adapter`` (a reference or a PEFT folder) fit ``base`` (a registered base or an HF
        model folder)? See ``lora_hub.compat`` for the three verdicts."""
        side, trained_on_model = self._adapter_side(adapter)
        info, label, model = self._open_base(base)
        report = compat.check(side, info, label)
        if report.verdict != "compatible" or side.trained_on is None:
            return report
        if trained_on_model is None:
            trained_on_model = self._model_by_fingerprint(side.trained_on)
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
        old_digests, _ = compat.hash_tensors(old_model, self.catalog)
        new_digests, _ = compat.hash_tensors(model, self.catalog)
        diff = compat.weight_diff(pairs, model, old_model, new_digests, old_digests)
        return report.model_copy(update={"diff": diff})

    def _open_base(
        self, spec: str | os.PathLike[str], progress: Progress | None = None
    ) -> tuple[BaseModelInfo, str, ModelDir | None]:
        """A registered base (by name) or a model folder: its description with tensors, a label,
        and its readable weights where they are at hand."""
        text = str(spec)
        if self._is_base_name(text) and self.catalog.find_base(text):
            info = self.catalog.get_base(text)
            return info, text, self._base_weights(info)
        if not Path(text).is_dir():
            if self._is_base_name(text):
                raise BaseNotFoundError(text)
            raise InvalidModelError("no such folder, and no registered base by that name", path=text)
        model = read_model_dir(text)
        with (progress or NoProgress()).task("hashing base", model.weight_bytes) as advance:
            digests, _ = compat.hash_tensors(model, self.catalog, advance)
        return compat.describe_model(model, digests), text, model

    @staticmethod
    def _is_base_name(text: str) -> bool:
        try:
            AdapterName.parse(text)
        except LoraHubError:
            return False
        return True

    def _base_weights(self, info: BaseModelInfo) -> ModelDir | None:
        """The registered base's weights, read from its folder if it still holds the same content,
        else from the blob store if they were stored there."""
        if info.path and Path(info.path).is_dir():
            with contextlib.suppress(LoraHubError, OSError):
                model = read_model_dir(info.path)
                digests, _ = compat.hash_tensors(model, self.catalog)
                if compat.describe_model(model, digests).content_fingerprint == info.content_fingerprint:
                    return model
        if info.stored:
            paths = {f.path: self.store.local_path(f.digest) for f in info.files if f.digest}
            if all(p is not None for p in paths.values()):
                return model_from_files(Path(info.path or "."), paths)  # type: ignore[arg-type]
        return None

    def _model_by_fingerprint(self, fingerprint: str) -> tuple[ModelDir, BaseModelInfo] | None:
        for info in self.catalog.list_bases():
            if info.content_fingerprint == fingerprint:
                model = self._base_weights(self.catalog.get_base(info.name or ""))
                if model is not None:
                    return model, info
        return None

    def _adapter_side(
        self, spec: str | os.PathLike[str]
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
                    digests, _ = compat.hash_tensors(model, self.catalog)
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
            version, base_model_type = self.catalog.trained_on(Ref.parse(text))
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

    def _record_fits_for_base(self, name: str, info: BaseModelInfo) -> None:
        fits = {}
        for signature, version, model_type in self.catalog.signatures_without_fit(name):
            assert version.layout is not None
            side = compat.AdapterSide(
                version.ref, version.facts, version.layout, model_type or version.facts.model_type
            )
            fits[signature] = compat.check(side, info, name).verdict != "incompatible"
        self.catalog.record_fits(name, fits)

    def _record_fits_for_signature(self, signature: str, version: AdapterVersion, model_type: str | None) -> None:
        assert version.layout is not None
        side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type)
        for name in self.catalog.bases_without_fit(signature):
            info = self.catalog.get_base(name)
            self.catalog.record_fits(name, {signature: compat.check(side, info, name).verdict != "incompatible"})

    # --- merging ------------------------------------------------------------------------------

    def merge(
        self,
        base: str | os.PathLike[str],
        adapters: Sequence[str],
        output: str | os.PathLike[str],
        *,
        name: str | None = None,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        dtype: str = "auto",
        device: str = "auto",
        shard_size: str | int = "5GB",
        force: bool = False,
        progress: Progress | None = None,
    ) -> MergeResult:
        """Merge ``adapters`` (``ref[@weight]`` or ``folder[@weight]``) into ``base``, writing an HF
        model folder at ``output``: ``W' = W + sum_i w_i * s_i * B_i @ A_i`` for every target.

        Every adapter is checked against the base before anything is written; every changed
        tensor is verified (see ``lora_hub.merge.execute``); the output appears only when complete.
        The same recipe again is served from the catalog (copied, if ``output`` is elsewhere)
        unless ``force``. With ``name``, the output is registered as a base with its lineage.
        ``method`` and ``params`` choose how several adapters combine (``lora_hub.merge.methods``;
        random methods take ``params["seed"]``).
        """
        from lora_hub.merge.plan import open_output, parse_size, plan_merge

        progress = progress or NoProgress()
        out = Path(output).absolute()
        if name is not None:
            name = str(AdapterName.parse(name))
        if not _DEVICE_NAME.fullmatch(device):
            raise InvalidArgumentError(f"unknown device {device!r}", hint="use auto, cpu or cuda (or cuda:N)")
        if not (out / MERGE_RECORD_FILE).is_file():  # a recorded output may be served again as it is
            _check_destination(out, force)
        base_info, base_label, model = self._open_base(base, progress)
        if model is None:
            raise InvalidModelError(
                "the weights of this base are not at hand (its folder moved or changed, and it is not stored)",
                path=base_label,
                hint=f"add it again with `lorahub base add DIR --name {base_label}`",
            )
        inputs = [self._merge_input(spec, base_info, base_label) for spec in adapters]
        plan = plan_merge(
            model,
            base_info.content_fingerprint,
            inputs,
            method=method,
            params=dict(params or {}),
            dtype=dtype,
            shard_size=parse_size(shard_size),
        )
        if name is not None and self.catalog.find_base(name):
            lineage = self.catalog.get_base(name, with_tensors=False).lineage or {}
            if lineage.get("recipe_digest") != plan.recipe_digest:
                raise ConflictError(
                    f"base {name} is already registered with other content",
                    hint=f"choose another --name, or `lorahub base rm {name}` first",
                )
        if not force and (reused := self._reuse_merge(plan.recipe_digest, out, name, progress)) is not None:
            return reused
        _check_destination(out, force)

        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_partials(out)
        extras = sum(model.files[rel].stat().st_size for rel in plan.copy_files)
        _check_free_space(out.parent, _plan_bytes(plan) + extras)
        tmp = out.parent / f".{out.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        tmp.mkdir()
        try:
            for rel in plan.copy_files:
                target = tmp / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(model.files[rel], target)
            _set_config_dtype(tmp, dtype)
            output_files = open_output(plan, tmp, direct=self.settings.direct_io)
            try:
                # Only now: torch loads in about a second, with the output files already made
                # (and, for buffered writes, their pages being warmed on the other core).
                from lora_hub.merge import execute as ex

                torch_device = ex.pick_device(device)
                label = f"merging {plan.touched} of {len(plan.tensors)} tensors"
                with progress.task(label, _plan_bytes(plan)) as advance:
                    stats = ex.execute(
                        plan,
                        model,
                        [a.weights_path for a in inputs],
                        tmp,
                        device=torch_device,
                        base_digests={n: t.digest for n, t in (base_info.tensors or {}).items()},
                        advance=advance,
                        output=output_files,
                    )
            finally:
                output_files.close()
            _faults.checkpoint("merge.before_rename")
            report = _merge_report(stats)
            merged = compat.describe_model(read_model_dir(tmp), stats.digests)
            record = MergeRecord(
                recipe_digest=plan.recipe_digest,
                recipe=plan.recipe.model_dump(mode="json"),
                output_path=str(out),
                content_fingerprint=merged.content_fingerprint,
                name=name,
                report=report,
                versions=_library_versions(),
            )
            (tmp / MERGE_RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n")
            _swap_into_place(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # The record names the base only once the base is registered under that name.
        record = self.catalog.record_merge(record.model_copy(update={"name": None}))
        if name is not None:
            self._register_merged(out, name, stats.digests, record)
            record = self.catalog.record_merge(record.model_copy(update={"name": name}))
        return MergeResult(
            path=str(out),
            record=record,
            reused=False,
            tensors_merged=stats.tensors_merged,
            tensors_copied=stats.tensors_copied,
            tensors_converted=stats.tensors_converted,
            bytes_written=stats.bytes_written,
            seconds=stats.seconds,
            peak_rss_bytes=_peak_rss(),
            device=str(torch_device),
        )

    def _adapter_input(self, spec: str) -> tuple[AdapterInput, compat.AdapterSide, str | None]:
        """``ref[@weight]`` or ``folder[@weight]``: the adapter's facts, layout and weights file
        (checked against its digest), how it describes itself to ``compat``, and the registered
        base it was pushed against."""
        from lora_hub.merge.plan import AdapterInput

        target, weight = _split_weight(spec)
        if Path(target).is_dir():
            folder = read_adapter_dir(target)
            entries = [
                FileEntry(path=r, digest=hash_file(p)[0], size=p.stat().st_size) for r, p in folder.files.items()
            ]
            side = compat.AdapterSide(target, folder.facts, folder.layout, folder.facts.model_type)
            item = AdapterInput(
                label=target,
                digest=manifest_digest(entries),
                weight=weight,
                facts=folder.facts,
                layout=folder.layout,
                weights_path=str(folder.files["adapter_model.safetensors"]),
            )
            return item, side, None
        version, base_model_type = self.catalog.trained_on(Ref.parse(target))
        assert version.layout is not None
        model_type = base_model_type or version.facts.model_type
        side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type, version.base_fingerprint)
        entry = next(f for f in version.files if f.path == "adapter_model.safetensors")
        path = self.store.local_path(entry.digest)
        if path is None or hash_file(path)[0] != entry.digest:
            raise IntegrityError(
                f"the weights of {version.ref} are missing or corrupted in the store ({entry.digest})",
                hint="push the adapter again to restore them",
            )
        item = AdapterInput(
            label=version.ref,
            digest=version.digest,
            weight=weight,
            facts=version.facts,
            layout=version.layout,
            weights_path=str(path),
        )
        return item, side, version.base

    def _merge_input(self, spec: str, base_info: BaseModelInfo, base_label: str) -> AdapterInput:
        item, side, _ = self._adapter_input(spec)
        report = compat.check(side, base_info, base_label)
        if report.verdict == "incompatible":
            raise IncompatibleError(
                f"{item.label} does not fit base {base_label} ({len(report.problems)} problem(s)):",
                problems=[p.message for p in report.problems],
                hint=f"see `lorahub validate {_split_weight(spec)[0]} --base {base_label}`",
            )
        return item

    def combine(
        self,
        adapters: Sequence[str],
        name: str,
        *,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        rank: int | None = None,
        dtype: str = "auto",
        output: str | os.PathLike[str] | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> CombineResult:
        """Combine adapters (``ref[@weight]`` or folders) into a new PEFT adapter, pushed as
        ``name`` with its lineage. ``cat`` is exact; other methods are re-factored to ``rank``
        (default: the sum of the input ranks) with each module's error reported. See
        ``lora_hub.merge.combine`` for the formulas. ``output`` also keeps the folder there."""
        import torch
        from safetensors.torch import save_file

        from lora_hub.merge.combine import combine_adapters
        from lora_hub.merge.methods import get_method

        AdapterName.parse(name)
        spec = get_method(method)
        checked = spec.check_params(params or {})
        resolved = [self._adapter_input(s) for s in adapters]
        if not resolved:
            raise InvalidArgumentError("name at least one adapter to combine")
        inputs = [item for item, _, _ in resolved]
        bases = {base for _, _, base in resolved}
        combined = combine_adapters(inputs, spec, checked, rank=rank, dtype=dtype)
        lineage = {
            "kind": "combine",
            "method": method,
            "params": checked,
            "rank": rank,
            "inputs": [{"ref": a.label, "digest": a.digest, "weight": a.weight} for a in inputs],
            "errors": combined.errors,
            "versions": _library_versions(),
        }
        with contextlib.ExitStack() as stack:
            if output is None:
                import tempfile

                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="lorahub-combine-")))
            else:
                folder = Path(output).absolute()
                _check_destination(folder, force=False)
                folder.mkdir(parents=True, exist_ok=True)
            torch_tensors = {k: v.contiguous() for k, v in combined.tensors.items()}
            save_file(torch_tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
            (folder / "adapter_config.json").write_text(json.dumps(combined.config, indent=2) + "\n")
            del torch, torch_tensors
            base = next(iter(bases)) if len(bases) == 1 else None
            pushed = self.push(
                folder,
                name,
                description=description,
                tags=tags,
                base=base,
                lineage=lineage,
                progress=progress,
            )
        errors = list(combined.errors.values())
        return CombineResult(
            push=pushed,
            method=method,
            ranks=combined.ranks,
            errors=combined.errors,
            max_error=max(errors),
            mean_error=sum(errors) / len(errors),
        )

    def _reuse_merge(self, recipe_digest: str, out: Path, name: str | None, progress: Progress) -> MergeResult | None:
        """The recorded output of this recipe, if it still holds what was recorded."""
        record = self.catalog.find_merge(recipe_digest)
        if record is None or not Path(record.output_path).is_dir():
            return None
        source = Path(record.output_path)
        try:
            model = read_model_dir(source)
            digests, _ = compat.hash_tensors(model, self.catalog)
        except LoraHubError:
            return None
        if compat.describe_model(model, digests).content_fingerprint != record.content_fingerprint:
            return None
        if source.resolve() != out.resolve():
            _check_destination(out, force=False)
            _copy_tree_atomically(source, out, progress)
        if name is not None and (name != record.name or not self.catalog.find_base(name)):
            self._register_merged(out, name, digests, record)
            record = self.catalog.record_merge(record.model_copy(update={"name": name}))
        return MergeResult(path=str(out), record=record, reused=True, peak_rss_bytes=_peak_rss())

    def _register_merged(self, out: Path, name: str, digests: Mapping[str, str], record: MergeRecord) -> None:
        model = read_model_dir(out)
        info = compat.describe_model(model, digests, name=name).model_copy(
            update={
                "lineage": {
                    "recipe_digest": record.recipe_digest,
                    "recipe": record.recipe,
                    "report": record.report.model_dump(mode="json"),
                    "versions": record.versions,
                }
            }
        )
        self.catalog.add_base(info)
        self._record_fits_for_base(name, info)

    def show_any(self, ref: str) -> AdapterVersion | BaseModelInfo:
        """An adapter version, or else a base (merged models are bases with a lineage)."""
        try:
            return self.show(ref)
        except NotFoundError:
            if ":" not in ref and self._is_base_name(ref) and self.catalog.find_base(ref):
                return self.catalog.get_base(ref, with_tensors=False)
            raise

    # --- maintenance -------------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Delete blobs that no version references, and temporary files of dead writers."""
        with self.store.collecting():
            referenced = self.catalog.referenced_digests()
            removed = freed = 0
            for digest, size in list(self.store.digests()):
                if digest in referenced:
                    continue
                removed += 1
                freed += size if dry_run else self.store.delete(digest)
            temps = self.store.remove_stale_temp(dry_run=dry_run)
        return GcReport(blobs_removed=removed, bytes_freed=freed, temp_files_removed=temps, dry_run=dry_run)

    def upgrade_db(self) -> str | None:
        """Apply catalog migrations (also done on first use); return the current revision."""
        catalog = Catalog(self.settings.database_url, migrate=False)
        try:
            return catalog.db.upgrade()
        finally:
            catalog.close()


def _check_destination(dest: Path, force: bool) -> None:
    if dest.exists() or dest.is_symlink():
        if not dest.is_dir():
            raise DestinationExistsError(f"{dest} exists and is not a folder", hint="choose another output path")
        if any(dest.iterdir()) and not force:
            raise DestinationExistsError(
                f"{dest} is not empty", hint="use --force to replace it, or choose another folder"
            )


def _split_weight(spec: str) -> tuple[str, float]:
    """``acme/sql:3@0.7`` -> (``acme/sql:3``, 0.7); no ``@number`` means weight 1."""
    target, sep, tail = spec.rpartition("@")
    if sep and target:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(weight):
            raise InvalidArgumentError(f"weight of {target} must be a finite number, got {tail}")
        return target, weight
    return spec, 1.0


def _plan_bytes(plan: MergePlan) -> int:
    from lora_hub.formats.safetensors_file import DTYPE_SIZES

    return sum(math.prod(t.shape) * DTYPE_SIZES[t.dtype_out] for t in plan.tensors)


def _check_free_space(folder: Path, needed: int) -> None:
    """Refuse a merge that cannot fit, before any work rather than after most of it."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise MergeError(
            f"not enough free space in {folder}: the merged model needs {needed / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB are free",
            hint="free some space, or write the output (-o) to another disk",
        )


def _set_config_dtype(folder: Path, dtype: str) -> None:
    config = folder / "config.json"
    if dtype == "auto" or not config.is_file():
        return
    doc = json.loads(config.read_text())
    # transformers 5 writes ``dtype``, older releases ``torch_dtype``; every release reads the latter.
    keys = [k for k in ("torch_dtype", "dtype") if k in doc] or ["torch_dtype"]
    for key in keys:
        doc[key] = dtype
    config.write_text(json.dumps(doc, indent=2) + "\n")


def _merge_report(stats: Any) -> MergeReport:
    worst = max(stats.errors, key=lambda k: stats.errors[k]) if stats.errors else None
    return MergeReport(
        verified_tensors=len(stats.errors),
        worst_error=stats.errors[worst] if worst else None,
        worst_tensor=worst,
        errors=stats.errors,
        tolerances=stats.tolerances,
        passed=all(stats.errors[k] <= stats.tolerances[k] for k in stats.errors),
    )


def _library_versions() -> dict[str, str]:
    import platform

    import safetensors
    import torch

    from lora_hub import __version__

    return {"lora_hub": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}  # fmt: skip


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _copy_tree_atomically(source: Path, dest: Path, progress: Progress) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        total = sum(p.stat().st_size for p in source.rglob("*") if p.is_file())
        with progress.task("copying the recorded merge", total) as advance:
            for p in sorted(source.rglob("*")):
                target = tmp / p.relative_to(source)
                if p.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(p, target)
                advance(p.stat().st_size)
        _swap_into_place(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove_stale_partials(dest: Path) -> None:
    """Remove temporary folders left beside ``dest`` by pulls that were killed."""
    prefix = f".{dest.name}{PARTIAL_MARK}"
    for entry in dest.parent.glob(f"{prefix}*"):
        pid_text = entry.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not pid_alive(int(pid_text)):
            shutil.rmtree(entry, ignore_errors=True)


def _swap_into_place(tmp: Path, dest: Path) -> None:
    if dest.is_dir() and not any(dest.iterdir()):
        dest.rmdir()
    if dest.exists():
        old = dest.parent / f".{dest.name}.lorahub-old-{os.getpid()}-{secrets.token_hex(4)}"
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(dest)
    with contextlib.suppress(OSError):
        fsync_dir(dest.parent)
