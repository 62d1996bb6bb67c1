"""Following a job from the submitter's side (locally through the catalog, or through a server):
its progress shown as it runs, and its stored error raised as the local command's error. Plain
functions over a ``get(job_id) -> JobInfo``, so that the local hub and the remote client share
them; nothing here imports the catalog."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lora_hub import errors
from lora_hub.errors import LoraHubError, NotSupportedError
from lora_hub.progress import Advance, NoProgress, Progress
from lora_hub.types import JobInfo

if TYPE_CHECKING:
    from typing import TypeAlias

    from lora_hub.core.pipeline import PipelineResult
    from lora_hub.export.run import ExportResult
    from lora_hub.hubsync.types import HubExportResult, HubImportResult, HubSyncResult

    JobResult: TypeAlias = PipelineResult | ExportResult | HubImportResult | HubExportResult | HubSyncResult

POLL_S = 0.25


def follow(
    get: Callable[[str], JobInfo],
    job_id: str,
    progress: Progress | None = None,
    *,
    poll_s: float = POLL_S,
    timeout_s: float | None = None,
    wait: Callable[[float], None] = time.sleep,
) -> JobInfo:
    """Poll the job until it is done (or ``timeout_s`` passed), showing its running step's
    progress as a task of ``progress``; returns the job as last read. Between polls it calls
    ``wait(poll_s)``, which may return early (when a job ends: ``Jobs.done_waiter``)."""
    progress = progress or NoProgress()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with contextlib.ExitStack() as stack:
        step: str | None = None
        advance: Advance = lambda n: None  # noqa: E731
        seen = 0
        while True:
            job = get(job_id)
            p: dict[str, Any] = job.progress or {}
            if job.state == "running" and p.get("step") and p["step"] != step:
                stack.close()  # the previous step's bar ends
                step, seen = str(p["step"]), 0
                advance = stack.enter_context(progress.task(step, p.get("total"), str(p.get("unit") or "B")))
            done = int(p.get("done") or 0)
            if step is not None and done > seen:
                advance(done - seen)
                seen = done
            if job.done or (deadline is not None and time.monotonic() > deadline):
                return job
            wait(poll_s)


def result_of(job: JobInfo) -> JobResult:
    """The result of a succeeded job as the local command returns it; for a failed or cancelled
    one, raises the error the local command would have raised (``raise_for``)."""
    from lora_hub.core.pipeline import PipelineResult
    from lora_hub.export.run import ExportResult

    raise_for(job)
    if job.state != "succeeded" or job.result is None:
        raise NotSupportedError(
            f"job {job.id} is {job.state}: it has no result yet", hint=f"wait for it: `lorahub jobs wait {job.id}`"
        )
    if job.kind == "export":
        return ExportResult.model_validate(job.result)
    if job.kind == "hub":
        from lora_hub.hubsync.types import HubExportResult, HubImportResult, HubSyncResult

        op = str((job.request.get("hub") or {}).get("op"))
        if op == "import":
            return HubImportResult.model_validate(job.result)
        if op == "export":
            return HubExportResult.model_validate(job.result)
        return HubSyncResult.model_validate(job.result)
    return PipelineResult.model_validate(job.result)


def raise_for(job: JobInfo) -> None:
    """Raise the error a failed or cancelled job stored: the class (by its ``code``), message and
    hint the local command would have raised, so that a front end prints the same line and exits
    the same way. Nothing for a job that succeeded or is not done."""
    if job.state in ("succeeded", "queued", "running") or job.error is None:
        return
    code, message, hint = job.error.get("code"), str(job.error.get("message")), job.error.get("hint")
    cls = _by_code().get(str(code), errors.LoraHubError)
    exc = cls.__new__(cls)  # its own __init__ may want other arguments: set what every error has
    LoraHubError.__init__(exc, message, hint=hint if isinstance(hint, str) else None)
    raise exc


def _by_code() -> dict[str, type[LoraHubError]]:
    """Each error code's class: the first class (from the root down) that carries it."""
    found: dict[str, type[LoraHubError]] = {}
    todo: list[type[LoraHubError]] = [LoraHubError]
    while todo:
        cls = todo.pop(0)
        found.setdefault(cls.code, cls)
        todo.extend(cls.__subclasses__())
    return found
