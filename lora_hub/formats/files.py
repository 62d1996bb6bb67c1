"""Listing the files of an input folder (an adapter for ``push``, a model for ``base add``), by one rule.

- Hidden entries (names starting with ``.``) are skipped: ``.git``, ``.cache`` (huggingface_hub's
  download metadata), lora-hub's own output marker.
- A symbolic link is followed only when its target lies inside the folder and it does not lead
  back to a folder above it (a loop). The folder of a Hugging Face cache snapshot
  (``.../models--org--name/snapshots/<sha>``, whose files are links to ``../../blobs/``) is its
  repository's cache folder, so those links count as inside. A link that leaves the folder, a loop, a broken link, and
  anything that is not a regular file or a folder (a FIFO, a device, a socket) is refused.
- A name that is not UTF-8, or that holds control characters (a newline, an escape sequence),
  is refused: it could not be shown or stored faithfully.

Every problem is found before any is reported, and reported together; nothing is read or
stored when there is one.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

MAX_LISTED = 20


@dataclass
class FolderListing:
    """The regular files of a folder by relative POSIX path, and the entries refused."""

    files: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        shown = "; ".join(self.problems[:MAX_LISTED])
        more = f" ... and {len(self.problems) - MAX_LISTED} more" if len(self.problems) > MAX_LISTED else ""
        return f"{len(self.problems)} entr{'y' if len(self.problems) == 1 else 'ies'} refused: {shown}{more}"


def printable_name(name: str) -> str:
    """A name as it may be shown: bytes that are not UTF-8 as ``\\xNN``, control characters escaped."""
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _clean(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return name.isprintable()


def list_folder(root: Path) -> FolderListing:
    """Walk ``root`` by the module's rule. ``root`` itself may be a symlink to a folder."""
    listing = FolderListing()
    start = Path(os.path.realpath(root))
    top = start
    if start.parent.name == "snapshots" and start.parent.parent.name.startswith(("models--", "datasets--")):
        top = start.parent.parent
    _walk(root, top, Path(), [start], listing)
    return listing


def _walk(folder: Path, top: Path, rel: Path, ancestors: list[Path], listing: FolderListing) -> None:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        listing.problems.append(f"{rel.as_posix() or '.'}: cannot be read ({exc.strerror})")
        return
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        shown = (rel / printable_name(name)).as_posix()
        if not _clean(name):
            listing.problems.append(f"{shown}: the name is not UTF-8 text or holds control characters")
            continue
        path = Path(entry.path)
        target = path
        if entry.is_symlink():
            real = Path(os.path.realpath(path))
            if not real.exists():
                listing.problems.append(f"{shown}: a broken symbolic link")
                continue
            if real != top and top not in real.parents:
                listing.problems.append(f"{shown}: a symbolic link that leaves the folder (to {real})")
                continue
            if real in ancestors:
                listing.problems.append(f"{shown}: a symbolic link that loops back to {real}")
                continue
            target = real
        try:
            mode = os.stat(target).st_mode
        except OSError as exc:
            listing.problems.append(f"{shown}: cannot be read ({exc.strerror})")
            continue
        if stat.S_ISDIR(mode):
            _walk(target, top, rel / name, [*ancestors, Path(os.path.realpath(target))], listing)
        elif stat.S_ISREG(mode):
            listing.files[(rel / name).as_posix()] = path
        else:
            listing.problems.append(f"{shown}: not a regular file (a FIFO, device or socket)")
