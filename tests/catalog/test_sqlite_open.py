"""Opening a new SQLite catalog while another process holds a lock on it waits, as every other
SQLite operation here does, instead of failing with "database is locked": SQLite's own busy
timeout does not cover the switch to WAL mode that the first connection makes."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy import text

from lora_hub.catalog import HEAD_REVISION, Database

HOLD_S = 0.5  # how long the other "process" holds its lock: well under the busy timeout


def test_a_new_catalog_opens_while_another_connection_holds_it_locked(tmp_path: Path) -> None:
    path = tmp_path / "catalog.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    # A writer on the new file, still in rollback-journal mode (as the first process to open a
    # catalog is while it switches it to WAL): SQLite refuses a journal mode change meanwhile
    # at once, without its busy timeout.
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE held (x)")
    release = threading.Timer(HOLD_S, lambda: other.execute("COMMIT"))
    release.start()
    try:
        db = Database(f"sqlite:///{path}")
        try:
            with db.engine.connect() as conn:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert db.current_revision() == HEAD_REVISION
        finally:
            db.close()
    finally:
        release.join()
        other.close()
