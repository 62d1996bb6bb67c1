"""Hugging Face model folders: ``config.json`` plus ``model.safetensors``, or shards listed in
``model.safetensors.index.json``. Read strictly, without torch; pickled weights are refused."""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lora_hub.errors import InvalidAdapterError, InvalidModelError
from lora_hub.formats.files import list_folder
from lora_hub.formats.safetensors_file import PICKLE_HINT, SafetensorsHeader, TensorInfo, read_header

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.ckpt")
IGNORED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".msgpack", ".h5")


@dataclass(frozen=True)
class ModelDir:
    """A model folder, read and checked. ``shards`` are relative paths of the weight files, in
    order; ``tensors`` maps each tensor name to its shard and header entry."""

    root: Path
    config: dict[str, Any]
    files: dict[str, Path]
    shards: list[str]
    headers: dict[str, SafetensorsHeader]
    tensors: dict[str, tuple[str, TensorInfo]]

    @property
    def model_type(self) -> str | None:
        value = self.config.get("model_type")
        return str(value) if value else None

    @property
    def architectures(self) -> list[str]:
        return [str(a) for a in self.config.get("architectures") or []]

    @property
    def weight_bytes(self) -> int:
        return sum(h.file_size for h in self.headers.values())


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidModelError(f"{what} is not valid JSON: {exc}", path=str(path)) from exc


def model_files(root: Path) -> dict[str, Path]:
    """Every regular file in ``root`` or below by relative path, by the rule of ``formats.files``
    (hidden entries skipped; links must stay inside the folder). Pickled weights and other
    frameworks' weight files are left out: they are never read."""
    listing = list_folder(root)
    if listing.problems:
        raise InvalidModelError(
            listing.summary(),
            path=str(root),
            hint="copy the files that links point to into the folder (or remove the links), then try again",
        )
    return {rel: p for rel, p in listing.files.items() if not rel.endswith(IGNORED_SUFFIXES)}


# lora-hub's own records in a folder it wrote: never carried into another output.
LORAHUB_FILES = frozenset({"lorahub_merge.json", "lorahub_export.json"})


def side_files(model: ModelDir) -> list[str]:
    """The files a model folder carries besides its weights, to copy with merged weights: every
    file at the top level (config, generation config, tokenizer, chat template, model card...)
    except weights and lora-hub's own records, and the files of the sentence-transformers module
    folders that ``modules.json`` lists (``1_Pooling/``...). Other subfolders (``checkpoint-100/``,
    an earlier ``merged/``) are not the model's and are left out."""
    weights = set(model.shards) | {INDEX_NAME}
    module_dirs: set[str] = set()
    if "modules.json" in model.files:
        with contextlib.suppress(InvalidModelError):
            doc = _read_json(model.files["modules.json"], "modules.json")
            if isinstance(doc, list):
                module_dirs = {str(m["path"]).strip("/") for m in doc if isinstance(m, dict) and m.get("path")}
    out = []
    for rel in model.files:
        folder, _, name = rel.rpartition("/")
        if rel in weights or name in LORAHUB_FILES or name.endswith(".safetensors"):
            continue
        if not folder or folder in module_dirs:
            out.append(rel)
    return sorted(out)


def read_model_dir(path: str | os.PathLike[str]) -> ModelDir:
    """Read the folder's config and every shard's header, and check that they agree."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidModelError("is not a folder" if root.exists() else "no such folder", path=str(root))
    config_path = root / CONFIG_NAME
    if not config_path.is_file():
        found = ", ".join(sorted(p.name for p in root.iterdir())[:10]) or "nothing"
        raise InvalidModelError(
            f"not a Hugging Face model folder: {CONFIG_NAME} missing (found: {found})",
            path=str(root),
            hint="save the model with model.save_pretrained(dir)",
        )
    return model_from_files(root, model_files(root))


def model_from_files(root: Path, files: dict[str, Path]) -> ModelDir:
    """Assemble a ``ModelDir`` from its files, wherever they are (a folder, or blobs in a store
    named by their relative paths)."""
    if CONFIG_NAME not in files:
        raise InvalidModelError(f"{CONFIG_NAME} missing", path=str(root))
    config = _read_json(files[CONFIG_NAME], CONFIG_NAME)
    if not isinstance(config, dict):
        raise InvalidModelError(f"{CONFIG_NAME} must hold a JSON object", path=str(root))

    if INDEX_NAME in files:
        index = _read_json(files[INDEX_NAME], INDEX_NAME)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise InvalidModelError(f"{INDEX_NAME} has no weight_map", path=str(root))
        shards = list(dict.fromkeys(str(v) for v in weight_map.values()))
    elif SINGLE_NAME in files:
        weight_map = None
        shards = [SINGLE_NAME]
    else:
        pickled = [n for n in PICKLE_WEIGHTS if (root / n).exists()]
        if pickled:
            raise InvalidModelError(
                f"has only pickled weights ({', '.join(pickled)}); lora-hub reads safetensors only",
                path=str(root),
                hint=PICKLE_HINT.replace("IN", pickled[0]) + ", or model.save_pretrained(dir, safe_serialization=True)",
            )
        raise InvalidModelError(f"no {SINGLE_NAME} and no {INDEX_NAME}", path=str(root))

    headers: dict[str, SafetensorsHeader] = {}
    tensors: dict[str, tuple[str, TensorInfo]] = {}
    for shard in shards:
        if Path(shard).is_absolute() or ".." in Path(shard).parts:
            raise InvalidModelError(f"shard {shard!r} is outside the folder", path=str(root))
        if shard not in files:
            raise InvalidModelError(f"shard {shard} listed in {INDEX_NAME} is missing", path=str(root))
        try:
            header = read_header(files[shard])
        except InvalidAdapterError as exc:  # a damaged shard, or a pickle under a safetensors name
            raise InvalidModelError(f"{shard}: {exc.message}", path=str(root), hint=exc.hint) from exc
        headers[shard] = header
        for t in header:
            if t.name in tensors:
                raise InvalidModelError(f"tensor {t.name} is in both {tensors[t.name][0]} and {shard}", path=str(root))
            tensors[t.name] = (shard, t)
    if weight_map is not None:
        problems = [f"{n} (index says {s})" for n, s in weight_map.items() if n not in tensors or tensors[n][0] != s]
        unlisted = [n for n in tensors if n not in weight_map]
        if problems or unlisted:
            detail = "; ".join(
                part
                for part in (
                    f"not where the index says: {', '.join(problems[:5])}" if problems else "",
                    f"missing from the index: {', '.join(unlisted[:5])}" if unlisted else "",
                )
                if part
            )
            raise InvalidModelError(f"{INDEX_NAME} disagrees with the shards: {detail}", path=str(root))
    return ModelDir(root, config, files, shards, headers, tensors)
