"""Helpers shared by the capability modules of ``lora_hub.core``."""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterable
from pathlib import Path

from lora_hub._fs import OUTPUT_MARK, Protected
from lora_hub.errors import InvalidArgumentError, LoraHubError, StoreError
from lora_hub.progress import Progress
from lora_hub.refs import AdapterName
from lora_hub.store import BlobStore
from lora_hub.types import human_bytes


def is_base_name(text: str) -> bool:
    """Whether ``text`` could name a registered base (rather than only a folder)."""
    try:
        AdapterName.parse(text)
    except LoraHubError:
        return False
    return True


def split_weight(spec: str) -> tuple[str, float]:
    """``acme/sql:3@0.7`` -> (``acme/sql:3``, 0.7); no ``@number`` means weight 1."""
    target, sep, tail = spec.rpartition("@")
    if sep and target:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(weight):
            raise InvalidArgumentError(f"weight of {target} must be a finite number, got {tail}")
        return target, weight
    return spec, 1.0


def check_free_space(folder: Path, needed: int, *, what: str) -> None:
    """Refuse an output that cannot fit, before any work rather than after most of it."""
    while not folder.exists() and folder != folder.parent:  # the output's parents are made later
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise StoreError(
            f"not enough free space in {folder}: {what} needs {human_bytes(needed)}, {human_bytes(free)} are free",
            hint="free some space, or write the output (-o) to another disk",
        )


def check_space(store: BlobStore, needed: int) -> None:
    free = store.free_bytes()
    if free is not None and free < needed:
        raise StoreError(
            f"not enough free space for the blob store ({store!r}): {human_bytes(needed)} to write, "
            f"{human_bytes(free)} free",
            hint="free some space there, or run `lorahub gc` to remove unreferenced blobs",
        )


def library_versions() -> dict[str, str]:
    import platform

    import safetensors
    import torch

    from lora_hub._version import __version__

    return {"lora_hub": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}  # fmt: skip


def peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def copy_tree(source: Path, dest: Path, progress: Progress) -> None:
    """Copy the files of ``source`` into the empty folder ``dest`` (lora-hub's marker excepted)."""
    files = [p for p in sorted(source.rglob("*")) if p.is_file() and p.name != OUTPUT_MARK]
    with progress.task("copying the recorded output", sum(p.stat().st_size for p in files)) as advance:
        for p in files:
            target = dest / p.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
            advance(p.stat().st_size)


def input_folders(specs: Iterable[str]) -> list[Protected]:
    """The folders among a command's inputs (a base or adapter given as a path)."""
    return [Protected(Path(spec), "one of this command's inputs") for spec in specs if Path(spec).is_dir()]
