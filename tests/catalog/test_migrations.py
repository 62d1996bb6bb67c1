"""The Alembic migrations agree with the models, ship in the wheel, and refuse a newer schema."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text

from lora_hub.catalog import HEAD_REVISION, Database
from lora_hub.catalog.db import migrations_dir
from lora_hub.catalog.tables import Base
from lora_hub.errors import CatalogError

ROOT = Path(__file__).resolve().parents[2]


def test_head_constant_matches_scripts() -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    assert ScriptDirectory.from_config(cfg).get_heads() == [HEAD_REVISION]


def ours(name: str | None, type_: str, parents: dict[str, str | None]) -> bool:
    """procrastinate's tables (the jobs queue, PostgreSQL only) are its own schema, not our models."""
    table = name if type_ == "table" else parents.get("table_name")
    # and lorahub_queue_schema records which of procrastinate's migrations that schema includes
    return not (table or "").startswith("procrastinate_") and table != "lorahub_queue_schema"


def test_migrated_schema_matches_models(catalog_url: str) -> None:
    db = Database(catalog_url)
    try:
        with db.engine.connect() as conn:
            opts = {"compare_type": True, "include_name": ours}
            diff = compare_metadata(MigrationContext.configure(conn, opts=opts), Base.metadata)
        assert diff == []
    finally:
        db.close()


def test_newer_schema_is_refused(catalog_url: str) -> None:
    db = Database(catalog_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    db.close()
    with pytest.raises(CatalogError, match="newer than this lora-hub"):
        Database(catalog_url)


def test_unreachable_database_is_a_clear_error() -> None:
    with pytest.raises(CatalogError, match="cannot use the catalog database") as info:
        Database("postgresql+psycopg://nobody@127.0.0.1:1/none")
    assert "LORAHUB_DATABASE_URL" in str(info.value)


def test_wheel_ships_the_migrations(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("lora_hub-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lora_hub/_migrations/env.py" in names
    assert "lora_hub/_migrations/versions/0001_initial.py" in names
    assert any(n.endswith("entry_points.txt") for n in names)
