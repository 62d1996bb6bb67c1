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
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lora_hub import _faults, compat
from lora_hub._fs import OUTPUT_MARK, PartialRegistry, Protected, Replace, prepare_output, staged_output
from lora_hub.catalog import Catalog
from lora_hub.catalog.query import check_metric_name
from lora_hub.errors import (
    BaseNotFoundError,
    ConflictError,
    IncompatibleError,
    IntegrityError,
    InvalidAdapterError,
    InvalidArgumentError,
    InvalidModelError,
    LoraHubError,
    NotFoundError,
    NotSupportedError,
    StoreError,
)
from lora_hub.formats.hf import ModelDir, model_from_files, read_model_dir
from lora_hub.formats.peft import WEIGHTS_NAME, read_adapter_dir, write_adapter_dir
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
    BlobCheck,
    CombineResult,
    CompatReport,
    DbStatus,
    FileEntry,
    GcReport,
    ListQuery,
    MergeRecord,
    MergeReport,
    MergeResult,
    PullResult,
    PushResult,
    VerifyReport,
    VersionPage,
    human_bytes,
)

if TYPE_CHECKING:
    from lora_hub.export.exporter import ExporterInfo
    from lora_hub.export.run import ExportResult
    from lora_hub.merge.plan import AdapterInput, MergePlan
    from lora_hub.rank.types import ExtractResult, RankAnalysis, ReduceResult

MERGE_RECORD_FILE = "lorahub_merge.json"
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


MAX_DESCRIPTION = 10_000


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
        self._opened = contextlib.ExitStack()  # local copies of blobs, held until close()

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._opened.close()
        if self._catalog is not None:
            self._catalog.close()
            self._catalog = None

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            if self.settings.server_url:
                raise NotSupportedError(
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

    def _protected(self, inputs: Iterable[Protected] = ()) -> list[Protected]:
        """What no output may be, hold or lie inside: the home, the blob store, the SQLite
        catalog, every registered base's folder, and the command's own inputs."""
        out = [Protected(self.settings.home, "the lora-hub home (LORAHUB_HOME)")]
        if self.store.local_root is not None:
            out.append(Protected(self.store.local_root, "the blob store"))
        db_file = _sqlite_file(self.settings.database_url)
        if db_file is not None:
            out.append(Protected(db_file, "the catalog database"))
        bases = self.catalog.bases.all()
        out += [Protected(Path(b.path), f"the folder of registered base {b.name}") for b in bases if b.path]
        return [*out, *inputs]

    def _partials(self) -> PartialRegistry:
        return PartialRegistry(self.settings.home / "partials")

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
        description = check_description(description)
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
        warnings = list(adapter.warnings)
        if self.catalog.bases.has(str(adapter_name)):
            warnings.append(
                f"a base model is also named {adapter_name}; `lorahub show {adapter_name}` shows the adapter, "
                f"`lorahub base show {adapter_name}` the base"
            )
        model_type = base_info.model_type if base_info else adapter.facts.model_type
        signature = compat.structure_signature(adapter.facts, adapter.layout, model_type)
        digest = manifest_digest(entries)
        existing = self.catalog.adapters.find_by_digest(adapter_name, digest)

        written, repaired = 0, []
        with self.catalog.leases.writing():
            # Blobs already stored are re-hashed and rewritten if damaged: pushing the folder
            # again is how a user repairs a store.
            present = [e for e in entries if self.store.has(e.digest)]
            missing = [e for e in entries if e not in present]
            _check_space(self.store, sum(e.size for e in missing))
            with progress.task("storing", sum(e.size for e in entries)) as advance:
                for entry in entries:
                    n = self.store.put_file(adapter.files[entry.path], entry.digest, advance, repair=True)
                    written += n
                    if n and entry in present:
                        repaired.append(entry.path)
            if existing is not None:
                version, updated = self._apply_to_existing(existing, metric_map, tag_list, description)
                return PushResult(
                    version=version,
                    created=False,
                    bytes_written=written,
                    updated=updated,
                    repaired=repaired,
                    warnings=warnings,
                )
            _faults.checkpoint("push.before_catalog")
            version, created = self.catalog.adapters.add_version(
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
        return PushResult(version=version, created=created, bytes_written=written, repaired=repaired, warnings=warnings)

    def _apply_to_existing(
        self, version: AdapterVersion, metrics: Mapping[str, float], tags: Sequence[str], description: str | None
    ) -> tuple[AdapterVersion, list[str]]:
        """A push of content already stored as ``version``: apply its metrics, tags and description
        to that version, and say what changed."""
        updated = []
        ref = Ref.parse(version.ref)
        changed = {k: v for k, v in metrics.items() if version.metrics.get(k) != v}
        if changed:
            version = self.catalog.adapters.set_metrics(ref, dict(changed))
            updated.append("metric(s) " + ", ".join(f"{k}={v:g}" for k, v in changed.items()))
        for tag in tags:
            if tag not in version.tags:
                version = self.catalog.adapters.tag(ref, tag)
                updated.append(f"tag {tag}")
        if description is not None and description != version.description:
            version = self.catalog.adapters.set_description(ref, description)
            updated.append("description")
        return version, updated

    def pull(
        self,
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
        version = self.show(ref)
        replace = Replace.of(force=force, overwrite=overwrite)
        out = prepare_output(Path(dest), replace=replace, protected=self._protected())
        _check_free_space(out.parent, sum(f.size for f in version.files), what="the adapter")
        written = 0
        details = {"ref": version.ref, "digest": version.digest}
        with (
            staged_output(out, kind="pull", replace=replace, registry=self._partials(), details=details) as tmp,
            progress.task(f"pulling {version.ref}", sum(f.size for f in version.files)) as advance,
        ):
            for entry in version.files:
                target = (tmp / entry.path).resolve()
                if not target.is_relative_to(tmp.resolve()):
                    raise InvalidArgumentError(f"refusing a file path outside the folder: {entry.path!r}")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "wb", buffering=0) as fh:
                    written += self.store.copy_out(entry.digest, fh, advance)
                    os.fsync(fh.fileno())
                _faults.checkpoint("pull.after_file")
        return PullResult(version=version, path=str(out), bytes_written=written)

    def show(self, ref: str) -> AdapterVersion:
        return self.catalog.adapters.get(Ref.parse(ref))

    def search(self, query: ListQuery | None = None, **filters: object) -> VersionPage:
        """The page of versions matching ``query`` (or the same fields as keywords), newest first
        by default, with how many match in all."""
        if query is None:
            query = ListQuery.model_validate(filters)
        elif filters:
            query = query.model_copy(update=filters)
        return self.catalog.adapters.search(query)

    def list_versions(self, query: ListQuery | None = None, **filters: object) -> list[AdapterVersion]:
        """The versions of ``search``'s page."""
        return self.search(query, **filters).items

    def versions(self, name: str) -> list[int]:
        return self.catalog.adapters.versions_of(AdapterName.parse(name))

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        """Point ``tag`` at ``ref``; it moves off the version that had it. ``latest`` is implicit."""
        return self.catalog.adapters.tag(Ref.parse(ref), check_tag(tag))

    def untag(self, ref: str, tag: str) -> AdapterVersion:
        """Remove ``tag`` from the name of ``ref`` (a name, or a reference whose version is ignored)."""
        return self.catalog.adapters.untag(Ref.parse(ref).adapter, check_tag(tag))

    def set_metrics(self, ref: str, metrics: Mapping[str, float], *, remove: Sequence[str] = ()) -> AdapterVersion:
        """Set (overwrite) the given metrics of a version, and delete those in ``remove``."""
        for key in remove:
            check_metric_name(key)
        return self.catalog.adapters.set_metrics(Ref.parse(ref), check_metrics(metrics), remove=remove)

    def remove(self, ref: str) -> AdapterVersion:
        """Remove one version. A bare name is refused: say which version."""
        parsed = Ref.parse(ref)
        if ":" not in ref:
            raise InvalidArgumentError(
                f"say which version of {parsed.adapter} to remove",
                hint=f"e.g. `lorahub rm {parsed.adapter}:1`",
            )
        return self.catalog.adapters.delete_version(parsed)

    # --- base models ---------------------------------------------------------------------------

    def base_add(
        self, path: str | os.PathLike[str], name: str, *, store: bool = False, progress: Progress | None = None
    ) -> BaseAddResult:
        """Fingerprint the HF model folder at ``path`` and register it as ``name``.

        The weights stay where they are unless ``store``, which also copies every file into the
        blob store. Tensor hashes are cached by (path, size, mtime, ctime, inode): re-adding an
        unchanged folder reads no weights.
        """
        progress = progress or NoProgress()
        name = str(AdapterName.parse(name))
        model = read_model_dir(path)
        with progress.task("hashing", model.weight_bytes) as advance:
            digests, hashed = compat.hash_tensors(model, self.catalog.hashes, advance)
        files = [BaseFile(path=rel, size=p.stat().st_size) for rel, p in model.files.items()]
        stored_bytes = 0
        if store:
            files = []
            with self.catalog.leases.writing():
                total = sum(p.stat().st_size for p in model.files.values())
                _check_space(self.store, total)
                with progress.task("storing", total) as advance:
                    for rel, p in model.files.items():
                        digest, size = hash_file(p)
                        stored_bytes += self.store.put_file(p, digest, advance)
                        files.append(BaseFile(path=rel, size=size, digest=digest))
                info, created = self.catalog.bases.add(
                    compat.describe_model(model, digests, name=name, stored=True, files=files)
                )
        else:
            info, created = self.catalog.bases.add(compat.describe_model(model, digests, name=name, files=files))
        self._record_fits_for_base(name, info)
        warnings = []
        if self.catalog.adapters.versions_of(AdapterName.parse(name)):
            warnings.append(
                f"an adapter is also named {name}; `lorahub show {name}` shows the adapter, "
                f"`lorahub base show {name}` the base"
            )
        return BaseAddResult(
            base=info, created=created, hashed_bytes=hashed, stored_bytes=stored_bytes, warnings=warnings
        )

    def base_list(self) -> list[BaseModelInfo]:
        """Every registered base, with ``status``: whether its folder still holds its files."""
        return [b.model_copy(update={"status": _folder_status(b)}) for b in self.catalog.bases.all()]

    def base_show(self, name: str) -> BaseModelInfo:
        info = self.catalog.bases.get(name)
        return info.model_copy(update={"status": _folder_status(info)})

    def base_remove(self, name: str) -> BaseModelInfo:
        """Forget a base (its files stay; stored blobs are freed by ``gc``). Adapters pushed against
        it keep its fingerprint."""
        return self.catalog.bases.remove(name)

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
        old_digests, _ = compat.hash_tensors(old_model, self.catalog.hashes)
        new_digests, _ = compat.hash_tensors(model, self.catalog.hashes)
        diff = compat.weight_diff(pairs, model, old_model, new_digests, old_digests)
        return report.model_copy(update={"diff": diff})

    def _open_base(
        self, spec: str | os.PathLike[str], progress: Progress | None = None
    ) -> tuple[BaseModelInfo, str, ModelDir | None]:
        """A registered base (by name) or a model folder: its description with tensors, a label,
        and its readable weights where they are at hand."""
        text = str(spec)
        if self._is_base_name(text) and self.catalog.bases.has(text):
            info = self.catalog.bases.get(text)
            return info, text, self._base_weights(info)
        if not Path(text).is_dir():
            if self._is_base_name(text):
                raise BaseNotFoundError(text)
            raise InvalidModelError("no such folder, and no registered base by that name", path=text)
        model = read_model_dir(text)
        with (progress or NoProgress()).task("hashing base", model.weight_bytes) as advance:
            digests, _ = compat.hash_tensors(model, self.catalog.hashes, advance)
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
        else from the blob store if they were stored there. ``_why_no_weights`` says why not."""
        model, _ = self._folder_weights(info)
        if model is not None:
            return model
        if info.stored:
            try:
                paths = {f.path: self._local_copy(f.digest) for f in info.files if f.digest}
                model = model_from_files(Path(info.path or "."), paths)
                digests, _ = compat.hash_tensors(model, self.catalog.hashes)
            except (LoraHubError, OSError):
                return None
            if compat.describe_model(model, digests).content_fingerprint == info.content_fingerprint:
                return model
        return None

    def _local_copy(self, digest: str, *, verify: bool = False) -> Path:
        """A local file of the blob, kept at hand until the Hub closes (see ``BlobStore.open_local``)."""
        return self._opened.enter_context(self.store.open_local(digest, verify=verify))

    def _folder_weights(self, info: BaseModelInfo) -> tuple[ModelDir | None, str]:
        """The base's folder if it still holds the registered content, else why it does not."""
        if not info.path or not Path(info.path).is_dir():
            return None, f"its folder {info.path} no longer exists"
        try:
            model = read_model_dir(info.path)
            digests, _ = compat.hash_tensors(model, self.catalog.hashes)
        except (LoraHubError, OSError) as exc:
            return None, f"its folder {info.path} cannot be read ({exc})"
        if compat.describe_model(model, digests).content_fingerprint != info.content_fingerprint:
            return None, f"its folder {info.path} now holds other weights (the content fingerprint changed)"
        return model, ""

    def _why_no_weights(self, info: BaseModelInfo, label: str) -> InvalidModelError:
        _, reason = self._folder_weights(info)
        stored = "its stored copy is incomplete" if info.stored else "it is not stored in the blob store"
        return InvalidModelError(
            f"the weights of this base are not at hand: {reason}, and {stored}",
            path=label,
            hint=f"register the folder again with `lorahub base add DIR --name {label}` (add --store to keep a copy)",
        )

    def _model_by_fingerprint(self, fingerprint: str) -> tuple[ModelDir, BaseModelInfo] | None:
        for info in self.catalog.bases.all():
            if info.content_fingerprint == fingerprint:
                model = self._base_weights(self.catalog.bases.get(info.name or ""))
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
                    digests, _ = compat.hash_tensors(model, self.catalog.hashes)
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
            version, base_model_type = self.catalog.adapters.trained_on(Ref.parse(text))
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
        for signature, version, model_type in self.catalog.bases.signatures_without_fit(name):
            assert version.layout is not None
            side = compat.AdapterSide(
                version.ref, version.facts, version.layout, model_type or version.facts.model_type
            )
            fits[signature] = compat.check(side, info, name).verdict != "incompatible"
        self.catalog.bases.record_fits(name, fits)

    def _record_fits_for_signature(self, signature: str, version: AdapterVersion, model_type: str | None) -> None:
        assert version.layout is not None
        side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type)
        for name in self.catalog.bases.without_fit(signature):
            info = self.catalog.bases.get(name)
            self.catalog.bases.record_fits(name, {signature: compat.check(side, info, name).verdict != "incompatible"})

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
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> MergeResult:
        """Merge ``adapters`` (``ref[@weight]`` or ``folder[@weight]``) into ``base``, writing an HF
        model folder at ``output``: ``W' = W + sum_i w_i * s_i * B_i @ A_i`` for every target.

        Every adapter is checked against the base before anything is written; every changed
        tensor is verified (see ``lora_hub.merge.execute``); the output appears only when complete.
        The same recipe again is served from the catalog (copied, if ``output`` is elsewhere)
        unless ``recompute``. ``output`` follows the rule of ``lora_hub._fs``: never lora-hub's own
        data, a registered base's folder or an input; a non-empty folder only with ``force`` (one
        lora-hub wrote) or ``overwrite`` (any). With ``name``, the output is registered as a base
        with its lineage. ``method`` and ``params`` choose how several adapters combine
        (``lora_hub.merge.methods``; random methods take ``params["seed"]``).
        """
        from lora_hub.merge.plan import open_output, parse_size, plan_merge

        progress = progress or NoProgress()
        out = Path(os.path.abspath(output))
        if name is not None:
            name = str(AdapterName.parse(name))
        if not _DEVICE_NAME.fullmatch(device):
            raise InvalidArgumentError(f"unknown device {device!r}", hint="use auto, cpu or cuda (or cuda:N)")
        size_limit = parse_size(shard_size)
        replace = Replace.of(force=force, overwrite=overwrite)
        protected = self._protected(_input_folders([str(base), *(_split_weight(a)[0] for a in adapters)]))
        # A folder that holds a recorded merge may be this recipe's output, served again as it
        # is; whether it is can be told once the recipe is planned. Anything else is checked now.
        maybe_in_place = (out / MERGE_RECORD_FILE).is_file() and not recompute
        if not maybe_in_place:
            prepare_output(out, replace=replace, protected=protected)
        base_info, base_label, model = self._open_base(base, progress)
        if model is None:
            raise self._why_no_weights(base_info, base_label)
        inputs = [self._merge_input(spec, base_info, base_label) for spec in adapters]
        plan = plan_merge(
            model,
            base_info.content_fingerprint,
            inputs,
            method=method,
            params=dict(params or {}),
            dtype=dtype,
            shard_size=size_limit,
        )
        if name is not None and self.catalog.bases.has(name):
            lineage = self.catalog.bases.get(name, with_tensors=False).lineage or {}
            if lineage.get("recipe_digest") != plan.recipe_digest:
                raise ConflictError(
                    f"base {name} is already registered with other content",
                    hint=f"choose another --name, or `lorahub base rm {name}` first",
                )
        if not recompute:
            reused = self._reuse_merge(plan.recipe_digest, out, name, replace, protected, progress)
            if reused is not None:
                return reused
        out = prepare_output(out, replace=replace, protected=protected)
        extras = sum(model.files[rel].stat().st_size for rel in plan.copy_files)
        _check_free_space(out.parent, _plan_bytes(plan) + extras, what="the merged model")
        details = {"recipe_digest": plan.recipe_digest}
        with staged_output(out, kind="merge", replace=replace, registry=self._partials(), details=details) as tmp:
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
                        adapters=inputs,
                        advance=advance,
                        output=output_files,
                        threads=self.settings.torch_threads,
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
        # The record names the base only once the base is registered under that name.
        record = self.catalog.merges.record(record.model_copy(update={"name": None}))
        if name is not None:
            self._register_merged(out, name, stats.digests, record)
            record = self.catalog.merges.record(record.model_copy(update={"name": name}))
        return MergeResult(
            path=str(out),
            record=record,
            reused=False,
            registered=name,
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
                weights_path=str(folder.files[WEIGHTS_NAME]),
            )
            return item, side, None
        version, base_model_type = self.catalog.adapters.trained_on(Ref.parse(target))
        assert version.layout is not None
        model_type = base_model_type or version.facts.model_type
        side = compat.AdapterSide(version.ref, version.facts, version.layout, model_type, version.base_fingerprint)
        entry = next(f for f in version.files if f.path == WEIGHTS_NAME)
        try:
            path = self._local_copy(entry.digest, verify=True)
        except IntegrityError as exc:
            raise IntegrityError(
                f"the weights of {version.ref} are missing or corrupted in the store ({entry.digest})",
                hint="push the adapter's folder again: the push rewrites damaged blobs",
            ) from exc
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
            protected = self._protected(_input_folders(_split_weight(a)[0] for a in adapters))
            out = prepare_output(Path(output), replace=replace, protected=protected)
        spec = get_method(method)
        checked = spec.check_params(params or {})
        resolved = [self._adapter_input(s) for s in adapters]
        if not resolved:
            raise InvalidArgumentError("name at least one adapter to combine")
        inputs = [item for item, _, _ in resolved]
        combined = combine_adapters(inputs, spec, checked, rank=rank, dtype=dtype, model_types=_model_types(resolved))
        lineage = {
            "kind": "combine",
            "method": method,
            "params": checked,
            "rank": rank,
            "inputs": [{"ref": a.label, "digest": a.digest, "weight": a.weight} for a in inputs],
            "errors": combined.errors,
            "versions": _library_versions(),
        }
        bases = {base for _, _, base in resolved}
        base = next(iter(bases)) if len(bases) == 1 else None
        with tempfile.TemporaryDirectory(prefix="lorahub-combine-") as scratch:
            folder = write_adapter_dir(Path(scratch), combined.tensors, combined.config)
            pushed = self.push(folder, name, description=description, tags=tags, base=base, lineage=lineage,
                               progress=progress)  # fmt: skip
            if out is not None:
                details = {"ref": pushed.version.ref, "digest": pushed.version.digest}
                with staged_output(out, kind="combine", replace=replace, registry=self._partials(),
                                   details=details) as tmp:  # fmt: skip
                    _copy_tree(folder, tmp, NoProgress())
        errors = list(combined.errors.values())
        return CombineResult(
            push=pushed,
            method=method,
            ranks=combined.ranks,
            errors=combined.errors,
            max_error=max(errors),
            mean_error=sum(errors) / len(errors),
        )

    def _reuse_merge(
        self,
        recipe_digest: str,
        out: Path,
        name: str | None,
        replace: Replace,
        protected: Sequence[Protected],
        progress: Progress,
    ) -> MergeResult | None:
        """The recorded output of this recipe, if it still holds what was recorded: served where it
        is when ``out`` is that folder, else copied to ``out`` (under the output rule)."""
        record = self.catalog.merges.find(recipe_digest)
        if record is None or not Path(record.output_path).is_dir():
            return None
        source = Path(record.output_path)
        try:
            model = read_model_dir(source)
            digests, _ = compat.hash_tensors(model, self.catalog.hashes)
        except LoraHubError:
            return None
        if compat.describe_model(model, digests).content_fingerprint != record.content_fingerprint:
            return None
        if source.resolve() != out.resolve():
            out = prepare_output(out, replace=replace, protected=protected)
            details = {"recipe_digest": recipe_digest, "copied_from": str(source)}
            with staged_output(out, kind="merge", replace=replace, registry=self._partials(), details=details) as tmp:
                _copy_tree(source, tmp, progress)
        if name is not None and (name != record.name or not self.catalog.bases.has(name)):
            self._register_merged(out, name, digests, record)
            record = self.catalog.merges.record(record.model_copy(update={"name": name}))
        return MergeResult(path=str(out), record=record, reused=True, registered=name, peak_rss_bytes=_peak_rss())

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
        self.catalog.bases.add(info)
        self._record_fits_for_base(name, info)

    def show_any(self, ref: str) -> AdapterVersion | BaseModelInfo:
        """An adapter version, or else a base (merged models are bases with a lineage)."""
        try:
            return self.show(ref)
        except NotFoundError:
            if ":" not in ref and self._is_base_name(ref) and self.catalog.bases.has(ref):
                info = self.catalog.bases.get(ref, with_tensors=False)
                return info.model_copy(update={"status": _folder_status(info)})
            raise

    def name_clash(self, ref: str) -> str | None:
        """A note when ``ref`` names both an adapter and a base (``show`` shows the adapter)."""
        name = ref.split(":", 1)[0]
        if self._is_base_name(name) and self.catalog.bases.has(name):
            return f"a base model is also named {name}: see `lorahub base show {name}`"
        return None

    # --- choosing the rank (lora_hub.rank; orchestration in lora_hub.core.ranking) ------------

    def analyze(
        self,
        adapter: str,
        *,
        base: str | None = None,
        energies: Sequence[float] = (0.9, 0.95, 0.99),
        progress: Progress | None = None,
    ) -> RankAnalysis:
        """Every module's exact singular values of ``s * B @ A``, the energy kept at each rank, the
        rank each energy target needs, effective and stable rank (and ``||dW|| / ||W||`` with
        ``base``), with a uniform rank and a ``rank_pattern`` suggested per target. See
        ``lora_hub.rank.spectrum``."""
        from lora_hub.core import ranking

        return ranking.analyze(self, adapter, base=base, energies=energies, progress=progress)

    def reduce(
        self,
        adapter: str,
        name: str,
        *,
        rank: int | None = None,
        energy: float | None = None,
        dtype: str = "auto",
        output: str | os.PathLike[str] | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> ReduceResult:
        """Truncate ``adapter`` to its optimal rank-``rank`` update (Eckart-Young), or per module to
        the rank that keeps ``energy``, and push it as ``name`` with its lineage and the exact error
        per module. ``rank >= r`` is lossless. See ``lora_hub.rank.reduce``."""
        from lora_hub.core import ranking

        return ranking.reduce(self, adapter, name, rank=rank, energy=energy, dtype=dtype, output=output,
                              description=description, tags=tags, progress=progress)  # fmt: skip

    def extract(
        self,
        base: str,
        tuned: str,
        name: str,
        *,
        rank: int | None = None,
        energy: float | None = None,
        targets: Sequence[str] | None = None,
        modules_to_save: Sequence[str] = (),
        seed: int = 0,
        device: str = "auto",
        dtype: str = "float32",
        output: str | os.PathLike[str] | None = None,
        description: str | None = None,
        tags: Sequence[str] = (),
        progress: Progress | None = None,
    ) -> ExtractResult:
        """A LoRA adapter of ``base`` from the dense fine-tune ``tuned`` (``W_tuned - W_base`` per
        linear module, truncated by SVD), streamed tensor by tensor, pushed as ``name`` against
        ``base`` with the error per module. See ``lora_hub.rank.extract``."""
        from lora_hub.core import ranking

        return ranking.extract(self, base, tuned, name, rank=rank, energy=energy, targets=targets,
                               modules_to_save=modules_to_save, seed=seed, device=device, dtype=dtype, output=output,
                               description=description, tags=tags, progress=progress)  # fmt: skip

    # --- export -------------------------------------------------------------------------------

    def export(
        self,
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
        protected = self._protected(_input_folders([str(model)]))
        out = prepare_output(Path(output), replace=Replace.of(force=force, overwrite=overwrite), protected=protected)
        info, label, weights = self._open_base(model, progress)
        if weights is None:
            raise self._why_no_weights(info, label)
        in_place = all(p == weights.root / rel for rel, p in weights.files.items())
        staged = linked_folder(weights.files, self.settings.home / "export-sources")
        with contextlib.nullcontext(weights.root) if in_place else staged as folder:
            return export_model(folder, out, format, options, source_fingerprint=info.content_fingerprint, force=force,
                                overwrite=overwrite, protected=protected, registry=self._partials(),
                                progress=progress)  # fmt: skip

    def exporters(self) -> list[ExporterInfo]:
        """Every export format, and whether (or why not) it works on this machine."""
        from lora_hub.export.run import exporter_infos

        return exporter_infos()

    # --- maintenance -------------------------------------------------------------------------

    def gc(self, *, dry_run: bool = False, wait_s: float = 600.0) -> GcReport:
        """Delete blobs that no version references, temporary files of dead writers, and the hidden
        partial output folders of pulls and merges that were killed. Waits up to ``wait_s`` for
        running pushes to finish (new ones wait for gc), then raises ``ConflictError``."""
        with self.catalog.leases.collecting(wait_s=wait_s):
            referenced = self.catalog.referenced_digests()
            removed = freed = 0
            for digest, size in list(self.store.digests()):
                if digest in referenced:
                    continue
                removed += 1
                freed += size if dry_run else self.store.delete(digest)
            temps = self.store.remove_stale_temp(dry_run=dry_run)
        partials = self._partials().clean(dry_run=dry_run)
        return GcReport(
            blobs_removed=removed,
            bytes_freed=freed,
            temp_files_removed=temps,
            partials_removed=partials,
            dry_run=dry_run,
        )

    def verify(
        self, ref: str | None = None, *, everything: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        """Re-read every blob of ``ref`` (one version), or of every version and stored base with
        ``everything``, and check it against its digest. Damaged blobs are reported, not changed:
        pushing the folder again rewrites them."""
        if (ref is None) == (not everything):
            raise InvalidArgumentError("say what to verify: a reference, or --all")
        if ref is not None:
            version = self.show(ref)
            users = {f.digest: [version.ref] for f in version.files}
            sizes = {f.digest: f.size for f in version.files}
        else:
            users, sizes = self.catalog.blob_users()
        problems = []
        checked = 0
        with (progress or NoProgress()).task("verifying", sum(sizes.values())) as advance:
            for digest in sorted(users):
                state, size = self.store.check(digest, advance)
                checked += size or 0
                if state != "ok":
                    problems.append(BlobCheck(digest=digest, size=size, state=state, used_by=users[digest]))
        return VerifyReport(blobs_checked=len(users), bytes_checked=checked, problems=problems)

    def upgrade_db(self) -> DbStatus:
        """Apply catalog migrations (also done on first use); return the catalog and its revision."""
        from lora_hub.catalog.db import make_url_safe

        catalog = Catalog(self.settings.database_url, migrate=False)
        try:
            revision = catalog.db.upgrade()
        finally:
            catalog.close()
        return DbStatus(database=make_url_safe(self.settings.database_url), revision=revision or "none")


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
    from lora_hub.formats.dtypes import ITEMSIZE as DTYPE_SIZES

    return sum(math.prod(t.shape) * DTYPE_SIZES[t.dtype_out] for t in plan.tensors)


def _check_free_space(folder: Path, needed: int, *, what: str) -> None:
    """Refuse an output that cannot fit, before any work rather than after most of it."""
    while not folder.exists() and folder != folder.parent:  # the output's parents are made later
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StoreError(
            f"not enough free space in {folder}: {what} needs {human_bytes(needed)}, {human_bytes(free)} are free",
            hint="free some space, or write the output (-o) to another disk",
        )


def _check_space(store: BlobStore, needed: int) -> None:
    free = store.free_bytes()
    if free is not None and free < needed:
        raise StoreError(
            f"not enough free space for the blob store ({store!r}): {human_bytes(needed)} to write, "
            f"{human_bytes(free)} free",
            hint="free some space there, or run `lorahub gc` to remove unreferenced blobs",
        )


def _folder_status(info: BaseModelInfo) -> str:
    """``ok`` when the base's folder holds every registered file at its registered size, ``missing``
    when the folder is gone, ``changed`` otherwise (sizes only: hashes are checked when used)."""
    if not info.path or not Path(info.path).is_dir():
        return "missing"
    for f in info.files:
        p = Path(info.path) / f.path
        if not p.is_file() or p.stat().st_size != f.size:
            return "changed"
    return "ok"


def _sqlite_file(url: str) -> Path | None:
    from lora_hub.catalog.db import parse_url

    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return Path(parsed.database)
    return None


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
        error_kind="fraction_of_bound",
        checks=stats.checks,
        rows_checked=stats.rows_checked,
        entries_checked=stats.entries_checked,
        ambiguous=stats.ambiguous,
        thresholds=stats.thresholds,
        not_verified=stats.not_verified,
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


def _copy_tree(source: Path, dest: Path, progress: Progress) -> None:
    """Copy the files of ``source`` into the empty folder ``dest`` (lora-hub's marker excepted)."""
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and p.name != OUTPUT_MARK]
    with progress.task("copying the recorded merge", sum(p.stat().st_size for p in files)) as advance:
        for p in files:
            target = dest / p.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            advance(p.stat().st_size)


def _model_types(resolved: Sequence[tuple[AdapterInput, compat.AdapterSide, str | None]]) -> list[str | None]:
    return [side.model_type for _, side, _ in resolved]


def _input_folders(specs: Iterable[str]) -> list[Protected]:
    """The folders among a command's inputs (a base or adapter given as a path)."""
    return [Protected(Path(spec), "one of this command's inputs") for spec in specs if Path(spec).is_dir()]
