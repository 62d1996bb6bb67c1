"""Engines, managed sessions and migrations.

- SQLite runs in WAL mode with a busy timeout and foreign keys on. Python's sqlite3 module is
  told to keep out of transactions, so that we issue ``BEGIN IMMEDIATE`` ourselves for sessions
  that write: the write lock is then taken up front, and two writers queue on the busy timeout
  instead of failing with "database is locked" when a read tries to become a write.
- One managed session per operation: commit on success, roll back on error, and database errors
  become ``CatalogError`` with a message that says what to do.
- Migrations are Alembic's, applied on first use under a lock (a file lock for SQLite, an
  advisory lock for Postgres), so that many processes starting at once migrate exactly once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.exc import ArgumentError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from lora_hub.errors import CatalogError, LoraHubError, SettingsError

HEAD_REVISION = "0010"
BUSY_TIMEOUT_S = 60
_PG_LOCK_KEY = 0x10_2A_4B_00  # advisory lock id for migrations


def migrations_dir() -> Path:
    """Inside a wheel the migrations ship as ``lora_hub/_migrations``; in a checkout they sit at
    the top level."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise CatalogError("the Alembic migrations are missing from this installation", hint="reinstall lora-hub")


def parse_url(url: str) -> URL:
    """``url`` parsed, or a ``SettingsError`` that says which setting is wrong."""
    try:
        return make_url(url)
    except ArgumentError as exc:
        shown = url if len(url) <= 80 else url[:77] + "..."
        raise SettingsError(
            f"cannot read the catalog database URL {shown!r}",
            hint="set LORAHUB_DATABASE_URL to sqlite:///path/catalog.db or postgresql+psycopg://user@host/db",
        ) from exc


def make_url_safe(url: str) -> str:
    return parse_url(url).render_as_string(hide_password=True)


def _use_wal(cur: sqlite3.Cursor) -> None:
    """Put the database in WAL mode (it stays so: once done, this only reads the mode). SQLite
    does not wait on the busy timeout to change the journal mode: while another process holds
    a lock on a new catalog (the first one to open it, switching it to WAL or migrating it),
    the change fails at once with "database is locked". So retry, as the busy timeout would."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.002
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")  # ":memory:" answers "memory": fine
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)


def make_engine(url: str) -> Engine:
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see module docstring)
            cur = dbapi_conn.cursor()
            cur.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            _use_wal(cur)
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA foreign_keys = ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine
    if parsed.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    raise CatalogError(
        f"unsupported database URL {make_url_safe(url)}",
        hint="use sqlite:///path/catalog.db or postgresql+psycopg://user@host/db",
    )


# SQLite's messages for a full disk, a damaged or unwritable file, and a query over its limits.
_DISK = ("disk i/o error", "database or disk is full", "unable to open database file", "readonly database")
_TOO_BIG = ("expression tree is too large", "too many sql variables", "too many terms", "string or blob too big")


def translate(exc: SQLAlchemyError, url: str) -> CatalogError:
    detail = str(getattr(exc, "orig", exc) or exc).strip().splitlines()[0] if str(exc) else type(exc).__name__
    lowered = detail.lower()
    where = make_url_safe(url)
    if any(m in lowered for m in _TOO_BIG):
        return CatalogError(
            f"the catalog cannot run a query this large ({detail})", hint="use fewer --where conditions or values"
        )
    if any(m in lowered for m in _DISK):
        return CatalogError(
            f"cannot write or read the catalog database {where}: {detail}",
            hint="check that its disk has free space and that the file and its folder are writable",
        )
    if isinstance(exc, OperationalError):
        return CatalogError(
            f"cannot use the catalog database {where}: {detail}",
            hint="check LORAHUB_DATABASE_URL and that the server is running",
        )
    return CatalogError(
        f"the catalog database {where} refused an operation: {detail}",
        hint="rerun with LORAHUB_DEBUG=1; if the catalog was changed by hand or by another version, "
        "`lorahub db upgrade` may help",
    )


_BUMP = text("UPDATE catalog_generation SET value = value + 1 WHERE id = 1")
_GENERATION = text("SELECT value FROM catalog_generation WHERE id = 1")


class Database:
    """An engine with managed sessions. Creating one migrates the schema if it is behind."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        if migrate:
            self.ensure_schema()

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def session(self, *, write: bool = False, listed: bool = True) -> Iterator[Session]:
        """One unit of work. ``write=True`` takes SQLite's write lock at the start and, unless
        ``listed=False`` (it changes nothing a listing shows), increases the catalog generation
        in the same transaction, last, so that it is the last lock the transaction takes."""
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                if write and self.is_sqlite:
                    session.connection(execution_options={"sqlite_begin": "IMMEDIATE"})
                try:
                    yield session
                    if write and listed:
                        session.execute(_BUMP)
                    session.commit()
                except BaseException:
                    session.rollback()
                    raise
        except LoraHubError:
            raise
        except SQLAlchemyError as exc:
            raise translate(exc, self.url) from exc

    def generation(self) -> int:
        """The catalog generation: it has moved whenever something a listing shows may have
        changed (``session``)."""
        try:
            with self.engine.connect() as conn:
                return int(conn.execute(_GENERATION).scalar_one())
        except SQLAlchemyError as exc:
            raise translate(exc, self.url) from exc

    # --- migrations ---------------------------------------------------------------------------

    def current_revision(self) -> str | None:
        """Alembic's revision of the catalog, read directly: importing Alembic costs every
        command a tenth of a second, and it is only needed to migrate."""
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return None
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
                return rows[0] if len(rows) == 1 else None
        except SQLAlchemyError as exc:
            raise translate(exc, self.url) from exc

    def ensure_schema(self) -> None:
        if self.current_revision() != HEAD_REVISION:
            self.upgrade()

    def upgrade(self, target: str = "head") -> str | None:
        """Apply migrations up to ``target``; return the revision now current."""
        from alembic import command
        from alembic.config import Config
        from alembic.script import ScriptDirectory

        cfg = Config()
        cfg.set_main_option("script_location", str(migrations_dir()))
        known = {rev.revision for rev in ScriptDirectory.from_config(cfg).walk_revisions()}
        try:
            with self._migration_lock() as conn:
                from alembic.runtime.migration import MigrationContext

                current = MigrationContext.configure(conn).get_current_revision()
                if current is not None and current not in known:
                    raise CatalogError(
                        f"the catalog's schema ({current}) is newer than this lora-hub knows",
                        hint="upgrade lora-hub",
                    )
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, target)
                conn.commit()
                return MigrationContext.configure(conn).get_current_revision()
        except SQLAlchemyError as exc:
            raise translate(exc, self.url) from exc

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[Connection]:
        if self.is_sqlite:
            db_path = parse_url(self.url).database
            lock_path = f"{db_path}.migrate.lock" if db_path and db_path != ":memory:" else None
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644) if lock_path else None
            try:
                if fd is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                with self.engine.connect() as conn:
                    yield conn
            finally:
                if fd is not None:
                    os.close(fd)
        else:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
                conn.commit()
                try:
                    yield conn
                finally:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                    conn.commit()
