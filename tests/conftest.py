"""Fixtures shared by the whole suite.

Catalog tests take the ``catalog_url`` fixture, which runs them once on SQLite and once on the
PostgreSQL server at ``LORAHUB_TEST_POSTGRES_URL`` (default: the local server's ``test``
database). Each Postgres test gets a fresh database cloned from a migrated template. Without a
reachable server the Postgres half is skipped with the reason shown, except where
``LORAHUB_REQUIRE_POSTGRES=1`` (CI), where it fails.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from lora_hub import Hub

# the loopback Hugging Face Hub (``hf_hub``); pytest takes plugins from the top-level conftest only
pytest_plugins = ["tests.hubsim.fixtures"]

PG_URL = os.environ.get("LORAHUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_PG = os.environ.get("LORAHUB_REQUIRE_POSTGRES", "") == "1"


class Postgres:
    """Creates throw-away databases on the test server."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        self.admin = create_engine(self.url, isolation_level="AUTOCOMMIT", pool_size=1)
        self.template: str | None = None
        self.created: list[str] = []

    def _url_for(self, db: str) -> str:
        return self.url.set(database=db).render_as_string(hide_password=False)

    def new_database(self, *, migrated: bool = True) -> str:
        name = f"lorahub_t_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            if migrated:
                if self.template is None:
                    self.template = f"lorahub_tmpl_{uuid.uuid4().hex[:8]}"
                    conn.execute(text(f'CREATE DATABASE "{self.template}"'))
                    self.created.append(self.template)
                    from lora_hub.catalog import Database

                    Database(self._url_for(self.template)).close()
                conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
            else:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self._url_for(name)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in reversed(self.created):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    try:
        pg = Postgres(PG_URL)
        with pg.admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {make_url(PG_URL).render_as_string()}: {type(exc).__name__}"
        if REQUIRE_PG:
            pytest.fail(f"{reason} (LORAHUB_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    yield pg
    pg.drop_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture
def hub(tmp_path: Path, catalog_url: str) -> Iterator[Hub]:
    with Hub(tmp_path / "home", database_url=catalog_url) as h:
        yield h


@pytest.fixture
def lorahub_env(tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for CLI tests and subprocesses: a private home, the parametrised catalog."""
    env = {"LORAHUB_HOME": str(tmp_path / "home"), "LORAHUB_DATABASE_URL": catalog_url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LORAHUB_URL", raising=False)
    monkeypatch.delenv("LORAHUB_STORE_URL", raising=False)
    monkeypatch.delenv("LORAHUB_DEBUG", raising=False)
    return env
