"""Filesystem helpers shared by the store and the core: durable renames, and output folders.

Every folder lora-hub writes (a pull, a merge, a combined adapter kept with ``-o``, an export)
goes through ``staged_output``, which enforces one rule:

- **protected paths**: an output that is, holds, or lies inside the lora-hub home, the blob store,
  the SQLite catalog, a registered base's folder or one of the command's inputs is refused before
  any work, whatever the flags;
- **replacing**: an absent or empty output is written; a non-empty one is replaced only when the
  caller asked for it: ``force`` replaces a folder lora-hub wrote itself (recognised by its marker
  file, ``.lorahub-output.json``, listing every file it wrote, and holding nothing else), and
  ``overwrite`` replaces any other folder (its contents are deleted);
- **atomic**: the files are written into a hidden folder beside the output
  (``.<name>.lorahub-partial-<pid>-<random>``), which is renamed into place at the end; a failure
  or Ctrl-C removes it, and a process killed outright leaves it for ``lorahub gc`` (each partial
  is recorded under ``$LORAHUB_HOME/partials`` while it exists) or for the next write to the same
  output. Without a replace flag, the final rename cannot replace a folder that someone filled
  meanwhile: two concurrent writers to one empty output do not silently overwrite each other.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lora_hub.errors import DestinationExistsError, ProtectedPathError

OUTPUT_MARK = ".lorahub-output.json"
PARTIAL_MARK = ".lorahub-partial-"
OLD_MARK = ".lorahub-old-"


def fsync_dir(path: Path) -> None:
    """Make a rename or link in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Replace(enum.Enum):
    """What a non-empty output may be replaced with: nothing, a folder lora-hub wrote, anything."""

    NEVER = "never"
    OURS = "force"
    ANY = "overwrite"

    @classmethod
    def of(cls, *, force: bool = False, overwrite: bool = False) -> Replace:
        return cls.ANY if overwrite else cls.OURS if force else cls.NEVER


@dataclass(frozen=True)
class Protected:
    """A path that no output may be, hold or lie inside, and what it is (for the message)."""

    path: Path
    what: str


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def overlap(dest: Path, protected: Protected) -> str | None:
    """How ``dest`` overlaps ``protected`` ("is", "holds", "lies inside"), or None. Both are
    compared as real paths, so a symlink or ``..`` cannot hide an overlap."""
    d, p = _real(dest), _real(protected.path)
    if d == p:
        return "is"
    if d in p.parents:
        return "holds"
    if p in d.parents:
        return "lies inside"
    return None


def check_not_protected(dest: Path, protected: Iterable[Protected]) -> None:
    """Refuse ``dest`` if it is, holds or lies inside any protected path. The message names the
    closest one: what ``dest`` is, else the innermost that it lies inside, else the outermost that
    it holds (the first listed, on a tie)."""
    hits = [(how, p) for p in protected if (how := overlap(dest, p)) is not None]
    if not hits:
        return

    def closeness(hit: tuple[str, Protected]) -> tuple[int, int]:
        depth = len(_real(hit[1].path).parts)
        return {"is": (0, 0), "lies inside": (1, -depth), "holds": (2, depth)}[hit[0]]

    how, p = min(hits, key=closeness)
    raise ProtectedPathError(
        f"refusing to write to {dest}: it {how} {p.what} ({p.path})",
        hint="choose an output folder outside it; nothing was written",
    )


def written_by_lorahub(folder: Path) -> dict[str, Any] | None:
    """The marker of a folder lora-hub wrote, if the folder holds nothing but what the marker lists."""
    try:
        doc = json.loads((folder / OUTPUT_MARK).read_text(encoding="utf-8"))
        listed = set(doc["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath).relative_to(folder)
        for name in filenames:
            rel = (base / name).as_posix()
            if rel != OUTPUT_MARK and rel not in listed:
                return None
        for name in dirnames:
            if Path(dirpath, name).is_symlink():
                return None
    return doc


def check_destination(dest: Path, replace: Replace) -> None:
    """Refuse an output that exists and may not be replaced as asked (see the module docstring)."""
    if dest.is_symlink():
        raise DestinationExistsError(f"{dest} is a symbolic link", hint="give the real folder it points to")
    if not dest.exists():
        return
    if not dest.is_dir():
        raise DestinationExistsError(f"{dest} exists and is not a folder", hint="choose another output path")
    if not any(dest.iterdir()) or replace is Replace.ANY:
        return
    ours = written_by_lorahub(dest)
    if ours is not None:
        if replace is Replace.OURS:
            return
        what = ours.get("kind", "output")
        raise DestinationExistsError(
            f"{dest} is not empty: it holds an earlier lora-hub {what}",
            hint="use --force to replace it, or choose another folder",
        )
    raise DestinationExistsError(
        f"{dest} is not empty, and is not a folder lora-hub wrote",
        hint="choose another folder, or use --overwrite to delete its contents and replace them",
    )


class PartialRegistry:
    """Records the hidden partial folders of running writers under ``root`` (``$LORAHUB_HOME/partials``),
    so that ``gc`` can remove those whose writer was killed. Best effort: an unwritable home only
    means the next write to the same output cleans up instead."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def add(self, partial: Path) -> Path | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            record = self.root / f"{os.getpid()}-{secrets.token_hex(6)}.json"
            record.write_text(json.dumps({"path": str(partial), "pid": os.getpid()}))
        except OSError:
            return None
        return record

    def stale(self) -> list[tuple[Path, Path]]:
        """(record, partial folder) of every writer that is no longer running."""
        out: list[tuple[Path, Path]] = []
        if not self.root.is_dir():
            return out
        for record in sorted(self.root.glob("*.json")):
            try:
                doc = json.loads(record.read_text())
                pid, path = int(doc["pid"]), Path(doc["path"])
            except (OSError, ValueError, KeyError, TypeError):
                out.append((record, Path()))
                continue
            if not pid_alive(pid):
                out.append((record, path))
        return out

    def clean(self, *, dry_run: bool = False) -> int:
        """Remove the partial folders (and their records) of dead writers; return how many."""
        removed = 0
        for record, partial in self.stale():
            # Only ever a folder that carries the partial mark: a damaged record cannot aim gc elsewhere.
            if partial.name and PARTIAL_MARK in partial.name and partial.is_dir() and not partial.is_symlink():
                removed += 1
                if not dry_run:
                    shutil.rmtree(partial, ignore_errors=True)
            if not dry_run:
                with contextlib.suppress(OSError):
                    record.unlink()
        return removed


def remove_stale_partials(dest: Path) -> None:
    """Remove temporary folders left beside ``dest`` by writers that were killed."""
    for mark in (PARTIAL_MARK, OLD_MARK):
        prefix = f".{dest.name}{mark}"
        for entry in dest.parent.glob(f"{prefix}*"):
            pid_text = entry.name[len(prefix) :].split("-", 1)[0]
            if pid_text.isdigit() and not pid_alive(int(pid_text)) and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)


def _file_list(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and p.name != OUTPUT_MARK)


def write_marker(folder: Path, kind: str, **details: Any) -> None:
    """Mark ``folder`` as written by lora-hub, listing every file in it."""
    doc = {"kind": kind, "files": _file_list(folder), "created_at": datetime.now(UTC).isoformat(), **details}
    (folder / OUTPUT_MARK).write_text(json.dumps(doc, indent=2) + "\n")


def swap_into_place(tmp: Path, dest: Path, replace: Replace) -> None:
    """Rename the finished ``tmp`` to ``dest``. An empty ``dest`` is replaced atomically by the
    rename itself; a non-empty one only when ``replace`` allows it, checked again now (another
    writer may have filled it since the start)."""
    try:
        os.rename(tmp, dest)
    except OSError as exc:
        if not dest.exists():
            raise
        if replace is Replace.NEVER:  # filled meanwhile by someone else
            raise DestinationExistsError(
                f"{dest} was filled by another process while this one worked; nothing was replaced",
                hint="choose another folder",
            ) from exc
        check_destination(dest, replace)
        old = dest.parent / f".{dest.name}{OLD_MARK}{os.getpid()}-{secrets.token_hex(4)}"
        dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fsync_dir(dest.parent)


@contextlib.contextmanager
def staged_output(
    dest: Path,
    *,
    kind: str,
    replace: Replace = Replace.NEVER,
    protected: Sequence[Protected] = (),
    registry: PartialRegistry | None = None,
    details: dict[str, Any] | None = None,
) -> Iterator[Path]:
    """Write an output folder atomically: yields a hidden folder beside ``dest`` to write into;
    on success marks it (``write_marker``) and renames it into place, on any failure removes it.

    ``dest`` is checked before anything is written (``check_not_protected``,
    ``check_destination``); callers that do expensive work first should call ``prepare_output``
    before it, so that a refusal costs nothing."""
    dest = prepare_output(dest, replace=replace, protected=protected)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}{PARTIAL_MARK}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    record = registry.add(tmp) if registry is not None else None
    try:
        yield tmp
        write_marker(tmp, kind, **(details or {}))
        swap_into_place(tmp, dest, replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if record is not None:
            with contextlib.suppress(OSError):
                record.unlink()


def prepare_output(dest: Path, *, replace: Replace, protected: Sequence[Protected] = ()) -> Path:
    """Check ``dest`` against the rule (nothing is created); return it absolute. Idempotent."""
    dest = Path(os.path.abspath(dest))
    check_not_protected(dest, protected)
    check_destination(dest, replace)
    if dest.parent.is_dir():
        remove_stale_partials(dest)
    return dest


def remove_unused_parts(folder: Path, *, max_age_s: float = 0.0, dry_run: bool = False) -> int:
    """Remove the kept parts of interrupted downloads older than ``max_age_s`` (all with 0) that no
    download is using (it holds a lock on its part); return how many."""
    removed = 0
    now = time.time()
    for part in folder.glob("*.part") if folder.is_dir() else ():
        try:
            if now - part.stat().st_mtime < max_age_s:
                continue
            with open(part, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                removed += 1
                if not dry_run:
                    part.unlink()
        except OSError:  # in use, or gone meanwhile
            continue
    return removed
