"""procrastinate's schema is installed and upgraded with the catalog's migrations (``lorahub db upgrade``), on
PostgreSQL: the version recorded is the newest migration procrastinate ships, and migrations newer than the
recorded one are applied in order, once."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from lora_hub.cli.main import app
from lora_hub.jobs import queue, schema
from tests.conftest import Postgres

pytestmark = pytest.mark.postgres


def _newest_shipped() -> str:
    import importlib.resources

    names = [
        p.name for p in importlib.resources.files("procrastinate.sql.migrations").iterdir() if p.name[:2].isdigit()
    ]
    return max(names)[: len("00.00.00_00")]


def test_db_upgrade_installs_the_queue_schema_and_records_its_version(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres.new_database(migrated=False)
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", url)
    result = CliRunner().invoke(app, ["db", "upgrade", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["queue_schema"] == _newest_shipped()
    with psycopg.connect(queue.conninfo(url)) as conn:
        assert schema.has_queue_schema(conn)
    again = CliRunner().invoke(app, ["db", "upgrade"])
    assert again.exit_code == 0 and f"job queue schema (procrastinate) at {_newest_shipped()}" in again.output
    assert "applied" not in again.output


def test_newer_migrations_are_applied_in_order_once(postgres: Postgres) -> None:
    url = postgres.new_database()
    fake = [
        ("00.00.01_01", "CREATE TABLE lorahub_t_one (x int)"),
        ("98.00.00_01", "CREATE TABLE lorahub_t_two (x int)"),
        ("99.00.00_50", "INSERT INTO lorahub_t_two VALUES (1)"),
    ]
    with psycopg.connect(queue.conninfo(url)) as conn:
        assert schema.has_queue_schema(conn)  # installed by the catalog's migrations
        recorded = schema.recorded_version(conn)
        assert recorded is not None and recorded < "98"
        applied = schema.upgrade_queue_schema(conn, fake)
        assert applied == ["98.00.00_01", "99.00.00_50"]  # the older one is already in the schema
        assert schema.recorded_version(conn) == "99.00.00_50"
        assert conn.execute("SELECT count(*) FROM lorahub_t_two").fetchone() == (1,)
        assert conn.execute("SELECT to_regclass('public.lorahub_t_one')").fetchone() == (None,)
        assert schema.upgrade_queue_schema(conn, fake) == []  # once


def test_a_failing_migration_leaves_the_recorded_version(postgres: Postgres) -> None:
    url = postgres.new_database()
    with psycopg.connect(queue.conninfo(url)) as conn:
        before = schema.recorded_version(conn)
    with psycopg.connect(queue.conninfo(url)) as conn, pytest.raises(psycopg.Error):
        schema.upgrade_queue_schema(
            conn, [("98.00.00_01", "CREATE TABLE lorahub_t_ok (x int)"), ("99.00.00_01", "NOT SQL")]
        )
    with psycopg.connect(queue.conninfo(url)) as conn:
        assert schema.recorded_version(conn) == before
        assert conn.execute("SELECT to_regclass('public.lorahub_t_ok')").fetchone() == (None,)
