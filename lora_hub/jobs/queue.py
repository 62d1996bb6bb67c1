"""procrastinate, the queue that hands jobs (``lora_hub.core.jobs``) to workers on PostgreSQL.

One task, ``lorahub.run_job(job_id)``, on the queues ``cpu``, ``gpu`` and ``any`` (a job whose
device is auto). Its queueing lock is the request's digest, so an identical request is never
queued twice. A periodic task on every worker retries the jobs of workers whose heartbeat
stopped (procrastinate does not retry those by itself). Jobs are deferred on the caller's
connection, inside the transaction that writes the job's row.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from typing import Any

from lora_hub.errors import ConflictError, NotSupportedError

TASK = "lorahub.run_job"
QUEUES = ("cpu", "gpu", "any")
HEARTBEAT_S = float(os.environ.get("LORAHUB_WORKER_HEARTBEAT_S", "10"))
RETRY_CRON = "* * * * * */5"  # every 5 s: the stalled-job retry's schedule
STALLED_AFTER_BEATS = 3  # a worker silent for this many heartbeats is taken for dead

log = logging.getLogger("lora_hub.jobs")


def conninfo(database_url: str) -> str:
    """libpq's form of the catalog's SQLAlchemy URL."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise NotSupportedError(
            "jobs need a PostgreSQL catalog", hint="set LORAHUB_DATABASE_URL=postgresql+psycopg://..."
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _procrastinate() -> Any:
    try:
        import procrastinate
    except ImportError:
        raise NotSupportedError(
            "jobs need procrastinate, which is not installed", hint="pip install 'lora-hub[postgres]'"
        ) from None
    return procrastinate


def app_for(database_url: str) -> Any:
    """The procrastinate app that workers run (async connector: workers are asyncio)."""
    return _app(database_url, "worker")


def _deferring_app(database_url: str) -> Any:
    """The app whose sync calls run on the caller's connection: never opened, because an open
    async app (a worker in the same process) would run them on its own, async connections."""
    return _app(database_url, "defer")


@cache
def _app(database_url: str, role: str) -> Any:
    """One procrastinate app per catalog and role, with lora-hub's tasks. Not opened."""
    procrastinate = _procrastinate()
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=conninfo(database_url)))

    @app.task(name=TASK)
    def run_job(job_id: str) -> None:
        from lora_hub.jobs.worker import run_in_worker

        run_in_worker(database_url, job_id)

    # croniter's optional seconds field is the sixth, last one: "*/5 * * * * *" would be every
    # second of every fifth minute, and nothing in the four minutes between
    @app.periodic(cron=RETRY_CRON)
    @app.task(name="lorahub.retry_stalled", queue="any", pass_context=True)
    async def retry_stalled(context: Any, timestamp: int) -> None:
        await retry_stalled_jobs(app)

    return app


async def retry_stalled_jobs(app: Any, heartbeat_s: float = HEARTBEAT_S) -> int:
    """Put back in the queue every running job whose worker's heartbeat is older than
    ``STALLED_AFTER_BEATS`` heartbeats; returns how many."""
    stalled = await app.job_manager.get_stalled_jobs(
        task_name=TASK, seconds_since_heartbeat=heartbeat_s * STALLED_AFTER_BEATS
    )
    n = 0
    for job in stalled:
        log.warning("retrying job %s: its worker stopped beating", job.task_kwargs.get("job_id"))
        await app.job_manager.retry_job(job)
        n += 1
    return n


def defer(database_url: str, connection: Any, job_id: str, *, queue: str, lock: str) -> int | None:
    """Queue ``lorahub.run_job(job_id)`` on ``connection`` (a psycopg connection inside the
    caller's transaction): both commit, or neither. Returns procrastinate's job id."""
    procrastinate = _procrastinate()
    app = _deferring_app(database_url)
    try:
        # on the caller's connection: no pool of procrastinate's own to open (that cost 20 ms a call)
        job_id_q = (
            app.tasks[TASK].configure(queue=queue, queueing_lock=lock, connection=connection).defer(job_id=job_id)
        )
    except procrastinate.exceptions.AlreadyEnqueued:
        raise ConflictError(
            "an identical job is already in the queue without its catalog row",
            hint="cancel it with `procrastinate` or wait for it, then submit again",
        ) from None
    return int(job_id_q) if job_id_q is not None else None


def cancel_queued(database_url: str, connection: Any, queue_job_id: int) -> bool:
    """Take a job off the queue if no worker has it yet, on ``connection`` (inside the caller's
    transaction); True if it was taken off."""
    app = _deferring_app(database_url)
    return bool(app.job_manager.cancel_job_by_id(queue_job_id, connection=connection))


def ensure_schema(database_url: str) -> list[str]:
    """Install procrastinate's schema if the catalog's migrations ran without procrastinate, or
    upgrade it to the installed procrastinate (``lora_hub.jobs.schema``); the migrations applied."""
    import psycopg

    from lora_hub.jobs.schema import upgrade_queue_schema

    with psycopg.connect(conninfo(database_url)) as conn:
        conn.execute("SELECT pg_advisory_xact_lock(271828182)")
        return upgrade_queue_schema(conn)


def queue_schema_version(database_url: str) -> str | None:
    """The key of the last procrastinate migration the queue schema includes (None: not recorded)."""
    import psycopg

    from lora_hub.jobs.schema import recorded_version

    with psycopg.connect(conninfo(database_url)) as conn:
        return recorded_version(conn)
