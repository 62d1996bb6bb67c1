"""Jobs (``lora_hub.core.jobs``): their rows, the transitions between states, and the hook that
defers the queue's job in the same transaction as the row (PostgreSQL)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from lora_hub.catalog.convert import aware
from lora_hub.catalog.db import Database
from lora_hub.catalog.tables import JobRow, utcnow
from lora_hub.errors import InvalidArgumentError, JobNotFoundError
from lora_hub.types import JOB_DONE, JobInfo, JobLogLine

ACTIVE = ("queued", "running")
DONE_CHANNEL = "lorahub_job_done"  # NOTIFY'd with the job's id when a job ends (PostgreSQL)
MAX_LOG = 200  # lines kept per job


def _info(row: JobRow, *, joined: bool = False) -> JobInfo:
    return JobInfo(
        id=row.id,
        kind=row.kind,
        queue=row.queue,
        state=row.state,
        request=row.request,
        dedup_key=row.dedup_key,
        progress=row.progress,
        result=row.result,
        error=row.error,
        log=[JobLogLine(at=datetime.fromisoformat(e["at"]), message=e["message"]) for e in row.log or []],
        cancel_requested=row.cancel_requested,
        attempts=row.attempts,
        worker=row.worker,
        created_at=aware(row.created_at),
        started_at=aware(row.started_at) if row.started_at else None,
        finished_at=aware(row.finished_at) if row.finished_at else None,
        joined=joined,
    )


def _line(message: str) -> dict[str, Any]:
    return {"at": utcnow().isoformat(), "message": message}


class Jobs:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        *,
        kind: str,
        queue: str,
        request: dict[str, Any],
        dedup_key: str,
        defer: Callable[[Any, str], int | None] | None = None,
    ) -> JobInfo:
        """A new queued job, or the active job with the same ``dedup_key`` (``joined``).
        ``defer(driver_connection, job_id)`` puts it in the queue inside the same transaction,
        so that a queued job always has its row and a row is never left without its job."""
        active_q = select(JobRow).where(JobRow.dedup_key == dedup_key, JobRow.state.in_(ACTIVE))
        for _ in range(3):
            with self.db.session(write=True, listed=False) as s:
                active = s.scalars(active_q).first()
                if active is not None:
                    return _info(active, joined=True)
                row = JobRow(
                    id=secrets.token_hex(8),
                    kind=kind,
                    queue=queue,
                    state="queued",
                    request=request,
                    dedup_key=dedup_key,
                    log=[_line(f"submitted to the {queue} queue")],
                    cancel_requested=False,
                    attempts=0,
                    created_at=utcnow(),
                )
                try:
                    with s.begin_nested():  # the unique index on active requests decides a race here
                        s.add(row)
                        s.flush()
                except IntegrityError:
                    # an identical request was committed meanwhile (each statement sees the latest commits)
                    active = s.scalars(active_q).first()
                    if active is not None:
                        return _info(active, joined=True)
                    continue
                if defer is not None:
                    row.queue_job_id = defer(s.connection().connection.driver_connection, row.id)
                return _info(row)
        raise InvalidArgumentError("could not submit the job: identical requests kept racing; submit it again")

    def get(self, job_id: str) -> JobInfo:
        with self.db.session() as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(job_id)
            return _info(row)

    def recent(self, *, state: str | None = None, limit: int = 50) -> list[JobInfo]:
        """Newest first."""
        with self.db.session() as s:
            q = select(JobRow).order_by(JobRow.created_at.desc(), JobRow.id).limit(limit)
            if state is not None:
                q = q.where(JobRow.state == state)
            return [_info(r) for r in s.scalars(q)]

    def claim(self, job_id: str, worker: str) -> JobInfo | None:
        """Mark the job running on ``worker`` (again, after a worker died); None if it is done or
        was cancelled while queued."""
        with self.db.session(write=True, listed=False) as s:
            row = s.get(JobRow, job_id, with_for_update=not self.db.is_sqlite)
            if row is None or row.state in JOB_DONE:
                return None
            if row.cancel_requested:
                self._finish(s, row, "cancelled", message="cancelled before it started")
                return None
            again = row.state == "running"
            row.state, row.worker, row.attempts = "running", worker, row.attempts + 1
            row.started_at, row.progress = utcnow(), None
            self._log(row, f"{'restarted' if again else 'started'} on {worker} (attempt {row.attempts})")
            return _info(row)

    def report(self, job_id: str, progress: dict[str, Any], message: str | None = None) -> bool:
        """Store the running step's progress; returns whether a cancel was requested."""
        with self.db.session(write=True, listed=False) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                return True
            row.progress = progress
            if message:
                self._log(row, message)
            return row.cancel_requested

    def finish(
        self,
        job_id: str,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str,
    ) -> JobInfo:
        with self.db.session(write=True, listed=False) as s:
            row = s.get(JobRow, job_id)
            if row is None:
                raise JobNotFoundError(job_id)
            self._finish(s, row, state, result=result, error=error, message=message)
            return _info(row)

    def request_cancel(self, job_id: str, *, cancel_queued: Callable[[Any, int], bool] | None = None) -> JobInfo:
        """Ask the job to stop: a queued job is cancelled at once (``cancel_queued(driver_connection,
        queue_job_id)`` takes it off the queue in the same transaction); a running one stops at its
        next progress report."""
        with self.db.session(write=True, listed=False) as s:
            row = s.get(JobRow, job_id, with_for_update=not self.db.is_sqlite)
            if row is None:
                raise JobNotFoundError(job_id)
            if row.state in JOB_DONE:
                return _info(row)
            row.cancel_requested = True
            if row.state == "queued" and (
                cancel_queued is None
                or row.queue_job_id is None
                or cancel_queued(s.connection().connection.driver_connection, row.queue_job_id)
            ):
                self._finish(s, row, "cancelled", message="cancelled while queued")
            else:
                self._log(row, "cancel requested")
            return _info(row)

    @staticmethod
    def _log(row: JobRow, message: str) -> None:
        row.log = [*(row.log or []), _line(message)][-MAX_LOG:]

    def _finish(
        self,
        s: Session,
        row: JobRow,
        state: str,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
        message: str,
    ) -> None:
        row.state, row.result, row.error, row.finished_at = state, result, error, utcnow()
        self._log(row, message)
        if not self.db.is_sqlite:  # delivered at commit, to the followers of ``done_waiter``
            s.execute(text("SELECT pg_notify(:channel, :id)"), {"channel": DONE_CHANNEL, "id": row.id})

    @contextmanager
    def done_waiter(self) -> Iterator[Callable[[float], None]]:
        """A ``wait(seconds)`` for a follower: it returns after ``seconds``, or as soon as any job
        ends (on PostgreSQL, a ``NOTIFY`` at the end's commit, on a connection of its own), so that
        a follower sees its job's end within milliseconds rather than at its next poll."""
        if self.db.is_sqlite:
            yield time.sleep
            return
        import psycopg

        dsn = self.db.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error:  # the follower polls as it would without notifications
            yield time.sleep
            return
        with conn:
            conn.execute(f"LISTEN {DONE_CHANNEL}")

            def wait(seconds: float) -> None:
                for _ in conn.notifies(timeout=seconds, stop_after=1):
                    pass

            yield wait
