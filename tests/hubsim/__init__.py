"""A loopback Hugging Face Hub emulator for tests and benchmarks (see README.md in this folder).

Names are imported lazily so that ``python -m tests.hubsim.server`` does not import the module twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_TOKENS", "HubError", "HubSim", "LogEntry", "Token", "git_blob_oid", "lfs_pointer"]


def __getattr__(name: str) -> Any:
    if name in ("DEFAULT_TOKENS", "HubSim", "LogEntry", "Token"):
        from . import server

        return getattr(server, name)
    if name in ("HubError", "git_blob_oid", "lfs_pointer"):
        from . import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
