"""Job rows (lora_hub.catalog.jobs): a follower's ``done_waiter`` wakes when any job ends, on
PostgreSQL through ``NOTIFY`` at the end's commit (SQLite: it sleeps its time out)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from lora_hub.catalog import Catalog
from tests.conftest import Postgres

WAIT_S = 60.0  # what the waiter is given: it must return long before, once the job ends


@pytest.mark.postgres
def test_the_waiter_wakes_when_a_job_ends(postgres: Postgres) -> None:
    catalog = Catalog(postgres.new_database())
    try:
        job = catalog.jobs.create(kind="export", queue="cpu", request={"kind": "export"}, dedup_key="k")
        woke = threading.Event()
        with catalog.jobs.done_waiter() as wait:

            def follower() -> None:
                wait(WAIT_S)
                woke.set()

            thread = threading.Thread(target=follower, daemon=True)
            thread.start()
            catalog.jobs.report(job.id, {"step": "x"})  # progress wakes nobody
            assert not woke.wait(0.5)
            catalog.jobs.finish(job.id, "succeeded", result={}, message="done")
            assert woke.wait(WAIT_S / 2), "the waiter slept past the job's end"
            thread.join(5)
    finally:
        catalog.close()


def test_on_sqlite_the_waiter_is_a_sleep(tmp_path: Path) -> None:
    catalog = Catalog(f"sqlite:///{tmp_path}/c.db")
    try:
        with catalog.jobs.done_waiter() as wait:
            assert wait is time.sleep
    finally:
        catalog.close()
