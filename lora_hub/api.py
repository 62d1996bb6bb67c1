"""The core API: ``Hub``, and the ``HubAPI`` protocol it implements.

``Hub`` is a facade: each public method is one call into a capability module of ``lora_hub.core``
(adapters, bases, fits, merging, combining, ranking, exporting, maintenance), which works on a
``lora_hub._context.Context`` (settings, catalog, blob store). Front ends (the CLI, a future HTTP
service) parse input, call a ``HubAPI``, and format output; ``open_hub(settings)`` picks the
implementation: the local ``Hub`` today, a remote client once a lora-hub server exists.

push:  formats.peft (parse + validate) -> hash -> store.put_file (atomic) -> catalog.adapters.add_version
pull:  catalog.adapters.get -> store.copy_out (digest checked) into a staged folder -> rename into place
merge: compat.check -> merge.plan -> merge.execute (stream tensors) -> writer -> catalog (lineage)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from lora_hub._context import Context
from lora_hub.catalog.tokens import CreatedToken, TokenInfo
from lora_hub.core import (
    adapters,
    bases,
    combining,
    exporting,
    fits,
    lineage,
    maintenance,
    merging,
    ranking,
    tokens,
    transfer,
)
from lora_hub.core.bases import BasePullResult
from lora_hub.errors import NotSupportedError
from lora_hub.progress import Progress
from lora_hub.settings import Settings
from lora_hub.types import (
    AdapterVersion,
    BaseAddResult,
    BaseModelInfo,
    CombineResult,
    CompatReport,
    DbStatus,
    FileEntry,
    GcReport,
    JobInfo,
    LineageNode,
    ListQuery,
    MergeRecord,
    MergeResult,
    PullResult,
    PushResult,
    VerifyReport,
    VersionPage,
)

if TYPE_CHECKING:
    from lora_hub.core.jobs import JobRequest, RegisteredNames
    from lora_hub.core.pipeline import PipelineResult, PipelineSpec
    from lora_hub.export.exporter import ExporterInfo
    from lora_hub.export.run import ExportResult
    from lora_hub.hubsync.types import HubExportResult, HubImportResult, HubSyncResult
    from lora_hub.jobs.follow import JobResult
    from lora_hub.jobs.inprocess import InProcessWorker
    from lora_hub.rank.types import ExtractResult, RankAnalysis, ReduceResult
    from lora_hub.types import BaseFile

HubOp = Literal["import", "export", "sync"]  # the `lorahub hub` operations a job runs

__all__ = ["CreatedToken", "Hub", "HubAPI", "ServingHub", "TokenInfo", "open_hub"]

# The result types of the capabilities whose packages load torch, importable from here without
# loading it at ``import lora_hub.api`` (front ends name them only in annotations).
_LAZY_TYPES = {
    "PipelineResult": "lora_hub.core.pipeline",
    "PipelineSpec": "lora_hub.core.pipeline",
    "ExporterInfo": "lora_hub.export.exporter",
    "ExportResult": "lora_hub.export.run",
    "ExtractResult": "lora_hub.rank.types",
    "RankAnalysis": "lora_hub.rank.types",
    "ReduceResult": "lora_hub.rank.types",
    "HubImportResult": "lora_hub.hubsync.types",
    "HubExportResult": "lora_hub.hubsync.types",
    "HubSyncResult": "lora_hub.hubsync.types",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_TYPES:
        import importlib

        return getattr(importlib.import_module(_LAZY_TYPES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class HubAPI(Protocol):
    """The public surface of lora-hub, as the CLI (and a service, and a remote client) see it.
    ``Hub`` documents each method."""

    def close(self) -> None: ...

    def __enter__(self) -> HubAPI: ...

    def __exit__(self, *exc: object) -> None: ...

    def merge_record(self, recipe_digest: str) -> MergeRecord | None: ...

    def methods(self) -> list[dict[str, Any]]: ...

    def lineage(self, ref: str) -> LineageNode: ...

    def run_pipeline(
        self,
        pipeline: PipelineSpec | str | os.PathLike[str],
        *,
        device: str = "auto",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> PipelineResult: ...

    def merge_pipeline(
        self,
        base: str | os.PathLike[str],
        adapters: Sequence[str],
        output: str | os.PathLike[str],
        *,
        formats: Sequence[str],
        name: str | None = None,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        dtype: str = "auto",
        shard_size: str | int = "5GB",
    ) -> PipelineSpec: ...

    def submit_pipeline(
        self,
        pipeline: PipelineSpec | str | os.PathLike[str],
        *,
        device: str = "auto",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
    ) -> JobInfo: ...

    def submit_export(
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
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
    ) -> JobInfo: ...

    def submit_hub(self, op: HubOp, **arguments: Any) -> JobInfo: ...

    def job(self, job_id: str) -> JobInfo: ...

    def jobs(self, *, state: str | None = None, limit: int = 50) -> list[JobInfo]: ...

    def cancel_job(self, job_id: str) -> JobInfo: ...

    def follow_job(
        self, job_id: str, progress: Progress | None = None, *, timeout_s: float | None = None
    ) -> JobInfo: ...

    def job_result(self, job: JobInfo) -> JobResult: ...

    def run_worker(self, *, queue: str | None = None, concurrency: int = 1, wait: bool = True) -> None: ...

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
    ) -> PushResult: ...

    def pull(
        self,
        ref: str,
        dest: str | os.PathLike[str],
        *,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> PullResult: ...

    def show(self, ref: str) -> AdapterVersion: ...

    def search(self, query: ListQuery | None = None, **filters: object) -> VersionPage: ...

    def list_versions(self, query: ListQuery | None = None, **filters: object) -> list[AdapterVersion]: ...

    def versions(self, name: str) -> list[int]: ...

    def tag(self, ref: str, tag: str) -> AdapterVersion: ...

    def untag(self, ref: str, tag: str) -> AdapterVersion: ...

    def set_metrics(self, ref: str, metrics: Mapping[str, float], *, remove: Sequence[str] = ()) -> AdapterVersion: ...

    def remove(self, ref: str) -> AdapterVersion: ...

    def name_clash(self, ref: str) -> str | None: ...

    def base_add(
        self, path: str | os.PathLike[str], name: str, *, store: bool = False, progress: Progress | None = None
    ) -> BaseAddResult: ...

    def base_list(self) -> list[BaseModelInfo]: ...

    def base_show(self, name: str) -> BaseModelInfo: ...

    def base_remove(self, name: str) -> BaseModelInfo: ...

    def base_pull(
        self,
        name: str,
        dest: str | os.PathLike[str],
        *,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> BasePullResult: ...

    def show_any(self, ref: str) -> AdapterVersion | BaseModelInfo: ...

    def validate(self, adapter: str | os.PathLike[str], base: str | os.PathLike[str]) -> CompatReport: ...

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
    ) -> MergeResult: ...

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
    ) -> CombineResult: ...

    def analyze(
        self,
        adapter: str,
        *,
        base: str | None = None,
        energies: Sequence[float] = (0.9, 0.95, 0.99),
        plot: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> RankAnalysis: ...

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
    ) -> ReduceResult: ...

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
    ) -> ExtractResult: ...

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
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> ExportResult: ...

    def exporters(self) -> list[ExporterInfo]: ...

    def gc(self, *, dry_run: bool = False, wait_s: float = 600.0) -> GcReport: ...

    def verify(
        self, ref: str | None = None, *, everything: bool = False, progress: Progress | None = None
    ) -> VerifyReport: ...

    def upgrade_db(self) -> DbStatus: ...

    def hub_import(
        self,
        repo: str,
        name: str,
        *,
        base: str | None = None,
        tags: Sequence[str] = (),
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubImportResult: ...

    def hub_export(
        self,
        ref: str,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool = False,
        create: bool = False,
        dry_run: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubExportResult: ...

    def hub_sync(
        self,
        namespace: str,
        org: str,
        *,
        pull: bool = False,
        dry_run: bool = False,
        private: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubSyncResult: ...


class Hub:
    """The registry on this machine. ``Hub()`` reads ``LORAHUB_*`` from the environment; arguments
    override it. The catalog is opened (and migrated) on first use, so creating a ``Hub`` is free.
    Use it as a context manager, or call ``close()``."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        database_url: str | None = None,
        store_url: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self._ctx = Context(settings or Settings.from_env(home=home, database_url=database_url, store_url=store_url))

    @property
    def settings(self) -> Settings:
        return self._ctx.settings

    def __enter__(self) -> Hub:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._ctx.close()

    def merge_record(self, recipe_digest: str) -> MergeRecord | None:
        """The catalog's record of a merge by its recipe digest, if there is one."""
        return merging.merge_record(self._ctx, recipe_digest)

    def methods(self) -> list[dict[str, Any]]:
        """Every merge/combine method with its parameters (``Method.describe``)."""
        return merging.methods()

    def lineage(self, ref: str) -> LineageNode:
        """What was made from ``ref`` (an adapter reference or a registered base), as a tree:
        adapters combined, reduced or extracted from it, merges that used it, their exports, and
        merges built on those (``lora_hub.core.lineage``)."""
        return lineage.lineage(self._ctx, ref)

    def run_pipeline(
        self,
        pipeline: PipelineSpec | str | os.PathLike[str],
        *,
        device: str = "auto",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> PipelineResult:
        """Run a merge-and-export pipeline (a ``PipelineSpec``, or the path of its YAML file):
        merge, register, export; every step is served from its record when unchanged, so an
        unchanged pipeline does no work (``lora_hub.core.pipeline``)."""
        from lora_hub.core import pipeline as pipelines  # imports the export package: only when used

        spec = pipeline if isinstance(pipeline, pipelines.PipelineSpec) else pipelines.load(pipeline)
        return pipelines.run(self._ctx, spec, device=device, recompute=recompute, force=force, overwrite=overwrite,
                             progress=progress)  # fmt: skip

    def merge_pipeline(
        self,
        base: str | os.PathLike[str],
        adapters: Sequence[str],
        output: str | os.PathLike[str],
        *,
        formats: Sequence[str],
        name: str | None = None,
        method: str = "linear",
        params: Mapping[str, Any] | None = None,
        dtype: str = "auto",
        shard_size: str | int = "5GB",
    ) -> PipelineSpec:
        """The pipeline of ``lorahub merge ... --export FORMAT,...`` (the merge, then one export per
        format at ``<output>-<format>``), to give to ``run_pipeline``."""
        from lora_hub.core import pipeline as pipelines

        return pipelines.merge_spec(str(base), adapters, output, formats=formats, name=name, method=method,
                                    params=dict(params or {}), dtype=dtype, shard_size=shard_size)  # fmt: skip

    # --- jobs (lora_hub.core.jobs; PostgreSQL catalogs) --------------------------------------------------

    def submit_pipeline(
        self,
        pipeline: PipelineSpec | str | os.PathLike[str],
        *,
        device: str = "auto",
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
    ) -> JobInfo:
        """Hand a pipeline (or a plain merge: a pipeline without exports) to the workers, after
        the checks ``run_pipeline`` makes first; an identical active request is joined."""
        from lora_hub.core import jobs as job_core

        request = job_core.pipeline_request(pipeline, device=device, recompute=recompute, force=force,
                                            overwrite=overwrite)  # fmt: skip
        return job_core.submit(self._ctx, request)

    def submit_export(
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
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
    ) -> JobInfo:
        """Hand an export (``export``'s arguments) to the workers."""
        from lora_hub.core import jobs as job_core

        request = job_core.export_request(model, output, format, dtype=dtype, device=device, max_batch=max_batch,
                                          max_seq=max_seq, opset=opset, with_cache=with_cache, recompute=recompute,
                                          force=force, overwrite=overwrite)  # fmt: skip
        return job_core.submit(self._ctx, request)

    def submit_hub(self, op: HubOp, **arguments: Any) -> JobInfo:
        """Hand ``lorahub hub OP`` (``import``: repo, name, base, tags; ``export``: name (the ref),
        repo, revision, private, create, dry_run; ``sync``: namespace, repo (the organisation),
        pull, private, dry_run) to the workers, which use their own ``HF_ENDPOINT`` and ``HF_TOKEN``."""
        from lora_hub.core import jobs as job_core

        return job_core.submit(self._ctx, job_core.hub_request(op, **arguments))

    def job(self, job_id: str) -> JobInfo:
        return self._ctx.catalog.jobs.get(job_id)

    def jobs(self, *, state: str | None = None, limit: int = 50) -> list[JobInfo]:
        """Jobs, newest first."""
        return self._ctx.catalog.jobs.recent(state=state, limit=limit)

    def cancel_job(self, job_id: str) -> JobInfo:
        """Cancel a queued job; ask a running one to stop (at its next progress report)."""
        from lora_hub.core import jobs as job_core

        return job_core.cancel(self._ctx, job_id)

    def follow_job(self, job_id: str, progress: Progress | None = None, *, timeout_s: float | None = None) -> JobInfo:
        """Wait for the job, showing its progress; the job as it ended (or after ``timeout_s``)."""
        from lora_hub.core import jobs as job_core

        return job_core.follow(self._ctx, job_id, progress, timeout_s=timeout_s)

    def job_result(self, job: JobInfo) -> JobResult:
        """The result of a succeeded job as the local command returns it; for a failed or
        cancelled one, raises the error the local command would have raised."""
        from lora_hub.jobs.follow import result_of

        return result_of(job)

    def run_worker(self, *, queue: str | None = None, concurrency: int = 1, wait: bool = True) -> None:
        """Run jobs of ``queue`` (default: gpu with CUDA, else cpu; both take auto-device jobs)
        until stopped, or until none is left (``wait=False``)."""
        from lora_hub.jobs import worker

        worker.run_worker(self._ctx.settings, queues=worker.default_queues(queue), concurrency=concurrency, wait=wait)

    # --- adapters ------------------------------------------------------------------------------------
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
        return adapters.push(
            self._ctx,
            path,
            name,
            metrics=metrics,
            tags=tags,
            description=description,
            base=base,
            lineage=lineage,
            progress=progress,
        )

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
        return adapters.pull(self._ctx, ref, dest, force=force, overwrite=overwrite, progress=progress)

    def show(self, ref: str) -> AdapterVersion:
        return adapters.show(self._ctx, ref)

    def search(self, query: ListQuery | None = None, **filters: object) -> VersionPage:
        """The page of versions matching ``query`` (or the same fields as keywords), newest first
        by default, with how many match in all."""
        return adapters.search(self._ctx, query, **filters)

    def list_versions(self, query: ListQuery | None = None, **filters: object) -> list[AdapterVersion]:
        """The versions of ``search``'s page."""
        return adapters.list_versions(self._ctx, query, **filters)

    def versions(self, name: str) -> list[int]:
        return adapters.versions(self._ctx, name)

    def tag(self, ref: str, tag: str) -> AdapterVersion:
        """Point ``tag`` at ``ref``; it moves off the version that had it. ``latest`` is implicit."""
        return adapters.tag(self._ctx, ref, tag)

    def untag(self, ref: str, tag: str) -> AdapterVersion:
        """Remove ``tag`` from the name of ``ref`` (a name, or a reference whose version is ignored)."""
        return adapters.untag(self._ctx, ref, tag)

    def set_metrics(self, ref: str, metrics: Mapping[str, float], *, remove: Sequence[str] = ()) -> AdapterVersion:
        """Set (overwrite) the given metrics of a version, and delete those in ``remove``."""
        return adapters.set_metrics(self._ctx, ref, metrics, remove=remove)

    def remove(self, ref: str) -> AdapterVersion:
        """Remove one version. A bare name is refused: say which version."""
        return adapters.remove(self._ctx, ref)

    def name_clash(self, ref: str) -> str | None:
        """A note when ``ref`` names both an adapter and a base (``show`` shows the adapter)."""
        return adapters.name_clash(self._ctx, ref)

    # --- bases ---------------------------------------------------------------------------------------
    def base_add(
        self, path: str | os.PathLike[str], name: str, *, store: bool = False, progress: Progress | None = None
    ) -> BaseAddResult:
        """Fingerprint the HF model folder at ``path`` and register it as ``name``.

        The weights stay where they are unless ``store``, which also copies every file into the
        blob store. Tensor hashes are cached by (path, size, mtime, ctime, inode): re-adding an
        unchanged folder reads no weights.
        """
        return bases.add(self._ctx, path, name, store=store, progress=progress)

    def base_list(self) -> list[BaseModelInfo]:
        """Every registered base, with ``status``: whether its folder still holds its files."""
        return bases.list_bases(self._ctx)

    def base_show(self, name: str) -> BaseModelInfo:
        return bases.show_base(self._ctx, name)

    def base_remove(self, name: str) -> BaseModelInfo:
        """Forget a base (its files stay; stored blobs are freed by ``gc``). Adapters pushed against
        it keep its fingerprint."""
        return bases.remove_base(self._ctx, name)

    def base_pull(
        self,
        name: str,
        dest: str | os.PathLike[str],
        *,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> BasePullResult:
        """Write the stored base ``name`` to ``dest`` as an HF model folder, every file checked
        against its digest, atomically; ``dest`` follows the output rule (see ``pull``)."""
        return bases.pull(self._ctx, name, dest, force=force, overwrite=overwrite, progress=progress)

    def show_any(self, ref: str) -> AdapterVersion | BaseModelInfo:
        """An adapter version, or else a base (merged models are bases with a lineage)."""
        return bases.show_any(self._ctx, ref)

    # --- fits ----------------------------------------------------------------------------------------
    def validate(self, adapter: str | os.PathLike[str], base: str | os.PathLike[str]) -> CompatReport:
        """Does ``adapter`` (a reference or a PEFT folder) fit ``base`` (a registered base or an HF
        model folder)? See ``lora_hub.compat`` for the three verdicts."""
        return fits.validate(self._ctx, adapter, base)

    # --- merging -------------------------------------------------------------------------------------
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
        return merging.merge(
            self._ctx,
            base,
            adapters,
            output,
            name=name,
            method=method,
            params=params,
            dtype=dtype,
            device=device,
            shard_size=shard_size,
            recompute=recompute,
            force=force,
            overwrite=overwrite,
            progress=progress,
        )

    # --- combining -----------------------------------------------------------------------------------
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
        return combining.combine(
            self._ctx,
            adapters,
            name,
            method=method,
            params=params,
            rank=rank,
            dtype=dtype,
            output=output,
            force=force,
            overwrite=overwrite,
            description=description,
            tags=tags,
            progress=progress,
        )

    # --- ranking -------------------------------------------------------------------------------------
    def analyze(
        self,
        adapter: str,
        *,
        base: str | None = None,
        energies: Sequence[float] = (0.9, 0.95, 0.99),
        plot: str | os.PathLike[str] | None = None,
        progress: Progress | None = None,
    ) -> RankAnalysis:
        """Every module's exact singular values of ``s * B @ A``, the energy kept at each rank, the
        rank each energy target needs, effective and stable rank (and ``||dW|| / ||W||`` with
        ``base``), with a uniform rank and a ``rank_pattern`` suggested per target. See
        ``lora_hub.rank.spectrum``."""
        return ranking.analyze(self._ctx, adapter, base=base, energies=energies, plot=plot, progress=progress)

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
        return ranking.reduce(
            self._ctx,
            adapter,
            name,
            rank=rank,
            energy=energy,
            dtype=dtype,
            output=output,
            description=description,
            tags=tags,
            progress=progress,
        )

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
        return ranking.extract(
            self._ctx,
            base,
            tuned,
            name,
            rank=rank,
            energy=energy,
            targets=targets,
            modules_to_save=modules_to_save,
            seed=seed,
            device=device,
            dtype=dtype,
            output=output,
            description=description,
            tags=tags,
            progress=progress,
        )

    # --- exporting -----------------------------------------------------------------------------------
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
        recompute: bool = False,
        force: bool = False,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> ExportResult:
        """Export ``model`` (a registered base, merged or not, or an HF model folder) to ``format``
        at ``output``, checked against the eager model by the parity gate (``lora_hub.export``).

        The export is recorded in the catalog by its key (the source's content fingerprint, format,
        resolved options, library versions and target); the same key again is served from the
        record, after checking the artifact's digests, unless ``recompute``. ``output`` follows the
        rule of ``lora_hub._fs`` (``force``: replace an earlier lora-hub output; ``overwrite``:
        replace any folder), checked before the base is read."""
        return exporting.export(
            self._ctx,
            model,
            output,
            format,
            dtype=dtype,
            device=device,
            max_batch=max_batch,
            max_seq=max_seq,
            opset=opset,
            with_cache=with_cache,
            recompute=recompute,
            force=force,
            overwrite=overwrite,
            progress=progress,
        )

    def exporters(self) -> list[ExporterInfo]:
        """Every export format, and whether (or why not) it works on this machine."""
        return exporting.exporters(self._ctx)

    # --- maintenance ---------------------------------------------------------------------------------
    def gc(self, *, dry_run: bool = False, wait_s: float = 600.0) -> GcReport:
        """Delete blobs that no version references, temporary files of dead writers, and the hidden
        partial output folders of pulls and merges that were killed. Waits up to ``wait_s`` for
        running pushes to finish (new ones wait for gc), then raises ``ConflictError``."""
        return maintenance.gc(self._ctx, dry_run=dry_run, wait_s=wait_s)

    def verify(
        self, ref: str | None = None, *, everything: bool = False, progress: Progress | None = None
    ) -> VerifyReport:
        """Re-read every blob of ``ref`` (one version), or of every version and stored base with
        ``everything``, and check it against its digest. Damaged blobs are reported, not changed:
        pushing the folder again rewrites them."""
        return maintenance.verify(self._ctx, ref, everything=everything, progress=progress)

    def upgrade_db(self) -> DbStatus:
        """Apply catalog migrations (also done on first use); return the catalog and its revision."""
        return maintenance.upgrade_db(self._ctx)

    # --- the Hugging Face Hub ------------------------------------------------------------------------
    def hub_import(
        self,
        repo: str,
        name: str,
        *,
        base: str | None = None,
        tags: Sequence[str] = (),
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubImportResult:
        """Import the PEFT adapter repo ``repo`` (``REPO_ID[@REVISION]``) as the next version of
        ``name``, pinned to the commit the revision names, every byte checked against the Hub's
        hashes, through ``push``'s validation; the same content again creates and fetches nothing
        (``lora_hub.core.hubsync``). ``endpoint``/``token`` default to ``HF_ENDPOINT``/``HF_TOKEN``."""
        from lora_hub.core import hubsync  # imports huggingface_hub: only when used

        return hubsync.import_adapter(self._ctx, repo, name, base=base, tags=tags, endpoint=endpoint, token=token,
                                      progress=progress)  # fmt: skip

    def hub_export(
        self,
        ref: str,
        repo_id: str,
        *,
        revision: str | None = None,
        private: bool = False,
        create: bool = False,
        dry_run: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubExportResult:
        """Export an adapter version or a registered (merged) base to the Hub repo ``repo_id`` in one
        commit guarded by ``parent_commit``, with a generated model card; unchanged files are not
        sent, and when nothing differs nothing is written (``lora_hub.core.hubsync``). Files an
        earlier export wrote that this one lacks are removed in the same commit, unless someone
        changed them since. ``dry_run`` reads only and returns the plan (``planned``)."""
        from lora_hub.core import hubsync

        return hubsync.export(self._ctx, ref, repo_id, revision=revision, private=private, create=create,
                              dry_run=dry_run, endpoint=endpoint, token=token, progress=progress)  # fmt: skip

    def hub_sync(
        self,
        namespace: str,
        org: str,
        *,
        pull: bool = False,
        dry_run: bool = False,
        private: bool = False,
        endpoint: str | None = None,
        token: str | None = None,
        progress: Progress | None = None,
    ) -> HubSyncResult:
        """Mirror the namespace ``namespace`` to the Hub organisation ``org`` (the latest version of
        each adapter to ``ORG/NAME``), or with ``pull`` import ``ORG``'s adapter repos into it; the
        plan is made from reads alone, and ``dry_run`` returns it (``lora_hub.core.hubsync.sync``).
        Every step is a ``hub_export`` or ``hub_import``, so a second run changes nothing."""
        from lora_hub.core import hubsync

        return hubsync.sync(self._ctx, namespace, org, pull=pull, dry_run=dry_run, private=private,
                            endpoint=endpoint, token=token, progress=progress)  # fmt: skip


class ServingHub(Hub):
    """The local ``Hub`` plus what ``lorahub serve`` needs and no client offers (so not part of
    ``HubAPI``): API tokens, and content-addressed transfer (``lora_hub.core.transfer``)."""

    def __enter__(self) -> ServingHub:
        return self

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
            self._worker = None
        super().close()

    # --- jobs (lora_hub.core.jobs) ------------------------------------------------------------------

    _worker: InProcessWorker | None = None

    def _run_here(self) -> Callable[[str], None] | None:
        """On SQLite the server runs jobs itself, in one thread (no queue, one machine)."""
        if not self._ctx.catalog.db.is_sqlite:
            return None
        if self._worker is None:
            from lora_hub.jobs.inprocess import InProcessWorker

            self._worker = InProcessWorker(self._ctx)
        return self._worker.put

    _pages: adapters.SearchCache | None = None
    _tokens: tokens.TokenCache | None = None

    def generation(self) -> int:
        """The catalog generation: it moves with every change a listing or a token lookup could
        see (``lora_hub.catalog.db.Database.session``). A request reads it once."""
        return self._ctx.catalog.db.generation()

    def search_json(self, query: ListQuery, *, generation: int | None = None) -> bytes:
        """``search``'s page as JSON, from this process's cache while the catalog has not
        changed (``lora_hub.core.adapters.SearchCache``; ``generation`` as read before, once
        per request)."""
        return self._page_cache().page_json(self._ctx, query, generation)

    def search_json_kept(self, query: ListQuery, *, generation: int) -> bytes | None:
        """``search_json``'s answer when this process keeps it for ``generation``, else None;
        reads nothing (for a server's event loop, which must not wait on the catalog)."""
        return self._page_cache().peek(query, generation)

    def _page_cache(self) -> adapters.SearchCache:
        if self._pages is None:
            self._pages = adapters.SearchCache()
        return self._pages

    def submit_request(self, request: Mapping[str, Any]) -> JobInfo:
        """Submit a job request sent as JSON (``lora_hub.core.jobs.JobRequest``)."""
        from lora_hub.core import jobs as job_core

        return job_core.submit(self._ctx, self._job_request(request), run_here=self._run_here())

    def job_names(self, request: Mapping[str, Any]) -> RegisteredNames | None:
        """The adapters a job request reads and the stored base it writes, when it names only
        registered things (``lora_hub.core.jobs.registered_names``); None when it names paths of
        this machine. An invalid request is ``InvalidArgumentError``."""
        from lora_hub.core import jobs as job_core

        return job_core.registered_names(self._ctx, self._job_request(request))

    def base_file(self, name: str, path: str) -> BaseFile:
        """The stored file ``path`` of the pullable base ``name`` (``NotSupportedError`` when the
        base is not in the blob store, ``NotFoundError`` when it has no such file)."""
        return bases.stored_file(self._ctx, name, path)

    def commit_base_manifest(
        self, name: str, files: Sequence[FileEntry], *, source: str | None = None
    ) -> BaseAddResult:
        """Register the stored base ``name`` made of already-stored blobs (``base add --store``
        through the server; ``lora_hub.core.transfer``): ``MissingBlobsError`` lists the blobs to
        upload first, and nothing is registered until every one is stored."""
        return transfer.commit_base_manifest(self._ctx, name, files, source=source)

    @staticmethod
    def _job_request(request: Mapping[str, Any]) -> JobRequest:
        """A job request sent as JSON, parsed (``InvalidArgumentError`` naming the first problem)."""
        from pydantic import ValidationError

        from lora_hub.core import jobs as job_core
        from lora_hub.errors import InvalidArgumentError

        try:
            return job_core.JobRequest.model_validate(dict(request))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidArgumentError(f"invalid job request: {where}: {first['msg']}") from None

    def resume_jobs(self) -> int:
        """On SQLite, run again the jobs a stopped server left queued or running; how many."""
        run_here = self._run_here()
        if run_here is None or self._worker is None:
            return 0
        return self._worker.resume()

    def token_create(
        self, scope: str, namespace: str, *, expires: str | timedelta | None = None, label: str | None = None
    ) -> CreatedToken:
        """A new API token with ``scope`` (read, write, admin) over the namespace pattern; its secret
        is in the result only (the catalog keeps its sha256). ``expires``: a duration (``30d``)."""
        return tokens.create(self._ctx, scope, namespace, expires=expires, label=label)

    def token_list(self) -> list[TokenInfo]:
        return tokens.list_tokens(self._ctx)

    def token_revoke(self, token_id: str) -> TokenInfo:
        """Revoke a token: every server refuses it from its next request on."""
        return tokens.revoke(self._ctx, token_id)

    def authenticate(self, secret: str, *, generation: int | None = None) -> TokenInfo | None:
        """The token whose secret this is (in any state), or None. With ``generation`` (read by
        this request), from this process's cache while the catalog has not changed
        (``lora_hub.core.tokens.TokenCache``: a revocation moves it)."""
        if generation is None:
            return tokens.authenticate(self._ctx, secret)
        return self._token_cache().lookup(self._ctx, secret, generation)

    def authenticate_kept(self, secret: str, *, generation: int) -> tuple[bool, TokenInfo | None]:
        """(True, ``authenticate``'s answer) when this process keeps it for ``generation``, else
        (False, None); reads nothing."""
        return self._token_cache().peek(secret, generation)

    def _token_cache(self) -> tokens.TokenCache:
        if self._tokens is None:
            self._tokens = tokens.TokenCache()
        return self._tokens

    def blob_size(self, digest: str) -> int | None:
        """The size of a stored blob, or None when it is not stored."""
        return transfer.blob_size(self._ctx, digest)

    def blob_file(self, digest: str) -> AbstractContextManager[Path]:
        """A local file holding the stored blob (``NotFoundError`` if not stored)."""
        return transfer.blob_file(self._ctx, digest)

    def namespace_uses_blob(self, namespace: str, digest: str) -> bool:
        return transfer.namespace_uses_blob(self._ctx, namespace, digest)

    def receive_blob(self, digest: str, *, limit: int) -> AbstractContextManager[transfer.BlobReceiver]:
        """Receive one blob the client says is ``digest``: write its bytes to the receiver as they
        arrive; stored on exit only if they hash to ``digest`` (``lora_hub.core.transfer``)."""
        return transfer.receive_blob(self._ctx, digest, limit=limit)

    def upload_file(self) -> AbstractContextManager[Path]:
        """A staging file name for an incoming upload, removed on exit."""
        return transfer.upload_file(self._ctx)

    def clean_uploads(self) -> int:
        """Remove staged uploads left by a server that was killed; how many."""
        return transfer.clean_uploads(self._ctx)

    def store_blob(self, src: str | os.PathLike[str], digest: str, nonfinite: list[str] | None = None) -> int:
        """Store the file ``src`` as blob ``digest``; the bytes written. A staged upload of this
        process (``upload_file``), hashed by its receiver as it arrived (and scanned for NaN/Inf:
        ``nonfinite``), is adopted by hard link; any other file is copied and hashed again
        (``lora_hub.core.transfer``)."""
        return transfer.store_blob(self._ctx, Path(src), digest, nonfinite)

    def commit_manifest(
        self,
        name: str,
        files: Sequence[FileEntry],
        *,
        metrics: Mapping[str, float] | None = None,
        tags: Sequence[str] = (),
        description: str | None = None,
        base: str | None = None,
        source: str | None = None,
    ) -> PushResult:
        """Push the version of ``name`` made of already-stored blobs (``lora_hub.core.transfer``):
        ``MissingBlobsError`` lists the blobs to upload first. ``source`` names the folder in
        error messages (the client's folder)."""
        return transfer.commit_manifest(
            self._ctx, name, files, metrics=metrics, tags=tags, description=description, base=base, source=source
        )

    def validate_stored(self, ref: str, base: str) -> CompatReport:
        """``validate`` for a stored adapter version and a registered base only (no folders)."""
        return transfer.validate_stored(self._ctx, ref, base)

    # Resumable uploads (OCI-shaped sessions staged in the store; ``lora_hub.core.transfer``).
    def upload_start(self, namespace: str) -> transfer.UploadSession:
        """A new, empty upload session for a blob to be used in ``namespace``."""
        return transfer.upload_start(self._ctx, namespace)

    def upload_status(self, namespace: str, upload_id: str) -> transfer.UploadSession:
        """The session and how many bytes it has staged."""
        return transfer.upload_status(self._ctx, namespace, upload_id)

    def upload_append(
        self, namespace: str, upload_id: str, start: int | None, *, end: int | None, limit: int
    ) -> contextlib.AbstractContextManager[Any]:
        """A sink for one chunk, which must start where the staged bytes end (``UploadOffsetError``)."""
        return transfer.upload_append(self._ctx, namespace, upload_id, start, end=end, limit=limit)

    def upload_finish(self, namespace: str, upload_id: str, digest: str) -> tuple[int, int]:
        """Store the staged bytes as blob ``digest`` if they hash to it; (size, bytes added)."""
        return transfer.upload_finish(self._ctx, namespace, upload_id, digest)

    def upload_abort(self, namespace: str, upload_id: str) -> None:
        transfer.upload_abort(self._ctx, namespace, upload_id)

    def mount_blob(self, digest: str, source: str, may_read: bool) -> int | None:
        """The size of ``digest`` when a version of ``source`` (readable by the caller) uses it."""
        return transfer.mount_blob(self._ctx, digest, source, may_read)


def open_hub(settings: Settings | None = None) -> HubAPI:
    """The ``HubAPI`` for ``settings`` (default: from the environment): the local ``Hub``, or,
    with ``LORAHUB_URL`` set, a ``lora_hub.remote.RemoteHub`` talking to that server (token from
    ``LORAHUB_TOKEN``, else the token file ``lorahub login`` wrote)."""
    settings = settings or Settings.from_env()
    if settings.server_url:
        try:
            from lora_hub.remote import RemoteHub  # httpx: only for a remote hub
        except ImportError as exc:
            raise NotSupportedError(
                f"LORAHUB_URL is set ({settings.server_url}), but the remote client needs httpx ({exc.name})",
                hint="pip install 'lora-hub[service]', or unset LORAHUB_URL to use the local catalog",
            ) from None
        return RemoteHub(settings)
    return Hub(settings=settings)


if TYPE_CHECKING:

    def _conforms(hub: Hub) -> HubAPI:  # mypy: the local Hub implements the whole protocol
        return hub
