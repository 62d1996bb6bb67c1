"""scripts/safety_check.py: user trial 2's destructive cases (rows 1-3) as real `lorahub` processes,
with the scratch area's file tree and hashes compared around each one."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "safety_check.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("safety_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["safety_check"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def safety() -> ModuleType:
    return load_script()


def test_the_comparison_sees_every_kind_of_change(safety: ModuleType, tmp_path: Path) -> None:
    """The checker itself: a changed byte, a new or removed file, a folder and a link all show."""
    area = tmp_path / "area"
    (area / "sub").mkdir(parents=True)
    (area / "a.txt").write_text("a")
    (area / "sub" / "b.txt").write_text("b")
    before = safety.snapshot(area)
    assert safety.changed(before, safety.snapshot(area)) == []
    (area / "a.txt").write_text("A")
    (area / "sub" / "b.txt").unlink()
    (area / "new").mkdir()
    (area / "link").symlink_to("a.txt")
    assert safety.changed(before, safety.snapshot(area)) == ["a.txt", "link", "new", "sub/b.txt"]


def test_the_catalog_is_compared_by_its_rows(safety: ModuleType, tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "catalog.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x)")
    conn.commit()
    before = safety.snapshot(tmp_path, db)
    assert list(before) == [safety.CATALOG_ENTRY]
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()
    assert safety.changed(before, safety.snapshot(tmp_path, db)) == [safety.CATALOG_ENTRY]


def test_no_pull_or_merge_changes_anything_outside_its_output(tmp_path: Path) -> None:
    """Rows 1-3 for real: pull and merge with -o = the home, the blob store, the catalog's folder, a
    registered base's folder, its parent, and `.` in a user's folder, with no flag, --force and
    --overwrite (the --quick subset): each is refused and changes nothing, except --overwrite on
    the user's folder and --force on an earlier pull, which change that folder only."""
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    table = {line.split("  ")[0]: line for line in lines[1:] if line and not line[0].isdigit()}
    refused = [name for name in table if "--overwrite" not in name or "user folder" not in name]
    refused.remove("pull -o earlier pull --force")
    assert len(table) == 12 and len(refused) == 10
    for name in refused:
        assert table[name].split()[-1] == "unchanged" and "  2  " in table[name], table[name]
    assert "changed only inside user/" in table["pull -o . (user folder) --overwrite"]
    assert "changed only inside earlier-pull/" in table["pull -o earlier pull --force"]
    assert lines[-1].startswith("12 cases, 0 failed")
    assert list(tmp_path.iterdir()) == []  # the scratch area is removed
