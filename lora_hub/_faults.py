"""Fault injection for the crash tests: ``LORAHUB_TEST_HANG_AT=<point>`` makes the process stop
at that point, write ``LORAHUB_TEST_HANG_FILE`` and wait there to be killed. Unset, a checkpoint
is one dictionary lookup."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def checkpoint(point: str) -> None:
    if os.environ.get("LORAHUB_TEST_HANG_AT") != point:
        return
    marker = os.environ.get("LORAHUB_TEST_HANG_FILE")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    threading.Event().wait()  # until SIGKILL
