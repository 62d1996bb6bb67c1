"""The in-process worker of ``lorahub serve`` on SQLite (one machine, no queue): one thread that
runs the server's jobs one at a time, in the order they came. A job left queued or running by a
server that stopped is run again when the next one starts (``resume``)."""

from __future__ import annotations

import logging
import queue
import threading

from lora_hub._context import Context
from lora_hub.core import jobs

log = logging.getLogger("lora_hub.jobs")
_STOP = ""


class InProcessWorker:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._todo: queue.Queue[str] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def put(self, job_id: str) -> None:
        """Run the job after those before it (starts the thread on first use)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="lorahub-jobs", daemon=True)
                self._thread.start()
        self._todo.put(job_id)

    def resume(self) -> int:
        """Hand every job that a stopped server left queued or running to this worker; how many."""
        left = [j for state in ("running", "queued") for j in self.ctx.catalog.jobs.recent(state=state, limit=10_000)]
        for job in sorted(left, key=lambda j: j.created_at):
            self.put(job.id)
        return len(left)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Stop after the running job (queued ones stay queued, for the next server to resume)."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        with self._todo.mutex:
            self._todo.queue.clear()
        self._todo.put(_STOP)
        thread.join(timeout_s)

    def _loop(self) -> None:
        while True:
            job_id = self._todo.get()
            if job_id == _STOP:
                return
            try:
                jobs.run(self.ctx, job_id)
            except Exception:  # the job's own failures are its state; this is the catalog failing
                log.exception("job %s could not be run", job_id)
