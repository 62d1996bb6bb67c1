"""The ``lorahub`` command line (``lora_hub.cli.main`` builds it)."""

from __future__ import annotations

import gc


def main() -> None:
    """The ``lorahub`` entry point. One command runs and the process exits, so the cyclic garbage
    collector is off: reference counting frees what a command drops, while the collector, at its
    default thresholds, would walk the million objects that importing torch, SQLAlchemy and
    pydantic create some 500 times (0.4 s of a 4 s merge). A long-running command (a server)
    turns it back on."""
    gc.disable()
    from lora_hub.cli.main import main as run

    run()
