"""``lorahub worker``: a procrastinate worker that runs lora-hub's jobs (``lora_hub.core.jobs``).

One process per GPU (``--queue gpu``, ``CUDA_VISIBLE_DEVICES`` to pick it) and CPU workers for
the rest (``--queue cpu``); both also take jobs whose device is auto (queue ``any``). Jobs run
in worker threads of the process (procrastinate runs sync tasks in threads), against one
``WorkerContext`` per process: the same settings (home, store) as the CLI's, with stored blobs
read through a bounded local cache when the store is S3 (``lora_hub.store.cache``).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from lora_hub.core import jobs
from lora_hub.jobs import queue
from lora_hub.settings import Settings

_settings: dict[str, Settings] = {}  # by catalog URL: what run_worker was given
_contexts: dict[str, jobs.WorkerContext] = {}
_lock = threading.Lock()


def _context(database_url: str) -> jobs.WorkerContext:
    with _lock:
        if database_url not in _contexts:
            settings = _settings.get(database_url) or Settings.from_env(database_url=database_url)
            _contexts[database_url] = jobs.WorkerContext(settings)
        return _contexts[database_url]


def run_in_worker(database_url: str, job_id: str) -> None:
    """The task's body: run the job on this process's context."""
    jobs.run(_context(database_url), job_id)


def default_queues(name: str | None) -> list[str]:
    """``gpu`` on a machine with CUDA, else ``cpu``; each also takes ``any``."""
    if name is None:
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    if name not in queue.QUEUES:
        from lora_hub.errors import InvalidArgumentError

        raise InvalidArgumentError(f"unknown queue {name!r}", hint="use --queue cpu or --queue gpu")
    return [name] if name == "any" else [name, "any"]


def run_worker(
    settings: Settings,
    *,
    queues: Sequence[str],
    concurrency: int = 1,
    wait: bool = True,
    heartbeat_s: float = queue.HEARTBEAT_S,
) -> None:
    """Run jobs until stopped (SIGINT/SIGTERM: the running jobs finish first), or, with
    ``wait=False``, until the queues are empty."""
    queue.ensure_schema(settings.database_url)
    _settings[settings.database_url] = settings
    app = queue.app_for(settings.database_url)
    queue.log.info("worker on queues %s, %d at a time%s", ", ".join(queues), concurrency,
                   "" if wait else ", until the queue is empty")  # fmt: skip
    app.run_worker(
        queues=list(queues),
        concurrency=concurrency,
        wait=wait,
        update_heartbeat_interval=heartbeat_s,
        stalled_worker_timeout=heartbeat_s * queue.STALLED_AFTER_BEATS,
        install_signal_handlers=threading.current_thread() is threading.main_thread(),
        # the catalog's jobs table keeps every job's state; the queue keeps only what is pending
        delete_jobs="successful",
    )
    queue.log.info("worker stopped")
