"""procrastinate's schema in the catalog's PostgreSQL database, installed by the catalog's
migrations (``lorahub db upgrade``) when procrastinate is installed, else by the first worker,
and upgraded the same way when a newer procrastinate is installed.

procrastinate ships its full schema (``schema.sql``) and, for every release that changed it, one or
more migration files (``procrastinate/sql/migrations/<MM.mm.pp>_<NN>_<pre|post>_<what>.sql``, applied
in name order). It does not record which of them a database has: lora-hub does, in a one-row table
``lorahub_queue_schema``, the key (``MM.mm.pp_NN``) of the last migration the schema includes.
Installing the full schema records the newest key of the installed procrastinate; upgrading
applies, in order, every migration newer than the recorded key, and records each as it goes, in
the caller's transaction (all or nothing). procrastinate's "pre" and "post" migrations are both
applied at upgrade: lora-hub's workers are upgraded with lora-hub, not rolled one by one.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

QUEUE_TABLE = "procrastinate_jobs"
VERSION_TABLE = "lorahub_queue_schema"
_MIGRATION = re.compile(r"^(\d{2}\.\d{2}\.\d{2}_\d{2})_(?:pre|post)_[A-Za-z0-9_]+\.sql$")


def queue_schema_sql() -> str | None:
    """procrastinate's schema (its own ``schema.sql``), or None without procrastinate."""
    try:
        from procrastinate.schema import SchemaManager
    except ImportError:
        return None
    return str(SchemaManager.get_schema())


def queue_migrations() -> list[tuple[str, str]]:
    """(key, SQL) of every schema migration the installed procrastinate ships, oldest first."""
    import importlib.resources

    try:
        folder = importlib.resources.files("procrastinate.sql.migrations")
    except ModuleNotFoundError:
        return []
    found = []
    for entry in folder.iterdir():
        m = _MIGRATION.match(entry.name)
        if m:
            found.append((m.group(1), entry.name, entry.read_text(encoding="utf-8")))
    return [(key, sql) for key, _, sql in sorted(found)]


def _ensure_version_table(conn: Any) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version text NOT NULL)")


def recorded_version(conn: Any) -> str | None:
    """The key of the last procrastinate migration this database's queue schema includes."""
    if not _has_table(conn, VERSION_TABLE):
        return None
    row = conn.execute(f"SELECT version FROM {VERSION_TABLE}").fetchone()
    return str(row[0]) if row else None


def _record(conn: Any, key: str) -> None:
    _ensure_version_table(conn)
    conn.execute(f"DELETE FROM {VERSION_TABLE}")
    conn.execute(f"INSERT INTO {VERSION_TABLE} (version) VALUES (%s)", (key,))


def install_queue_schema(driver_connection: Any) -> bool:
    """Run procrastinate's schema on a psycopg connection (inside the caller's transaction) and
    record it as including every migration procrastinate ships; False when procrastinate is not
    installed (``lorahub worker`` installs it then, on first start)."""
    sql = queue_schema_sql()
    if sql is None:
        return False
    # psycopg runs a parameterless string as is: several statements, % and : untouched
    driver_connection.execute(sql)
    migrations = queue_migrations()
    if migrations:
        _record(driver_connection, migrations[-1][0])
    return True


def upgrade_queue_schema(driver_connection: Any, migrations: Iterable[tuple[str, str]] | None = None) -> list[str]:
    """Bring the queue schema up to the installed procrastinate (inside the caller's transaction):
    install it when missing, else apply the migrations newer than the recorded key. Returns the
    keys applied (``["schema"]`` for a fresh install). A schema installed before lora-hub recorded
    versions is taken to be the installed procrastinate's (the only one lora-hub ever installed)."""
    if not has_queue_schema(driver_connection):
        return ["schema"] if install_queue_schema(driver_connection) else []
    available = list(queue_migrations() if migrations is None else migrations)
    current = recorded_version(driver_connection)
    if current is None:
        if available:
            _record(driver_connection, available[-1][0])
        return []
    applied = []
    for key, sql in available:
        if key > current:
            driver_connection.execute(sql)
            _record(driver_connection, key)
            applied.append(key)
    return applied


def has_queue_schema(driver_connection: Any) -> bool:
    return _has_table(driver_connection, QUEUE_TABLE)


def _has_table(conn: Any, name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()
    return bool(row and row[0])
