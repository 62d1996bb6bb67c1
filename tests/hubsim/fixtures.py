"""The ``hf_hub`` pytest fixture: a fresh :class:`HubSim` per test, with the client isolated from the user's setup.

Use it from any test module with::

    from tests.hubsim.fixtures import hf_hub  # noqa: F401

and take ``hf_hub`` as an argument. ``isolate_hf_client(monkeypatch, home)`` is the isolation alone, for tests
that build their own :class:`HubSim`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import HubSim

_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_ENDPOINT", "HF_HUB_OFFLINE")


def isolate_hf_client(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Points ``huggingface_hub`` at a private ``HF_HOME`` with Xet, telemetry and offline mode off and no token.

    ``huggingface_hub.constants`` reads the environment at import time (and the package is usually imported
    already, by transformers or peft), so the constants are patched as well as the environment.
    """
    from huggingface_hub import constants
    from huggingface_hub.utils import _http

    home.mkdir(parents=True, exist_ok=True)
    for name in (*_TOKEN_ENV, "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    env = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    patched = {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_OFFLINE": False,
    }
    for name, value in patched.items():
        if hasattr(constants, name):
            monkeypatch.setattr(constants, name, value)
    # a pooled connection to a previous test's (stopped) emulator must not be reused
    _http.close_session()


@pytest.fixture
def hf_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubSim]:
    """A running emulator on 127.0.0.1 (free port), state in memory, with the default alice/bob tokens."""
    from huggingface_hub.utils import _http

    isolate_hf_client(monkeypatch, tmp_path / "hf_home")
    hub = HubSim().start()
    try:
        yield hub
    finally:
        hub.stop()
        _http.close_session()
