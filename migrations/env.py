"""Alembic environment. lora-hub passes the connection in ``config.attributes["connection"]``;
run from the command line, ``sqlalchemy.url`` or ``LORAHUB_DATABASE_URL`` names the database."""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

from lora_hub.catalog.tables import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url") or os.environ["LORAHUB_DATABASE_URL"]
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()


def _ours(name, type_, parents) -> bool:  # type: ignore[no-untyped-def]
    """procrastinate's tables (the jobs queue, on PostgreSQL) are its schema, not our models:
    autogenerate must not propose dropping them."""
    table = name if type_ == "table" else parents.get("table_name")
    # and lorahub_queue_schema records which of procrastinate's migrations that schema includes
    return not (table or "").startswith("procrastinate_") and table != "lorahub_queue_schema"


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_name=_ours,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("lora-hub migrations run online only")
run_migrations_online()
