"""Jobs: a merge, an export or a pipeline handed to workers (``lorahub worker``) instead of run
in the calling process.

A job is a row in the catalog (its request, state, progress, result or error, a log) and, on
PostgreSQL, a job in procrastinate's queue (``lora_hub.jobs.queue``), deferred in the same
transaction as the row. A worker claims the row, runs the request with the same core functions
a local command uses, reporting progress to the row, and stores the result (the local command's
result, as JSON) or the error the local command would have raised. States: ``queued`` ->
``running`` -> ``succeeded`` | ``failed`` | ``cancelled``.

- **One job per request.** The request's sha256 (``dedup_key``) has a unique index among active
  jobs (and is procrastinate's queueing lock): submitting the same request while one is queued
  or running joins it. A merge into the blob store whose recipe is recorded, its output
  stored under the same name, is answered at submission from the record, with no job
  (``recorded``); any other request whose merge and exports are recorded is served from the
  records by its worker in seconds.
- **Checked first.** A pipeline's formats, options and output folders are checked at
  submission, as ``lorahub run`` checks them, so a wrong request fails at once.
- **Cancel.** A queued job is taken off the queue; a running one is asked to stop and stops at
  its next progress report (at least every tensor of a merge), its partial output removed.
- **Workers die.** Every worker beats a heartbeat; a job whose worker stopped beating is
  retried by the other workers' periodic task, and the retry first removes the dead attempt's
  partial folder (``gc``'s rule: only folders whose writer is gone).

- **Inputs through the store.** A worker (``WorkerContext``) reads stored blobs (a stored base's
  weights, adapter files) as the store's own files with a local store, and through a bounded,
  least-recently-used local cache with an S3 store (``lora_hub.store.cache``:
  ``LORAHUB_CACHE_DIR``, ``LORAHUB_CACHE_MAX_BYTES``), filled by ranged reads; what a job took
  from the cache is let go when the job ends.
- **Outputs through the store.** A merge whose output is no path of the submitter's
  (``store_output``: a job sent through the server) is written into a folder of the worker's
  own, then moved into the blob store and registered as a stored base under the pipeline's
  ``name``, with its lineage; ``lorahub base pull NAME -o DIR`` writes it out anywhere.

On SQLite there is no queue (one machine): commands run in the calling process, as without jobs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lora_hub._context import Context
from lora_hub._fs import pid_alive
from lora_hub.core import bases, exporting, merging, pipeline
from lora_hub.core.pipeline import PipelineSpec
from lora_hub.errors import (
    InvalidArgumentError,
    JobCancelledError,
    JobFailedError,
    LoraHubError,
    NotSupportedError,
)
from lora_hub.hashing import hash_bytes
from lora_hub.progress import Advance, Progress
from lora_hub.settings import Settings
from lora_hub.store import BlobStore
from lora_hub.store.cache import cached
from lora_hub.types import JobInfo, JobLogLine

log = logging.getLogger("lora_hub.jobs")
REPORT_EVERY_S = 0.5  # progress written (and cancel polled) at most this often
WORK_MARK = "lorahub-job-"  # the worker's own output folders: <tmp>/lorahub-job-<pid>-<random>
Queue = Literal["cpu", "gpu", "any"]


class ExportRequest(BaseModel):
    """``lorahub export``'s arguments."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    output: str
    format: str
    dtype: str = "auto"
    device: str = "auto"
    max_batch: int | None = None
    max_seq: int | None = None
    opset: int | None = None
    with_cache: bool = False


class HubRequest(BaseModel):
    """``lorahub hub import|export|sync``'s arguments (``op``), without endpoint or token: a worker
    talks to the Hub with its own ``HF_ENDPOINT`` and ``HF_TOKEN``, so that no secret of the
    submitter's is stored in the job's row and no submitter points the workers at a host."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    op: Literal["import", "export", "sync"]
    repo: str = Field(default="", description="import: REPO_ID[@REVISION]; export: the repo to commit to")
    name: str = Field(default="", description="import: [NS/]NAME to store under; export: the adapter or base ref")
    base: str | None = Field(default=None, description="import: a base it must fit")
    tags: list[str] = Field(default_factory=list, description="import: tags to point at the version")
    revision: str | None = Field(default=None, description="export: the branch")
    namespace: str = Field(default="", description="sync: the namespace")
    pull: bool = Field(default=False, description="sync: import the organisation `repo` into `namespace`")
    private: bool = False
    create: bool = False
    dry_run: bool = False


class JobRequest(BaseModel):
    """What a job runs: a pipeline (a merge and its exports; a plain merge has no exports), an
    export, or a Hugging Face Hub import, export or sync, with the flags of the local command."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["pipeline", "export", "hub"]
    pipeline: PipelineSpec | None = None
    export: ExportRequest | None = None
    hub: HubRequest | None = None
    device: str = Field(default="auto", description="auto: cuda if the worker has it")
    recompute: bool = False
    force: bool = False
    overwrite: bool = False
    store_output: bool = Field(
        default=False,
        description="the merge's output is no path of the submitter's: the worker stores the merged model in the "
        "blob store as the stored base `pipeline.name` (with its lineage), and `pipeline.output` is ignored",
    )

    @property
    def queue(self) -> Queue:
        """The workers that may take it: ``gpu`` for cuda, ``cpu`` for cpu, ``any`` for auto (and
        for Hub transfers, which need no device)."""
        if self.kind == "hub":
            return "any"
        device = self.export.device if self.export is not None else self.device
        return "gpu" if device.startswith("cuda") else "cpu" if device == "cpu" else "any"

    @property
    def key(self) -> str:
        doc = self.model_dump(mode="json")
        return hash_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def pipeline_request(
    spec: PipelineSpec | str | os.PathLike[str],
    *,
    device: str = "auto",
    recompute: bool = False,
    force: bool = False,
    overwrite: bool = False,
) -> JobRequest:
    """The request of ``lorahub run`` (a spec, or its YAML file, read here). A spec with no
    output (``output: ""``, as ``lorahub merge --name NAME --submit`` without ``-o`` makes) is a
    ``store_output`` request: its merged model goes to the blob store as the stored base ``name``."""
    spec = spec if isinstance(spec, PipelineSpec) else pipeline.load(spec)
    request = JobRequest(kind="pipeline", pipeline=spec, device=device, recompute=recompute, force=force,
                         overwrite=overwrite)  # fmt: skip
    # set only when true: a request with the field left unset stays exactly as it was before it existed
    return request.model_copy(update={"store_output": True}) if not spec.output else request


def export_request(
    model: str | os.PathLike[str],
    output: str | os.PathLike[str],
    format: str,
    *,
    recompute: bool = False,
    force: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> JobRequest:
    """The request of ``lorahub export`` (``options``: those of ``ExportRequest``)."""
    export = ExportRequest(model=str(model), output=os.path.abspath(output), format=format, **options)
    return JobRequest(kind="export", export=export, recompute=recompute, force=force, overwrite=overwrite)


def hub_request(op: Literal["import", "export", "sync"], **arguments: Any) -> JobRequest:
    """The request of ``lorahub hub OP`` (``arguments``: those of ``HubRequest``)."""
    return JobRequest(kind="hub", hub=HubRequest(op=op, **arguments))


def _need_queue(ctx: Context) -> None:
    if ctx.catalog.db.is_sqlite:
        raise NotSupportedError(
            "jobs need a PostgreSQL catalog: with SQLite (one machine) there are no workers to hand them to",
            hint="run the command without --detach/--submit to run it here, or set LORAHUB_DATABASE_URL to the "
            "team's PostgreSQL and start `lorahub worker`",
        )


def submit(ctx: Context, request: JobRequest, *, run_here: Callable[[str], None] | None = None) -> JobInfo:
    """Queue ``request`` for a worker, after the checks its local command makes before any work;
    an identical request that is queued or running is joined instead (``joined``). With SQLite
    there is no queue: ``run_here(job_id)`` (``lorahub serve``'s in-process worker) takes the
    job, and without it jobs are refused."""
    if ctx.catalog.db.is_sqlite and run_here is None:
        _need_queue(ctx)
    if request.store_output:
        request = _stored_request(request)
    if request.pipeline is not None:
        pipeline.check(ctx, request.pipeline)
    if request.export is not None:
        _check_export(request.export)
    if request.hub is not None:
        _check_hub(request.hub)
    key = request.key
    doc = request.model_dump(mode="json")
    recorded = _recorded(ctx, request)
    if recorded is not None:
        now = datetime.now(UTC)
        return JobInfo(id="", kind=request.kind, queue=request.queue, state="succeeded", request=doc, dedup_key=key,
                       result=recorded, created_at=now, finished_at=now, recorded=True,
                       log=[JobLogLine(at=now, message="served from the record of its recipe: no job")])  # fmt: skip
    if ctx.catalog.db.is_sqlite:
        job = ctx.catalog.jobs.create(kind=request.kind, queue=request.queue, request=doc, dedup_key=key)
        if not job.joined and run_here is not None:
            run_here(job.id)
        return job

    from lora_hub.jobs import queue

    def defer(connection: Any, job_id: str) -> int | None:
        return queue.defer(ctx.settings.database_url, connection, job_id, queue=request.queue, lock=key)

    return ctx.catalog.jobs.create(kind=request.kind, queue=request.queue, request=doc, dedup_key=key, defer=defer)


def _recorded(ctx: Context, request: JobRequest) -> dict[str, Any] | None:
    """The result of a ``store_output`` merge whose recipe is recorded with its output stored
    under the same name (``merging.stored_record``): what its worker would return, at once."""
    spec = request.pipeline
    if not request.store_output or request.recompute or spec is None or not spec.name:
        return None
    merged = merging.stored_record(ctx, spec.base_model, [m.spec for m in spec.models], name=spec.name,
                                   method=spec.merge_method, params=spec.parameters, dtype=spec.dtype,
                                   shard_size=spec.shard_size)  # fmt: skip
    if merged is None:
        return None
    return _stored_result(pipeline.PipelineResult(merge=merged), spec.name)


def _stored_result(done: pipeline.PipelineResult, name: str) -> dict[str, Any]:
    """A ``store_output`` job's result, run or answered from the record: the pipeline's, with no
    merge ``path`` (the merged model has no folder of its own) and ``stored_base``: the name
    to pull it by."""
    doc = done.model_dump(mode="json")
    doc["merge"]["path"] = ""
    doc["stored_base"] = name
    return doc


def _stored_request(request: JobRequest) -> JobRequest:
    """A ``store_output`` request as it is queued (its ignored output cleared, so that identical
    recipes are one job), after checking that it can be stored: a merge with a name and nothing
    that would be written beside the merged model."""
    spec = request.pipeline
    if request.kind != "pipeline" or spec is None:
        raise InvalidArgumentError(
            "only a merge can store its output in the blob store", hint="give the export an output folder"
        )
    if not spec.name:
        raise InvalidArgumentError(
            "a merge stored in the blob store needs a name to be registered (and pulled) under",
            hint="give the merge a name (`--name`, or `name:` in the pipeline)",
        )
    if spec.exports or spec.push is not None:
        raise NotSupportedError(
            "a merge stored in the blob store cannot have exports or a Hub push yet",
            hint="merge first, then `lorahub base pull NAME -o DIR` and export that folder",
        )
    return request.model_copy(update={"pipeline": spec.model_copy(update={"output": ""})})


class RegisteredNames(BaseModel):
    """What a request of registered names only reads and writes (``registered_names``)."""

    model_config = ConfigDict(frozen=True)

    adapters: list[str] = Field(description="the adapters (or bases) it reads, by name (no version)")
    output: str = Field(description="the stored base it registers, or the name it writes ('' for none)")
    writes: str = Field(description="the namespace it writes in ('' for none)")


def registered_names(ctx: Context, request: JobRequest) -> RegisteredNames | None:
    """The adapter names a request reads and the base name it writes, when it names nothing but
    registered things: a ``store_output`` merge of a registered base and stored adapter
    references, with no exports and no Hub push. None when it names anything else, such as a
    path of this machine (an adapter reference that is also a folder here is read as the folder,
    so it counts as a path): the server lets only an admin submit such a request."""
    from lora_hub.core.common import is_base_name, split_weight
    from lora_hub.refs import AdapterName, Ref

    if request.hub is not None:
        return _hub_names(ctx, request.hub)
    spec = request.pipeline
    if request.kind != "pipeline" or not request.store_output or spec is None or not spec.name:
        return None
    if spec.exports or spec.push is not None:
        return None
    if not (is_base_name(spec.base_model) and ctx.catalog.bases.has(spec.base_model)):
        return None
    names = []
    for model in spec.models:
        target, _ = split_weight(model.model)
        if Path(target).exists():
            return None
        try:
            names.append(str(Ref.parse(target).adapter))
            output = str(AdapterName.parse(spec.name))
        except LoraHubError:
            return None
    return RegisteredNames(adapters=names, output=output, writes=AdapterName.parse(output).namespace)


def _hub_names(ctx: Context, h: HubRequest) -> RegisteredNames | None:
    """A Hub import writes in its name's namespace (and may read a registered base, which any
    token may); an export reads the adapter (or stored base) it sends and, publishing it under
    the team's Hub token, counts as a write in its namespace; a sync reads and writes its
    namespace. None when it names a path of this machine (a base folder)."""
    from lora_hub.core.common import is_base_name
    from lora_hub.refs import AdapterName, Ref

    try:
        if h.op == "import":
            if h.base is not None and not (is_base_name(h.base) and ctx.catalog.bases.has(h.base)):
                return None
            name = str(AdapterName.parse(h.name))
            return RegisteredNames(adapters=[], output=name, writes=AdapterName.parse(name).namespace)
        if h.op == "export":
            if Path(h.name).exists():
                return None
            name = str(Ref.parse(h.name).adapter)
            return RegisteredNames(adapters=[name], output="", writes=Ref.parse(h.name).adapter.namespace)
        namespace = AdapterName.parse(f"{h.namespace}/x").namespace
    except LoraHubError:
        return None
    return RegisteredNames(adapters=[], output="", writes=namespace)


def _check_hub(h: HubRequest) -> None:
    """What ``lorahub hub`` checks before any request: the arguments its operation needs."""
    needed = {"import": ("repo", "name"), "export": ("name", "repo"), "sync": ("namespace", "repo")}[h.op]
    missing = [field for field in needed if not getattr(h, field)]
    if missing:
        raise InvalidArgumentError(
            f"a Hub {h.op} job needs {' and '.join(missing)}", hint=f"see `lorahub hub {h.op} --help`"
        )


def _check_export(e: ExportRequest) -> None:
    from lora_hub.export import get_exporter
    from lora_hub.export.plan import make_options

    get_exporter(e.format)
    make_options(dtype=e.dtype, device=e.device, max_batch=e.max_batch, max_seq=e.max_seq, opset=e.opset,
                 with_cache=e.with_cache)  # fmt: skip


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run(ctx: Context, job_id: str, *, worker: str | None = None) -> JobInfo | None:
    """Run the job (a worker's task): claim it, run its request, store the result or the error.
    None when there is nothing to run (done, or cancelled while queued). Never raises for a
    failure of the request itself: that is the job's state."""
    jobs = ctx.catalog.jobs
    claimed = jobs.claim(job_id, worker or worker_name())
    if claimed is None:
        return None
    ctx.partials().clean()  # the partial output of an attempt whose worker was killed
    request = JobRequest.model_validate(claimed.request)
    progress = JobProgress(ctx, job_id)
    log.info("job %s: started (attempt %d)", job_id, claimed.attempts)
    try:
        with _job_files():
            result = _execute(ctx, request, progress)
    except JobCancelledError as exc:
        done = jobs.finish(job_id, "cancelled", error=exc.as_dict(), message="cancelled; nothing it wrote was kept")
    except LoraHubError as exc:
        done = jobs.finish(job_id, "failed", error=exc.as_dict(), message=f"failed: {exc.message}")
    except Exception as exc:  # a worker outlives a bug in one job; the job records it
        failure = JobFailedError(
            f"the job failed on its worker: {type(exc).__name__}: {exc}",
            hint="this is lora-hub's fault: please report it with `lorahub jobs show ID --json`",
        )
        log.exception("job %s failed", job_id)
        done = jobs.finish(job_id, "failed", error=failure.as_dict(), message=f"failed: {failure.message}")
    else:
        done = jobs.finish(job_id, "succeeded", result=result, message="succeeded")
    log.info("job %s: %s", job_id, done.log[-1].message)
    return done


def _execute(ctx: Context, request: JobRequest, progress: Progress) -> dict[str, Any]:
    if request.store_output:
        return _execute_stored(ctx, request, progress)
    if request.pipeline is not None:
        done = pipeline.run(ctx, request.pipeline, device=request.device, recompute=request.recompute,
                            force=request.force, overwrite=request.overwrite, progress=progress)  # fmt: skip
        return done.model_dump(mode="json")
    if request.hub is not None:
        return _execute_hub(ctx, request.hub, progress).model_dump(mode="json")
    e = request.export
    assert e is not None
    exported = exporting.export(ctx, e.model, e.output, e.format, dtype=e.dtype, device=e.device,
                                max_batch=e.max_batch, max_seq=e.max_seq, opset=e.opset, with_cache=e.with_cache,
                                recompute=request.recompute, force=request.force, overwrite=request.overwrite,
                                progress=progress)  # fmt: skip
    return exported.model_dump(mode="json")


def _execute_stored(ctx: Context, request: JobRequest, progress: Progress) -> dict[str, Any]:
    """Merge into a folder of this worker's own, move it into the blob store as the stored base
    ``name``, remove the folder (whatever happens). The result is the merge's, with no ``path``
    (the merged model has no folder) and ``stored_base``: the name to pull."""
    spec = request.pipeline
    assert spec is not None and spec.name
    parent = Path(tempfile.gettempdir())
    _remove_dead_work_folders(parent)
    work = parent / f"{WORK_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    work.mkdir()
    registered_before = ctx.catalog.bases.has(spec.name)
    try:
        out = work / "merged"
        done = pipeline.run(ctx, spec.model_copy(update={"output": str(out)}), device=request.device,
                            recompute=request.recompute, progress=progress, into_store=True)  # fmt: skip
        if out.is_dir():
            bases.store_folder(ctx, out, spec.name, progress=progress)
        elif not bases.show_base(ctx, spec.name).stored:  # the merge served from a record elsewhere
            raise JobFailedError(f"the merge of {spec.name} left no folder to store", hint="submit it with recompute")
        return _stored_result(done, spec.name)
    except BaseException:
        # the merge registered its output, in the folder about to be removed: forget it again,
        # unless it was there before (stored by an earlier job)
        if not registered_before and ctx.catalog.bases.has(spec.name):
            with contextlib.suppress(LoraHubError):
                if not ctx.catalog.bases.get(spec.name, with_tensors=False).stored:
                    ctx.catalog.bases.remove(spec.name)
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _execute_hub(ctx: Context, h: HubRequest, progress: Progress) -> BaseModel:
    """The Hub operation, with this worker's ``HF_ENDPOINT`` and ``HF_TOKEN``."""
    from lora_hub.core import hubsync  # imports huggingface_hub: only when used

    if h.op == "import":
        return hubsync.import_adapter(ctx, h.repo, h.name, base=h.base, tags=h.tags, progress=progress)
    if h.op == "export":
        return hubsync.export(ctx, h.name, h.repo, revision=h.revision, private=h.private, create=h.create,
                              dry_run=h.dry_run, progress=progress)  # fmt: skip
    return hubsync.sync(ctx, h.namespace, h.repo, pull=h.pull, dry_run=h.dry_run, private=h.private,
                        progress=progress)  # fmt: skip


def _remove_dead_work_folders(parent: Path) -> None:
    """The output folders of workers that were killed mid-job."""
    for entry in parent.glob(f"{WORK_MARK}*"):
        pid = entry.name[len(WORK_MARK) :].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)


_job_copies: ContextVar[contextlib.ExitStack | None] = ContextVar("lorahub_job_copies", default=None)


@contextmanager
def _job_files() -> Iterator[None]:
    """The local copies of blobs that a job takes (``WorkerContext.local_copy``) are let go when
    it ends, so that the cache may evict them."""
    with contextlib.ExitStack() as stack:
        token = _job_copies.set(stack)
        try:
            yield
        finally:
            _job_copies.reset(token)


class WorkerContext(Context):
    """The context of a worker process (``lorahub worker``). With a store whose blobs are not
    local files (S3), blobs read as files (a stored base's weights, adapter files) come from a
    bounded local cache (``lora_hub.store.cache``: ``LORAHUB_CACHE_DIR``, by default
    ``$LORAHUB_HOME/cache/blobs``, at most ``LORAHUB_CACHE_MAX_BYTES``), and those a job took are
    let go when it ends; with a local store they are the store's own files, as everywhere."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._cached_store: BlobStore | None = None

    @property
    def cache_root(self) -> Path:
        return self.settings.cache_dir or self.settings.home / "cache" / "blobs"

    @property
    def store(self) -> BlobStore:
        if self._cached_store is None:
            self._cached_store = cached(super().store, self.cache_root, self.settings.cache_max_bytes)
        return self._cached_store

    def local_copy(self, digest: str, *, verify: bool = False) -> Path:
        stack = _job_copies.get()
        if stack is None:
            return super().local_copy(digest, verify=verify)
        return stack.enter_context(self.store.open_local(digest, verify=verify))


class JobProgress:
    """Progress of a running job, written to its row at most every ``REPORT_EVERY_S``; each
    write also reads the cancel flag, and a requested cancel raises ``JobCancelledError`` from
    inside the work (which removes what it was writing, as on Ctrl-C)."""

    def __init__(self, ctx: Context, job_id: str, every_s: float = REPORT_EVERY_S) -> None:
        self.ctx, self.job_id, self.every_s = ctx, job_id, every_s
        self._last = 0.0

    @contextmanager
    def task(self, description: str, total: int | None, unit: str = "B") -> Iterator[Advance]:
        done = 0
        self._report(description, done, total, unit, force=True, message=description)

        def advance(n: int) -> None:
            nonlocal done
            done += n
            self._report(description, done, total, unit)

        yield advance
        self._report(description, done, total, unit, force=True)

    def _report(
        self, step: str, done: int, total: int | None, unit: str, *, force: bool = False, message: str | None = None
    ) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        state = {"step": step, "done": done, "total": total, "unit": unit}
        if self.ctx.catalog.jobs.report(self.job_id, state, message):
            raise JobCancelledError("the job was cancelled", hint="nothing it was writing was kept")


def cancel(ctx: Context, job_id: str) -> JobInfo:
    """Cancel a queued job at once; ask a running one to stop (it stops within a progress report)."""
    if ctx.catalog.db.is_sqlite:  # no queue: a queued job is cancelled by its row alone
        return ctx.catalog.jobs.request_cancel(job_id)
    from lora_hub.jobs import queue

    return ctx.catalog.jobs.request_cancel(
        job_id, cancel_queued=lambda conn, qid: queue.cancel_queued(ctx.settings.database_url, conn, qid)
    )


def follow(
    ctx: Context,
    job_id: str,
    progress: Progress | None = None,
    *,
    timeout_s: float | None = None,
) -> JobInfo:
    """Wait for the job to finish, showing its progress (``lora_hub.jobs.follow``)."""
    from lora_hub.jobs.follow import follow as follow_job

    with ctx.catalog.jobs.done_waiter() as wait:
        return follow_job(ctx.catalog.jobs.get, job_id, progress, timeout_s=timeout_s, wait=wait)
