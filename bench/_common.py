"""The start that the push/pull and list benchmarks' main() share: SIGTERM handling and the common options."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def main_parser(doc: str | None, workdir: Path) -> argparse.ArgumentParser:
    """Make SIGTERM exit through ``sys.exit`` (so that main's ``finally:`` clean-up runs) and return an
    argument parser that shows the script's docstring, with ``--workdir`` (default ``workdir``)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=workdir, help="scratch folder")
    return ap


def add_max_wait(ap: argparse.ArgumentParser, before_each: str) -> None:
    """``--max-wait``: how long ``_envinfo.wait_quiet`` may wait for a quiet machine before each measurement."""
    ap.add_argument(
        "--max-wait",
        type=float,
        default=300.0,
        help=f"before each {before_each}, wait up to this many seconds for the CPUs to be <15%% busy (0: don't wait)",
    )
