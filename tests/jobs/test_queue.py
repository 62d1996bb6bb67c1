"""The queue's periodic retry of stalled jobs runs every 5 s at any hour: its schedule, read back
from the procrastinate app the workers run, gives fire times 5 s apart from any start."""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise

import pytest
from croniter import croniter

from lora_hub.jobs import queue


@pytest.mark.parametrize("start", ["2026-12-05 16:31:00", "2026-12-05 16:35:00", "2026-12-05 16:59:58"])
def test_the_stalled_job_retry_runs_every_five_seconds(start: str) -> None:
    app = queue.app_for("postgresql+psycopg://u@127.0.0.1:1/never-opened")
    (task,) = [t for t in app.periodic_registry.periodic_tasks.values() if t.task.name == "lorahub.retry_stalled"]
    fires = croniter(task.cron, datetime.fromisoformat(start))
    times = [fires.get_next(datetime) for _ in range(13)]  # a minute's worth, across a minute's end
    assert times[0] - datetime.fromisoformat(start) <= timedelta(seconds=5)
    assert {b - a for a, b in pairwise(times)} == {timedelta(seconds=5)}
