#!/usr/bin/env python
"""The destructive cases of user trial 2, rows 1-3, run for real: does any `lorahub pull` or
`lorahub merge` change anything outside the output it was asked to write?

It builds a scratch area with its own LORAHUB_HOME (a tiny Llama registered as base ``tiny``, an
adapter pushed as ``acme/x:1``, the SQLite catalog in a folder of its own, a user's folder
holding ``thesis.tex``), then runs each case as a real ``lorahub`` process and compares the whole
scratch area before and after it: every path, and the sha256 of every file. The one exception
is the SQLite catalog, compared by content (the sha256 of its SQL dump), because SQLite rewrites
its file and journal when it checkpoints, without any row changing.

Each case is ``pull`` or ``merge`` with ``-o`` = the home, the blob store, the catalog's folder, the
registered base's folder, the folder above it, or ``.`` inside the user's folder, each with no
flag, ``--force`` and ``--overwrite``. Every one must be refused (exit 2) and change nothing,
except ``--overwrite`` on the user's folder, which must replace that folder and touch nothing
else (a merge also records itself in the catalog). Two more cases check that ``--force`` still
replaces an earlier pull. ``--quick`` runs a subset that still covers every output and every flag.

Prints a table (case, exit code, first line of stderr, what changed) and exits 1 if any case
changed something outside its output or ended other than expected.

    python scripts/safety_check.py [--quick] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CATALOG_ENTRY = "db/catalog.db (content)"


@dataclass(frozen=True)
class Case:
    name: str
    args: list[str]
    cwd: str  # relative to the scratch area
    output: str | None  # the folder it may change (relative), None when it must be refused
    expect: str  # a phrase the first line of stderr must hold, or "" for success
    catalog_may_change: bool = False


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def catalog_digest(db: Path) -> str:
    """The sha256 of the catalog's SQL dump: its rows, whatever the state of its WAL."""
    conn = sqlite3.connect(db)
    try:
        return hashlib.sha256("\n".join(conn.iterdump()).encode()).hexdigest()
    finally:
        conn.close()


def snapshot(area: Path, db: Path | None = None) -> dict[str, str]:
    """Every entry under ``area`` (links not followed) -> sha256, "dir" or "link:<target>"; the
    SQLite catalog ``db`` and its journal files as one entry, its content digest."""
    skip = {db, Path(f"{db}-wal"), Path(f"{db}-shm")} if db else set()
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(area):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            if path in skip:
                continue
            rel = path.relative_to(area).as_posix()
            if path.is_symlink():
                out[rel] = "link:" + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            elif path.is_file():
                out[rel] = sha256(path)
            else:
                out[rel] = "special"
    if db is not None and db.exists():
        out[CATALOG_ENTRY] = catalog_digest(db)
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))


def inside(rel: str, folder: str) -> bool:
    return rel == folder or rel.startswith(folder + "/")


def build(area: Path) -> dict[str, str]:
    """The scratch registry; returns the environment of every command."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from lora_hub import Hub
    from tests.helpers import save_llama, write_adapter

    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")},
        "LORAHUB_HOME": str(area / "home"),
        "LORAHUB_DATABASE_URL": f"sqlite:///{area / 'db' / 'catalog.db'}",
    }
    save_llama(area / "models" / "tiny")
    (area / "models" / "notes.txt").write_text("notes beside the base, not part of it\n")
    write_adapter(area / "adapter", extra_files={"README.md": b"# acme/x\n"})
    (area / "user").mkdir()
    (area / "user" / "thesis.tex").write_text("\\chapter{One}\n")
    with Hub(env["LORAHUB_HOME"], database_url=env["LORAHUB_DATABASE_URL"]) as hub:
        hub.base_add(area / "models" / "tiny", "tiny")
        hub.push(area / "adapter", "acme/x")
        hub.pull("acme/x:1", area / "earlier-pull")  # a lora-hub output: --force may replace it
    return env


OUTPUTS = {  # -o value (absolute unless ".") and where the command runs
    "home": ("home", "."),
    "blob store": ("home/blobs", "."),
    "catalog folder": ("db", "."),
    "base folder": ("models/tiny", "."),
    "base's parent": ("models", "."),
    ". (user folder)": (".", "user"),
}
FLAGS = {"no flag": [], "--force": ["--force"], "--overwrite": ["--overwrite"]}
QUICK = {  # every output and every flag, each flag for both commands
    ("pull", "home", "--force"),
    ("pull", "blob store", "--overwrite"),
    ("pull", "catalog folder", "--force"),
    ("pull", "base folder", "--overwrite"),
    ("pull", "base's parent", "--force"),
    ("pull", ". (user folder)", "no flag"),
    ("pull", ". (user folder)", "--overwrite"),
    ("merge", "home", "--overwrite"),
    ("merge", "base folder", "--force"),
    ("merge", "base's parent", "no flag"),
    ("merge", ". (user folder)", "--force"),
}


def cases(area: Path, quick: bool) -> list[Case]:
    out: list[Case] = []
    last: list[Case] = []  # the ones that change something run after every refusal
    for op in ("pull", "merge"):
        for where, (target, cwd) in OUTPUTS.items():
            for flag, extra in FLAGS.items():
                if quick and (op, where, flag) not in QUICK:
                    continue
                dest = "." if target == "." else str(area / target)
                args = ["pull", "acme/x:1"] if op == "pull" else ["merge", "--base", "tiny", "acme/x:1"]
                args += ["-o", dest, *extra]
                name = f"{op} -o {where} {flag}"
                if where.startswith(".") and flag == "--overwrite":
                    last.append(Case(name, args, cwd, "user", "", catalog_may_change=op == "merge"))
                elif where.startswith("."):
                    out.append(Case(name, args, cwd, None, "is not a folder lora-hub wrote"))
                else:
                    out.append(Case(name, args, cwd, None, "refusing to write to"))
    earlier = str(area / "earlier-pull")
    if not quick:
        out.append(Case("pull -o earlier pull (no flag)", ["pull", "acme/x:1", "-o", earlier], ".", None, "earlier"))
    out.append(
        Case("pull -o earlier pull --force", ["pull", "acme/x:1", "-o", earlier, "--force"], ".", "earlier-pull", "")
    )
    return out + last


def lorahub() -> list[str]:
    script = Path(sys.executable).parent / "lorahub"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "lora_hub"]


def run_case(case: Case, area: Path, env: dict[str, str], db: Path) -> tuple[int, str, str, bool]:
    before = snapshot(area, db)
    proc = subprocess.run(
        [*lorahub(), *case.args], cwd=area / case.cwd, env=env, capture_output=True, text=True, timeout=300
    )
    after = snapshot(area, db)
    diff = changed(before, after)
    first = (proc.stderr.strip().splitlines() or [""])[0]
    if case.output is None:
        ok = proc.returncode == 2 and case.expect in first and not diff
        verdict = "unchanged" if not diff else "CHANGED: " + ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else "")
        return proc.returncode, first, verdict, ok
    allowed = [d for d in diff if inside(d, case.output) or (case.catalog_may_change and d == CATALOG_ENTRY)]
    outside = [d for d in diff if d not in allowed]
    ok = proc.returncode == 0 and not outside and any(inside(d, case.output) for d in diff)
    if outside:
        verdict = "CHANGED outside the output: " + ", ".join(outside[:6])
    else:
        extra = " (+ the catalog: the merge is recorded)" if CATALOG_ENTRY in diff else ""
        verdict = f"changed only inside {case.output}/ ({len(allowed)} entries){extra}"
    return proc.returncode, first or "-", verdict, ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a subset covering every output and every flag")
    parser.add_argument("--workdir", type=Path, help="build the scratch area here (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch area")
    args = parser.parse_args(argv)
    area = Path(tempfile.mkdtemp(prefix="lorahub-safety-", dir=args.workdir)).resolve()
    try:
        env = build(area)
        db = area / "db" / "catalog.db"
        rows = []
        failures = 0
        for case in cases(area, args.quick):
            code, first, verdict, ok = run_case(case, area, env, db)
            failures += not ok
            rows.append(
                (case.name, str(code), first.replace(str(area), "<scratch>"), verdict, "" if ok else "  <-- FAIL")
            )
        widths = [
            max(len(r[i]) for r in [("CASE", "EXIT", "STDERR (first line)", "RESULT", ""), *rows]) for i in range(3)
        ]
        for row in [("CASE", "EXIT", "STDERR (first line)", "RESULT", ""), *rows]:
            print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:<{widths[2]}}  {row[3]}{row[4]}")
        print(f"\n{len(rows)} cases, {failures} failed; scratch area {area}{'' if args.keep else ' (removed)'}")
        return 1 if failures else 0
    finally:
        if not args.keep:
            shutil.rmtree(area, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
