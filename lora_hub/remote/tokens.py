"""The token file of ``lorahub login``: ``{"<server URL>": "<token>"}`` in ``LORAHUB_TOKEN_FILE``
(default ``$LORAHUB_HOME/tokens.json``), readable by its owner only."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

from lora_hub.errors import SettingsError
from lora_hub.settings import Settings


def _file(settings: Settings) -> Path:
    return settings.token_file or settings.home / "tokens.json"


def _load(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SettingsError(
            f"cannot read the token file {path}: {exc}", hint="delete it and run `lorahub login` again"
        ) from None
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def read_token(settings: Settings, url: str) -> str | None:
    """The token saved for ``url``, if any."""
    return _load(_file(settings)).get(url.rstrip("/"))


def save_token(settings: Settings, url: str, token: str) -> Path:
    """Save ``token`` for ``url`` (mode 0600, written to a temporary file and renamed)."""
    path = _file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = _load(path)
    data[url.rstrip("/")] = token
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(fd, "w", closefd=False) as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path
