"""jobs (list, show, wait, cancel, logs), worker, and the --submit/--detach options of merge, run
and export."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from lora_hub.cli._common import JsonOpt, RichProgress, handle_errors, hub, print_json, say
from lora_hub.types import JobInfo

if TYPE_CHECKING:
    from lora_hub.api import JobResult

app = typer.Typer(
    help="Jobs run by workers (PostgreSQL catalogs): list, show, wait, cancel, logs.", no_args_is_help=True
)

SubmitOpt = Annotated[bool, typer.Option("--submit", help="Run it on a worker (`lorahub worker`) and follow it here.")]
DetachOpt = Annotated[
    bool, typer.Option("--detach", help="Hand it to a worker and print the job id at once (`lorahub jobs wait ID`).")
]


def submitted(job: JobInfo, *, detach: bool, json: bool) -> JobResult | None:
    """After a submission: with ``detach``, print the job and return None; else follow it with
    progress and return its result (raising the error the local command would have raised)."""
    if detach:
        if json:
            print_json(job)
        else:
            say(_submitted_line(job))
        return None
    if not json:
        say(_submitted_line(job))
    done = job if job.recorded else hub().follow_job(job.id, RichProgress(not json))
    return hub().job_result(done)


def _submitted_line(job: JobInfo) -> str:
    if job.recorded:
        stored = (job.result or {}).get("stored_base")
        return f"served from the record of this recipe, with no job: stored base {stored}"
    how = "joined the identical job" if job.joined else "submitted job"
    return f"{how} {job.id} ({job.kind}, {job.queue} queue, {job.state})"


@app.command("list")
@handle_errors
def list_jobs(
    state: Annotated[
        str | None,
        typer.Option("--state", metavar="STATE", help="queued, running, succeeded, failed or cancelled."),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", help="At most N jobs, newest first.")] = 50,
    json: JsonOpt = False,
) -> None:
    """The jobs, newest first."""
    found = hub().jobs(state=state, limit=limit)
    if json:
        print_json(found)
        return
    if not found:
        say("no jobs")
        return
    for job in found:
        say(_row(job))


def _row(job: JobInfo) -> str:
    p = job.progress or {}
    doing = ""
    if job.state == "running" and p.get("step"):
        total = f"/{p['total']}" if p.get("total") else ""
        doing = f"  {p['step']} {p.get('done', 0)}{total}"
    what = _what(job)
    return f"{job.id}  {job.state:<9}  {job.kind:<8}  {job.queue:<3}  {job.created_at:%Y-%m-%d %H:%M:%S}  {what}{doing}"


def _what(job: JobInfo) -> str:
    r = job.request
    if job.kind == "export":
        e = r.get("export") or {}
        return f"{e.get('model')} -> {e.get('format')} {e.get('output')}"
    p = r.get("pipeline") or {}
    formats = ",".join(e.get("format", "") for e in p.get("exports") or [])
    where = f"the blob store as base {p.get('name')}" if r.get("store_output") else p.get("output")
    return f"merge {p.get('base_model')} + {len(p.get('models') or [])} -> {where}" + (
        f" (export {formats})" if formats else ""
    )


@app.command("show")
@handle_errors
def show(job_id: Annotated[str, typer.Argument(metavar="JOB", show_default=False)], json: JsonOpt = False) -> None:
    """One job: its request, state, progress, result or error."""
    job = hub().job(job_id)
    if json:
        print_json(job)
        return
    say(f"job        {job.id}")
    say(f"state      {job.state}{'  (cancel requested)' if job.cancel_requested and not job.done else ''}")
    say(f"what       {_what(job)}")
    say(f"queue      {job.queue}")
    say(f"attempts   {job.attempts}" + (f"  on {job.worker}" if job.worker else ""))
    say(f"submitted  {job.created_at.isoformat(timespec='seconds')}")
    if job.started_at:
        say(f"started    {job.started_at.isoformat(timespec='seconds')}")
    if job.finished_at:
        say(f"finished   {job.finished_at.isoformat(timespec='seconds')}")
    if job.progress and not job.done:
        say(f"progress   {_row(job).split('  ')[-1]}")
    if job.error:
        say(f"error      {job.error.get('message')}")
        if job.error.get("hint"):
            say(f"  hint     {job.error['hint']}")
    if job.result and job.result.get("stored_base"):
        name = job.result["stored_base"]
        say(f"result     stored as base {name}  (`lorahub base pull {name} -o DIR` writes it out)")
    elif job.result and job.kind == "pipeline":
        merge = job.result.get("merge") or {}
        say(
            f"result     {merge.get('path')}"
            + (f"  registered as {merge['registered']}" if merge.get("registered") else "")
        )
        for e in job.result.get("exports") or []:
            say(f"           {e.get('path')}")
    elif job.result:
        say(f"result     {job.result.get('path')}")


@app.command("wait")
@handle_errors
def wait(job_id: Annotated[str, typer.Argument(metavar="JOB", show_default=False)], json: JsonOpt = False) -> None:
    """Follow a job until it ends; exit with its command's exit code (0 when it succeeded)."""
    done = hub().follow_job(job_id, RichProgress(not json))
    if json:
        print_json(done)
        if done.state != "succeeded":
            hub().job_result(done)
        return
    hub().job_result(done)  # raises the job's error, printed as the local command would
    say(f"job {done.id} succeeded")


@app.command("cancel")
@handle_errors
def cancel(job_id: Annotated[str, typer.Argument(metavar="JOB", show_default=False)], json: JsonOpt = False) -> None:
    """Cancel a queued job, or ask a running one to stop (it stops within a second, keeping nothing)."""
    job = hub().cancel_job(job_id)
    if json:
        print_json(job)
        return
    if job.state == "cancelled":
        say(f"cancelled job {job.id}")
    elif job.done:
        say(f"job {job.id} had already {job.state}")
    else:
        say(f"asked job {job.id} to stop (it is {job.state}; `lorahub jobs wait {job.id}` follows it)")


@app.command("logs")
@handle_errors
def logs(job_id: Annotated[str, typer.Argument(metavar="JOB", show_default=False)], json: JsonOpt = False) -> None:
    """What the job did, line by line."""
    job = hub().job(job_id)
    if json:
        print_json(job.log)
        return
    for line in job.log:
        say(f"{line.at.isoformat(timespec='seconds')}  {line.message}")


@handle_errors
def worker(
    queue: Annotated[
        str | None,
        typer.Option(
            "--queue",
            metavar="QUEUE",
            help="gpu or cpu (default: gpu with CUDA, else cpu); both also take jobs whose device is auto.",
        ),
    ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", metavar="N", help="Jobs at a time (1 per GPU).")] = 1,
    once: Annotated[bool, typer.Option("--once", help="Stop when the queue is empty instead of waiting.")] = False,
) -> None:
    """Run merge and export jobs from the queue (PostgreSQL catalogs) until stopped (Ctrl-C
    lets the running jobs finish).

    \b
    Examples:
      lorahub worker --queue gpu            # one per GPU, with CUDA_VISIBLE_DEVICES=N
      lorahub worker --queue cpu --concurrency 2
    """
    import logging
    import os

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s  %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("lora_hub.jobs")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    if os.environ.get("LORAHUB_DEBUG"):  # procrastinate's own account of what it defers and runs
        engine = logging.getLogger("procrastinate")
        engine.addHandler(handler)
        engine.setLevel(logging.DEBUG)
    hub().run_worker(queue=queue, concurrency=concurrency, wait=not once)
