"""Base fingerprints and compatibility verdicts.

Fingerprints (see ``BaseModelInfo``): per tensor, ``name\\tdtype\\tshape\\tsha256(bytes)``; the
content fingerprint hashes these lines sorted by name, the structure fingerprint the same lines
without the hashes. Tensor hashes are computed in parallel across cores and cached by
(path, size, mtime, ctime, inode), so re-reading an unchanged folder hashes nothing.

A verdict compares an adapter's layout with a base's tensors:

- ``exact``: everything fits, and the base is the one the adapter was trained on (same content
  fingerprint);
- ``compatible``: everything fits, but the base differs from (or cannot be proven to be) the one
  it was trained on; how much the target tensors differ is reported where both are at hand;
- ``incompatible``: every problem, each with what was expected and what was found.

A LoRA module ``p`` with ``A [r, in]`` and ``B [out, r]`` fits when the base holds ``p.weight``
shaped ``[out, in]`` (``[in, out]`` with ``fan_in_fan_out``, e.g. GPT-2's Conv1D); an embedding's
``lora_embedding_A [r, vocab]``/``B [dim, r]`` fit ``[vocab, dim]``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from lora_hub.errors import IntegrityError
from lora_hub.formats.dtypes import FLOAT_DTYPES
from lora_hub.formats.hf import ModelDir
from lora_hub.formats.peft import ParseProblem
from lora_hub.formats.safetensors_file import TensorInfo
from lora_hub.hashing import CHUNK, format_digest
from lora_hub.progress import Advance
from lora_hub.types import (
    AdapterFacts,
    AdapterLayout,
    BaseFile,
    BaseModelInfo,
    BaseTensor,
    CompatReport,
    Problem,
    WeightDiff,
)

StatKey = tuple[str, int, int, int, int]  # (real path, size, mtime_ns, inode, ctime_ns)


class HashCache(Protocol):
    """Tensor hashes of whole files, keyed by ``stat_key``."""

    def get_hashes(self, key: StatKey) -> dict[str, str] | None: ...

    def put_hashes(self, key: StatKey, digests: dict[str, str]) -> None: ...


def stat_key(path: Path) -> StatKey:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


# --- hashing and fingerprints ------------------------------------------------------------------


def _hash_range(path: Path, start: int, end: int, advance: Advance | None) -> str:
    h = hashlib.sha256()
    buf = bytearray(min(CHUNK, max(end - start, 1)))
    view = memoryview(buf)
    fd = os.open(path, os.O_RDONLY)
    try:
        pos = start
        while pos < end:
            n = os.preadv(fd, [view[: min(len(buf), end - pos)]], pos)
            if n <= 0:
                raise IntegrityError(
                    f"{path} ended at byte {pos}, inside a tensor: was it changed while being read?",
                    hint="add the base again once nothing is writing to it",
                )
            h.update(view[:n])
            pos += n
            if advance:
                advance(n)
    finally:
        os.close(fd)
    return format_digest(h.hexdigest())


def hash_tensors(
    model: ModelDir, cache: HashCache | None = None, advance: Advance | None = None, *, workers: int | None = None
) -> tuple[dict[str, str], int]:
    """sha256 of every tensor's bytes, by name, and the number of bytes hashed now.

    Shards whose (path, size, mtime, inode) are in ``cache`` are not read. The rest are hashed
    tensor by tensor on ``workers`` threads (default: one per core), largest first.
    """
    digests: dict[str, str] = {}
    todo: list[tuple[str, Path, TensorInfo]] = []
    keys: dict[str, StatKey] = {}
    for shard in model.shards:
        header = model.headers[shard]
        keys[shard] = stat_key(header.path)
        cached = cache.get_hashes(keys[shard]) if cache is not None else None
        if cached is not None and set(cached) == set(header.tensors):
            digests.update(cached)
            if advance:
                advance(header.file_size)
        else:
            todo.extend((shard, header.path, t) for t in header)
    todo.sort(key=lambda item: item[2].nbytes, reverse=True)
    hashed = sum(t.nbytes for _, _, t in todo)
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda item: (item[2].name, _hash_range(item[1], item[2].start, item[2].end, advance)), todo)
        digests.update(results)
    if cache is not None:
        for shard in {s for s, _, _ in todo}:
            names = model.headers[shard].tensors
            cache.put_hashes(keys[shard], {n: digests[n] for n in names})
    return digests, hashed


def fingerprints(tensors: Mapping[str, BaseTensor]) -> tuple[str, str]:
    """(content fingerprint, structure fingerprint) of a set of tensors."""
    content, structure = hashlib.sha256(), hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        line = f"{name}\t{t.dtype}\t{','.join(map(str, t.shape))}"
        structure.update(line.encode() + b"\n")
        content.update(f"{line}\t{t.digest}".encode() + b"\n")
    return format_digest(content.hexdigest()), format_digest(structure.hexdigest())


def describe_model(
    model: ModelDir,
    digests: Mapping[str, str],
    *,
    name: str | None = None,
    stored: bool = False,
    files: list[BaseFile] | None = None,
) -> BaseModelInfo:
    tensors = {
        n: BaseTensor(dtype=t.dtype, shape=list(t.shape), digest=digests[n], file=shard)
        for n, (shard, t) in sorted(model.tensors.items())
    }
    content, structure = fingerprints(tensors)
    by_dtype: Counter[str] = Counter()
    for _, t in model.tensors.values():
        by_dtype[t.dtype] += t.nbytes
    return BaseModelInfo(
        name=name,
        path=str(model.root.resolve()),
        stored=stored,
        content_fingerprint=content,
        structure_fingerprint=structure,
        model_type=model.model_type,
        architectures=model.architectures,
        dtype=by_dtype.most_common(1)[0][0] if by_dtype else "none",
        num_params=sum(t.numel for _, t in model.tensors.values()),
        num_tensors=len(tensors),
        size_bytes=model.weight_bytes,
        files=files if files is not None else [BaseFile(path=r, size=p.stat().st_size) for r, p in model.files.items()],
        tensors=tensors,
    )


# --- key mapping ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyMap:
    """How an adapter's module paths become base tensor names: drop ``strip`` (e.g. ``bert.``,
    the task model's prefix), then prepend ``add`` (e.g. ``model.``). Names that do not carry
    ``strip`` (task heads such as ``classifier``) are also tried as they are."""

    strip: str = ""
    add: str = ""

    def candidates(self, key: str) -> list[str]:
        inner = key[len(self.strip) :] if self.strip and key.startswith(self.strip) else key
        return list(dict.fromkeys((self.add + inner, inner, key)))

    def resolve(self, key: str, names: Collection[str]) -> str | None:
        return next((c for c in self.candidates(key) if c in names), None)

    def as_dict(self) -> dict[str, str]:
        return {"strip": self.strip, "add": self.add}


def _leading(names: Iterable[str]) -> str | None:
    """The first path component shared by at least half of ``names``, with its dot."""
    names = list(names)
    counts = Counter(n.split(".", 1)[0] for n in names if "." in n)
    if not counts:
        return None
    head, count = counts.most_common(1)[0]
    return f"{head}." if count * 2 >= len(names) else None


def choose_key_map(module_keys: Collection[str], base_names: Collection[str]) -> KeyMap:
    """The mapping under which most of ``module_keys`` exist in the base; ties keep it simple."""
    strips = [""] + [p for p in [_leading(module_keys)] if p]
    adds = [""] + [p for p in [_leading(base_names)] if p]
    best, best_hits = KeyMap(), -1
    for strip in strips:
        for add in adds:
            km = KeyMap(strip, add)
            hits = sum(1 for k in module_keys if km.resolve(k, base_names) is not None)
            if hits > best_hits:
                best, best_hits = km, hits
    return best


# --- the verdict -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdapterSide:
    """What the check needs to know about an adapter."""

    label: str
    facts: AdapterFacts
    layout: AdapterLayout
    model_type: str | None = None
    trained_on: str | None = None
    parse_problems: tuple[ParseProblem, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


_EMBEDDING_HINT = re.compile(r"(embed|wte|lm_head|word_embeddings|shared|embed_out)")
_INDEXED = re.compile(r"^(?P<prefix>.*?\.)(?P<index>\d+)\.")


def _layer_hint(key: str, names: Collection[str]) -> str:
    m = _INDEXED.match(key)
    if not m:
        return ""
    prefix = m["prefix"]
    indices = {
        int(n[len(prefix) :].split(".", 1)[0]) for n in names if n.startswith(prefix) and n[len(prefix)].isdigit()
    }
    if not indices:
        return ""
    return f" (the base has {prefix}{min(indices)} to {prefix}{max(indices)})"


def check(adapter: AdapterSide, base: BaseModelInfo, base_label: str) -> CompatReport:
    """The verdict for ``adapter`` on ``base`` (whose ``tensors`` must be loaded). Pure."""
    assert base.tensors is not None, "check() needs the base's tensors"
    tensors = base.tensors
    names = tensors.keys()
    problems: list[Problem] = [
        Problem(code=p.code, module=p.module, expected=p.expected, found=p.found, message=p.message)
        for p in adapter.parse_problems
    ]
    notes = list(adapter.notes)
    if adapter.model_type and base.model_type and adapter.model_type != base.model_type:
        problems.append(
            Problem(
                code="architecture",
                expected=adapter.model_type,
                found=base.model_type,
                message=f"the adapter is for model_type {adapter.model_type!r}, the base is {base.model_type!r}",
            )
        )
    module_keys = [m.path + ".weight" for m in adapter.layout.modules]
    km = choose_key_map(module_keys + [s.name for s in adapter.layout.saved_tensors], names)
    fan_in_fan_out = adapter.facts.fan_in_fan_out
    for m in adapter.layout.modules:
        key = km.resolve(m.path + ".weight", names)
        if key is None:
            wanted = km.candidates(m.path + ".weight")[0]
            problems.append(
                Problem(
                    code="missing_module",
                    module=m.path,
                    expected=wanted,
                    found=None,
                    message=f"target {m.path}: the base has no tensor {wanted}{_layer_hint(wanted, names)}",
                )
            )
            continue
        t = tensors[key]
        if t.dtype not in FLOAT_DTYPES:
            problems.append(
                Problem(
                    code="dtype",
                    module=m.path,
                    expected="F32, F16, BF16 or F64",
                    found=t.dtype,
                    message=f"{key} is {t.dtype}: lora-hub merges into floating-point weights only (quantized base?)",
                )
            )
        problems.extend(
            _shape_problems(m.path, key, m.kind, m.in_features, m.out_features, m.a_shape, t.shape, fan_in_fan_out)
        )
        if m.bias and km.resolve(m.path + ".bias", names) is None:
            problems.append(
                Problem(
                    code="bias",
                    module=m.path,
                    expected=km.candidates(m.path + ".bias")[0],
                    found=None,
                    message=f"{m.path} has a LoRA bias (lora_bias=true) but the base layer has no bias tensor "
                    f"{km.candidates(m.path + '.bias')[0]}; PEFT refuses to merge it too",
                )
            )
    for s in adapter.layout.saved_tensors:
        key = km.resolve(s.name, names)
        if key is None:
            notes.append(f"adds {s.name} {s.shape}, which the base does not have (a new task head)")
            continue
        found = tensors[key].shape
        if found == s.shape:
            continue
        vocabish = _EMBEDDING_HINT.search(s.name) and len(found) == len(s.shape) == 2 and found[1:] == s.shape[1:]
        problems.append(
            Problem(
                code="vocab_size" if vocabish else "saved_tensor_shape",
                module=s.name,
                expected=str(s.shape),
                found=str(found),
                message=(
                    f"{s.name}: the adapter's vocabulary has {s.shape[0]} tokens, the base's {found[0]}; tokens "
                    f"were added before training, so resize the base's embeddings to {s.shape[0]} first"
                    if vocabish
                    else f"{s.name}: the adapter saves {s.shape}, the base has {found}"
                ),
            )
        )
    if problems:
        verdict = "incompatible"
    elif adapter.trained_on is not None and adapter.trained_on == base.content_fingerprint:
        verdict = "exact"
        notes.insert(0, "the base's content fingerprint matches the base the adapter was trained on")
    else:
        verdict = "compatible"
        notes.insert(
            0,
            "every target fits, but the weights differ from the base the adapter was trained on"
            if adapter.trained_on
            else "every target fits; the adapter does not record the content of the base it was trained on, "
            "so lora-hub cannot tell whether the weights are the same (push with --base to record it)",
        )
    return CompatReport(
        verdict=verdict,
        adapter=adapter.label,
        base=base_label,
        base_fingerprint=base.content_fingerprint,
        trained_on_fingerprint=adapter.trained_on,
        problems=problems,
        notes=notes,
        key_mapping=km.as_dict(),
    )


def _shape_problems(
    path: str,
    key: str,
    kind: str,
    fin: int,
    fout: int,
    a_shape: list[int],
    shape: list[int],
    fan_in_fan_out: bool,
) -> list[Problem]:
    if kind == "conv":
        expected = [fout, a_shape[1], *a_shape[2:]]
    elif kind == "embedding":
        expected = [fin, fout]
    else:
        expected = [fin, fout] if fan_in_fan_out else [fout, fin]
    if shape == expected:
        return []
    if len(shape) != len(expected):
        return [
            Problem(
                code="shape",
                module=path,
                expected=str(expected),
                found=str(shape),
                message=f"{path}: the LoRA update is {expected} but the base's {key} is {shape}",
            )
        ]
    out: list[Problem] = []
    out_axis, in_axis = (1, 0) if (fan_in_fan_out and kind == "linear") else (0, 1)
    if kind == "embedding":
        out_axis, in_axis = 1, 0
    if shape[in_axis] != expected[in_axis]:
        out.append(
            Problem(
                code="in_features",
                module=path,
                expected=str(expected[in_axis]),
                found=str(shape[in_axis]),
                message=f"{path}: lora_A takes {expected[in_axis]} input features, "
                f"the base's {key} has {shape[in_axis]}",
            )
        )
    if shape[out_axis] != expected[out_axis]:
        out.append(
            Problem(
                code="out_features",
                module=path,
                expected=str(expected[out_axis]),
                found=str(shape[out_axis]),
                message=f"{path}: lora_B gives {expected[out_axis]} output features, "
                f"the base's {key} has {shape[out_axis]}",
            )
        )
    if kind == "linear" and shape == expected[::-1] and fin != fout:
        hint = (
            "the base stores this weight as out x in; the adapter should have fan_in_fan_out=false"
            if fan_in_fan_out
            else "the base stores this weight as in x out (a Conv1D, as in GPT-2); the adapter should have "
            "fan_in_fan_out=true"
        )
        out = [p.model_copy(update={"message": f"{p.message}: {hint}"}) for p in out]
    if not out:
        out.append(
            Problem(
                code="shape",
                module=path,
                expected=str(expected),
                found=str(shape),
                message=f"{path}: the LoRA update is {expected} but the base's {key} is {shape}",
            )
        )
    return out


# --- how much two bases differ ---------------------------------------------------------------------


def read_tensor(info: TensorInfo, path: Path) -> np.ndarray:
    """A float tensor from a safetensors file as float64 (bfloat16 widened exactly)."""
    raw = np.fromfile(path, dtype=np.uint8, count=info.nbytes, offset=info.start)
    if info.dtype == "BF16":
        arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    else:
        arr = raw.view({"F64": np.float64, "F32": np.float32, "F16": np.float16}[info.dtype])
    return arr.astype(np.float64).reshape(info.shape)


def weight_diff(
    pairs: Iterable[tuple[str, str]],
    new: ModelDir,
    old: ModelDir,
    new_digests: Mapping[str, str],
    old_digests: Mapping[str, str],
    progress: Callable[[int], None] | None = None,
) -> WeightDiff:
    """Compare the target tensors of two bases, given as (name in ``new``, name in ``old``):
    how many differ (by hash), and by how much (``||W_new - W_old||_F / ||W_old||_F``, read only
    for those that differ)."""
    compared = differing = 0
    rel: dict[str, float] = {}
    for name, old_name in pairs:
        if name not in new.tensors or old_name not in old.tensors:
            continue
        compared += 1
        if new_digests.get(name) == old_digests.get(old_name):
            continue
        differing += 1
        (new_shard, ti_new), (old_shard, ti_old) = new.tensors[name], old.tensors[old_name]
        if ti_new.shape != ti_old.shape or ti_new.dtype not in FLOAT_DTYPES or ti_old.dtype not in FLOAT_DTYPES:
            continue
        a = read_tensor(ti_new, new.headers[new_shard].path)
        b = read_tensor(ti_old, old.headers[old_shard].path)
        denom = float(np.linalg.norm(b))
        rel[name] = float(np.linalg.norm(a - b)) / denom if denom else float("inf")
        if progress:
            progress(1)
    worst = max(rel, key=lambda k: rel[k]) if rel else None
    identical = compared > 0 and differing == 0
    return WeightDiff(
        tensors_compared=compared,
        tensors_differing=differing,
        max_relative_diff=rel[worst] if worst else (0.0 if identical else None),
        mean_relative_diff=sum(rel.values()) / len(rel) if rel else (0.0 if identical else None),
        worst_tensor=worst,
    )


def structure_signature(facts: AdapterFacts, layout: AdapterLayout, model_type: str | None) -> str:
    """What decides whether an adapter fits a base, hashed: each module's path, kind and in/out
    features, each saved tensor's shape, fan_in_fan_out and the expected model type. Ranks are
    left out: they never decide a fit."""
    h = hashlib.sha256()
    h.update(f"model_type={model_type or ''}\nfan_in_fan_out={facts.fan_in_fan_out}\n".encode())
    for m in sorted(layout.modules, key=lambda m: m.path):
        h.update(f"m\t{m.path}\t{m.kind}\t{m.in_features}\t{m.out_features}\t{m.a_shape[2:]}\n".encode())
    for s in sorted(layout.saved_tensors, key=lambda s: s.name):
        h.update(f"s\t{s.name}\t{s.shape}\n".encode())
    return format_digest(h.hexdigest())
