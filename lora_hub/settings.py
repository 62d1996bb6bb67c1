"""Where lora-hub keeps its things, read from the environment.

| variable                | default                              | meaning                          |
|-------------------------|--------------------------------------|----------------------------------|
| ``LORAHUB_HOME``        | ``~/.lorahub``                       | home folder (catalog, blobs)     |
| ``LORAHUB_DATABASE_URL``| ``sqlite:///$LORAHUB_HOME/catalog.db`` | SQLAlchemy URL of the catalog  |
| ``LORAHUB_STORE_URL``   | ``file://$LORAHUB_HOME/blobs``       | where blobs live                 |
| ``LORAHUB_URL``         | unset                                | a lorahub server: every command  |
|                         |                                      | talks to it (``lora_hub.remote``)|
| ``LORAHUB_TOKEN``       | unset                                | bearer token for ``LORAHUB_URL`` |
| ``LORAHUB_TOKEN_FILE``  | ``$LORAHUB_HOME/tokens.json``        | tokens saved by ``lorahub login``|
| ``LORAHUB_ANONYMOUS_READ``| ``0``                              | server: ``1`` lets requests      |
|                         |                                      | without a token read (pull/list) |
| ``LORAHUB_MAX_UPLOAD_BYTES``| ``21474836480`` (20 GiB)         | server: largest blob accepted    |
| ``LORAHUB_MAX_UPLOADS``| ``64``                               | server: uploads one process takes|
|                         |                                      | at once; more are answered 429   |
|                         |                                      | with ``Retry-After``             |
| ``LORAHUB_DEBUG``       | unset                                | ``1``: the CLI shows tracebacks  |
| ``LORAHUB_PROGRESS``    | unset                                | ``1``: progress as plain lines   |
|                         |                                      | when stderr is not a terminal    |
| ``LORAHUB_DIRECT_IO``   | ``1``                                | ``0``: merges, pulls, stored     |
|                         |                                      | blobs and received uploads write |
|                         |                                      | through the page cache (see      |
|                         |                                      | ``merge.writer``, ``_direct``)   |
| ``LORAHUB_TORCH_THREADS``| cores - 1 (at least 1)              | torch threads of a CPU merge     |
| ``LORAHUB_WORKER_HEARTBEAT_S``| ``10``                         | ``lorahub worker``: heartbeat;   |
|                         |                                      | silent 3 beats = dead, its jobs  |
|                         |                                      | retried (``lora_hub.jobs.queue``)|
| ``LORAHUB_CACHE_DIR``   | ``$LORAHUB_HOME/cache/blobs``        | ``lorahub worker`` on an S3      |
|                         |                                      | store: local copies of blobs     |
|                         |                                      | (``lora_hub.store.cache``)       |
| ``LORAHUB_CACHE_MAX_BYTES``| ``53687091200`` (50 GiB)          | its bound; least recently used   |
|                         |                                      | blobs are evicted first          |

With ``LORAHUB_STORE_URL=s3://bucket/prefix`` (``lora_hub.store.s3``), the endpoint, region and
credentials are the standard AWS variables, read by boto3: ``AWS_ENDPOINT_URL``, ``AWS_REGION``
(or ``AWS_DEFAULT_REGION``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
``AWS_PROFILE``, and ``AWS_REQUEST_CHECKSUM_CALCULATION`` / ``AWS_RESPONSE_CHECKSUM_VALIDATION``
(lora-hub sets both to ``when_required`` itself, which S3-compatible servers need).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lora_hub.errors import SettingsError


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    store_url: str
    server_url: str | None = None
    token: str | None = None
    direct_io: bool = True
    torch_threads: int | None = None
    token_file: Path | None = None
    anonymous_read: bool = False
    max_upload_bytes: int = 20 << 30
    max_uploads: int = 64
    cache_dir: Path | None = None  # None: $LORAHUB_HOME/cache/blobs
    cache_max_bytes: int = 50 << 30

    @classmethod
    def from_env(
        cls,
        *,
        home: str | os.PathLike[str] | None = None,
        database_url: str | None = None,
        store_url: str | None = None,
    ) -> Settings:
        """Explicit arguments win over the environment, which wins over the defaults."""
        env = os.environ
        home_path = Path(home or env.get("LORAHUB_HOME") or Path.home() / ".lorahub").expanduser().absolute()
        if home_path.exists() and not home_path.is_dir():
            raise SettingsError(
                f"LORAHUB_HOME ({home_path}) is a file, not a folder",
                hint="point LORAHUB_HOME at a folder (it is created if missing)",
            )
        return cls(
            home=home_path,
            database_url=database_url or env.get("LORAHUB_DATABASE_URL") or f"sqlite:///{home_path / 'catalog.db'}",
            store_url=store_url or env.get("LORAHUB_STORE_URL") or f"file://{home_path / 'blobs'}",
            server_url=env.get("LORAHUB_URL") or None,
            token=env.get("LORAHUB_TOKEN") or None,
            direct_io=env.get("LORAHUB_DIRECT_IO", "1").lower() not in ("0", "false", "no"),
            torch_threads=_positive_int(env, "LORAHUB_TORCH_THREADS"),
            token_file=Path(env.get("LORAHUB_TOKEN_FILE") or home_path / "tokens.json").expanduser().absolute(),
            anonymous_read=env.get("LORAHUB_ANONYMOUS_READ", "0").lower() in ("1", "true", "yes"),
            max_upload_bytes=_positive_int(env, "LORAHUB_MAX_UPLOAD_BYTES") or 20 << 30,
            max_uploads=_positive_int(env, "LORAHUB_MAX_UPLOADS") or 64,
            cache_dir=Path(env["LORAHUB_CACHE_DIR"]).expanduser().absolute() if env.get("LORAHUB_CACHE_DIR") else None,
            cache_max_bytes=_positive_int(env, "LORAHUB_CACHE_MAX_BYTES") or 50 << 30,
        )


def _positive_int(env: os._Environ[str] | dict[str, str], key: str) -> int | None:
    raw = env.get(key, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise SettingsError(f"{key} must be a positive whole number, got {raw!r}", hint=f"unset {key} for the default")
    return int(raw)
