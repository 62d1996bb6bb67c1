"""``lorahub serve`` runs ``serving_app``: the app whose heap is frozen once started, so that the
collector's full passes do not walk every imported module while requests wait."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app

_CHILD = """
import gc
from fastapi.testclient import TestClient
from lora_hub.service import create_app, serving_app
make = serving_app if FREEZE else create_app
before = gc.get_freeze_count()
with TestClient(make()) as c:
    assert c.get("/healthz").status_code == 200
    print(before, gc.get_freeze_count())
"""


@pytest.mark.parametrize("freeze", [True, False])
def test_the_serving_app_freezes_its_heap_once_started(tmp_path: Path, freeze: bool) -> None:
    """In a child process: a frozen heap is never collected, so the test process must not freeze."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    env.update(LORAHUB_HOME=str(tmp_path / "home"))
    code = f"FREEZE = {freeze}\n" + _CHILD
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split())
    assert before == 0
    assert (after > 10_000) if freeze else (after == 0), (before, after)


def test_lorahub_serve_runs_the_serving_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    seen: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda target, **kw: seen.update(target=target, **kw))
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    for key in ("LORAHUB_URL", "LORAHUB_DATABASE_URL", "LORAHUB_STORE_URL"):
        monkeypatch.delenv(key, raising=False)
    result = CliRunner().invoke(app, ["serve", "--port", "18080", "--workers", "3"])
    assert result.exit_code == 0, result.output
    assert seen["target"] == "lora_hub.service:serving_app" and seen["factory"] is True
    assert seen["workers"] == 3 and seen["port"] == 18080
