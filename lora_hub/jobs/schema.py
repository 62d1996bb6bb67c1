"""procrastinate's schema in the catalog's PostgreSQL database, installed by the catalog's
migrations (``lorahub db upgrade``) when procrastinate is installed, else by the first worker."""

from __future__ import annotations

from typing import Any

QUEUE_TABLE = "procrastinate_jobs"


def queue_schema_sql() -> str | None:
    """procrastinate's schema (its own ``schema.sql``), or None without procrastinate."""
    try:
        from procrastinate.schema import SchemaManager
    except ImportError:
        return None
    return str(SchemaManager.get_schema())


def install_queue_schema(driver_connection: Any) -> bool:
    """Run procrastinate's schema on a psycopg connection (inside the caller's transaction); False
    when procrastinate is not installed (``lorahub worker`` installs it then, on first start)."""
    sql = queue_schema_sql()
    if sql is None:
        return False
    # psycopg runs a parameterless string as is: several statements, % and : untouched
    driver_connection.execute(sql)
    return True


def has_queue_schema(driver_connection: Any) -> bool:
    row = driver_connection.execute("SELECT to_regclass('public.procrastinate_jobs') IS NOT NULL").fetchone()
    return bool(row and row[0])
