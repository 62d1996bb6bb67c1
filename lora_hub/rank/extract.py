"""A LoRA adapter from a dense fine-tune (``lorahub extract``), streamed tensor by tensor.

For each target weight, ``D = W_tuned - W_base`` (float32), taken as the update ``M = D`` of a
linear layer ``[out, in]``, or ``M = D^T`` where the weight is stored transposed (GPT-2's Conv1D,
``[in, out]``, with ``fan_in_fan_out``; an embedding, ``[vocab, dim]``, whose LoRA update is
``lora_embedding_B @ lora_embedding_A = D^T``). Its rank-k truncation ``U_k S_k V_k^T`` is stored as
``B = U_k S_k^1/2``, ``A = S_k^1/2 V_k^T`` with ``alpha = k`` (scale 1):

- ``--rank K``: ``k = min(K, min(out, in))``; the SVD is randomized (Halko, Martinsson and Tropp
  2011: a Gaussian sketch of ``k + p`` columns from a generator seeded by ``(seed, module path)``,
  power iterations, then an exact SVD of the small projection) when ``4k < min(out, in)``, and
  exact (``torch.linalg.svd``) otherwise;
- ``--energy E``: the smallest ``k`` with ``sum_{j<=k} S_j^2 >= E ||D||_F^2``, found from sketches of
  16, 32, 64, ... columns until one holds ``E`` of the energy (an exact SVD once the sketch would be
  a quarter of the matrix). The kept part is an orthogonal projection of ``D``, so the error is at
  most ``sqrt(1 - E)``.

The error reported per module is measured on the stored factors: ``||M - B A||_F / ||M||_F``.

Which tensors: by default every 2-D ``*.weight`` except embeddings and output heads, known by
name (``embed_tokens``, ``wte``, ``word_embeddings``, ..., ``lm_head``, ``embed_out``); ``targets``
(module short names, e.g. ``q_proj``, or full module paths, matched as PEFT matches
``target_modules``) chooses instead. A target equal in both models needs no LoRA.
``modules_to_save`` keeps every parameter of the modules whose path ends with one of its names
(PEFT's rule: ``norm`` names ``input_layernorm`` too) whole, from the tuned model; other tensors
that differ are listed as not captured. The PEFT module path of a weight is
its checkpoint key without ``.weight`` (``model.layers.0.self_attn.q_proj.weight`` ->
``model.layers.0.self_attn.q_proj``), as ``save_pretrained`` writes them.

Memory stays at a few tensors per worker: each module's two weights are read (``pread``, no
mapping), widened and subtracted, decomposed, and dropped; only the small factors are kept. On the
CPU a few modules are decomposed side by side, each on one torch thread (see ``extract_lora``).
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lora_hub.errors import IncompatibleError, InvalidArgumentError
from lora_hub.formats.dtypes import FLOAT_DTYPES, torch_dtype
from lora_hub.formats.hf import ModelDir
from lora_hub.formats.peft import lora_keys, saved_key
from lora_hub.merge.combine import _randomized_svd, _split
from lora_hub.merge.methods import generator_for
from lora_hub.rank.output import TORCH_DTYPES
from lora_hub.rank.spectrum import TOLERANCE

EMBEDDING = re.compile(
    r"(^|\.)(embed_tokens|embed_in|embed_positions|wte|wpe|word_embeddings|position_embeddings"
    r"|token_type_embeddings|shared|embeddings)$"
)
HEAD = re.compile(r"(^|\.)(lm_head|embed_out)$")
# Models whose blocks use transformers' Conv1D, which stores the weight as [in, out].
CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
FIRST_SKETCH = 16


@dataclass(frozen=True)
class Target:
    key: str  # checkpoint key, "<module>.weight"
    module: str  # PEFT module path
    kind: str  # "linear" or "embedding"
    transposed: bool  # the stored weight is the update's transpose
    out_features: int
    in_features: int


@dataclass(frozen=True)
class ExtractPlan:
    """What ``extract`` will do, decided from headers and tensor digests alone."""

    targets: list[Target]
    saved: list[str]
    unchanged: list[str]
    not_captured: list[str]
    modules_to_save: list[str]
    fan_in_fan_out: bool
    task_type: str | None


@dataclass
class Extracted:
    tensors: dict[str, torch.Tensor]
    ranks: dict[str, int] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)


def _module(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key


def _matches(module: str, names: Sequence[str]) -> bool:
    """PEFT's rule for ``target_modules``: the path is the name, or ends with ``.name``."""
    return any(module == n or module.endswith("." + n) for n in names)


def _saved_module(module: str, names: Sequence[str]) -> bool:
    """PEFT's rule for ``modules_to_save``: the path ends with the name, as a string (``norm`` also
    names ``input_layernorm``), so every module PEFT will wrap gets its tensors saved."""
    return any(module.endswith(n) for n in names)


def plan_extract(
    base: ModelDir,
    tuned: ModelDir,
    base_digests: Mapping[str, str],
    tuned_digests: Mapping[str, str],
    *,
    targets: Sequence[str] | None = None,
    modules_to_save: Sequence[str] = (),
) -> ExtractPlan:
    """Check that ``tuned`` has the base's tensors and shapes, and choose what to decompose, keep, skip."""
    mismatched = [
        f"{name} {list(info.shape)} -> {list(tuned.tensors[name][1].shape)}"
        for name, (_, info) in base.tensors.items()
        if name in tuned.tensors and tuned.tensors[name][1].shape != info.shape
    ]
    missing = [name for name in base.tensors if name not in tuned.tensors]
    if mismatched or missing:
        what = [*(f"{m} (shape)" for m in mismatched), *(f"{m} (missing)" for m in missing)]
        more = f" and {len(what) - 3} more" if len(what) > 3 else ""
        raise IncompatibleError(
            f"the tuned model does not have the base's tensors and shapes: {', '.join(what[:3])}{more}",
            hint="extract needs a fine-tune of this very base (same architecture and sizes, vocabulary included)",
        )
    conv1d = base.model_type in CONV1D_MODEL_TYPES
    candidates = {
        name: info
        for name, (_, info) in base.tensors.items()
        if name.endswith(".weight") and len(info.shape) == 2 and info.dtype in FLOAT_DTYPES
    }
    save_names = list(dict.fromkeys(modules_to_save))
    chosen: dict[str, Any] = {}
    if targets:
        wanted = list(dict.fromkeys(targets))
        chosen = {n: i for n, i in candidates.items() if _matches(_module(n), wanted)}
        unknown = [t for t in wanted if not any(_matches(_module(n), [t]) for n in chosen)]
        if unknown:
            shorts = sorted({_module(n).rsplit(".", 1)[-1] for n in candidates})
            raise InvalidArgumentError(
                f"no 2-D weight of the base is a module named {unknown[0]!r}",
                hint=f"modules with 2-D weights: {', '.join(shorts[:20])}",
            )
    else:
        chosen = {
            n: i for n, i in candidates.items() if not EMBEDDING.search(_module(n)) and not HEAD.search(_module(n))
        }
    chosen = {n: i for n, i in chosen.items() if not _saved_module(_module(n), save_names)}
    saved = sorted(n for n in tuned.tensors if _saved_module(_module(n), save_names))
    unknown_saves = [s for s in save_names if not any(_saved_module(_module(n), [s]) for n in saved)]
    if unknown_saves:
        raise InvalidArgumentError(
            f"--modules-to-save {unknown_saves[0]!r} names no module of the tuned model",
            hint="give module names such as embed_tokens, lm_head or norm",
        )
    if targets and not chosen:
        raise InvalidArgumentError("every target is also in --modules-to-save; nothing to decompose")
    changed = {n for n in tuned.tensors if tuned_digests.get(n) != base_digests.get(n)}
    plan_targets = []
    for name in sorted(chosen):
        if name not in changed:
            continue
        info = chosen[name]
        embedding = bool(EMBEDDING.search(_module(name)))
        transposed = embedding or conv1d
        rows, cols = info.shape
        plan_targets.append(
            Target(
                key=name,
                module=_module(name),
                kind="embedding" if embedding else "linear",
                transposed=transposed,
                out_features=cols if transposed else rows,
                in_features=rows if transposed else cols,
            )
        )
    architectures = " ".join(base.architectures)
    task_type = (
        "CAUSAL_LM"
        if "ForCausalLM" in architectures or "LMHeadModel" in architectures
        else "SEQ_CLS"
        if "ForSequenceClassification" in architectures
        else None
    )
    return ExtractPlan(
        targets=plan_targets,
        saved=saved,
        unchanged=sorted(n for n in chosen if n not in changed),
        not_captured=sorted(n for n in changed if n not in chosen and n not in saved),
        modules_to_save=save_names,
        fan_in_fan_out=conv1d,
        task_type=task_type,
    )


def read_weight(model: ModelDir, name: str) -> torch.Tensor:
    """One tensor, read with ``pread`` into fresh memory (no mapping of the shard stays behind)."""
    shard, info = model.tensors[name]
    raw = np.fromfile(model.headers[shard].path, dtype=np.uint8, count=info.nbytes, offset=info.start)
    return torch.from_numpy(raw).view(torch_dtype(info.dtype)).reshape(info.shape)


def _truncate(
    m: torch.Tensor, rank: int | None, energy: float | None, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """(U, S, V, k) for the cut of ``m`` (see the module doc)."""
    n_min = min(m.shape)
    if rank is not None:
        k = min(rank, n_min)
        if 4 * k < n_min:
            u, s, v = _randomized_svd(m, k, gen)
        else:
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            v = vh.t()
        return u, s, v, k
    assert energy is not None
    total = float(torch.linalg.matrix_norm(m).double() ** 2)
    if total == 0:
        return m.new_zeros(m.shape[0], 1), m.new_zeros(1), m.new_zeros(m.shape[1], 1), 1
    q = FIRST_SKETCH
    while True:
        if 4 * q >= n_min:
            u, s, vh = torch.linalg.svd(m, full_matrices=False)
            v = vh.t()
            break
        u, s, v = _randomized_svd(m, q, gen)
        if float((s.double() ** 2).sum()) >= energy * total:
            break
        q *= 2
    kept = torch.cumsum(s.double() ** 2, 0)
    need = energy * total - TOLERANCE * total
    k = int(torch.searchsorted(kept, torch.tensor([need], dtype=kept.dtype)).item()) + 1
    return u, s, v, min(k, s.numel())


def _one(
    t: Target,
    base: ModelDir,
    tuned: ModelDir,
    rank: int | None,
    energy: float | None,
    seed: int,
    device: torch.device,
    out_dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    """(A, B, k, relative error) of one target."""
    d = read_weight(tuned, t.key).to(device, torch.float32)
    d.sub_(read_weight(base, t.key).to(device, torch.float32))
    m = d.t() if t.transposed else d
    u, s, v, k = _truncate(m, rank, energy, generator_for(seed, "extract:" + t.module))
    a, b = _split(u, s, v, k)
    a, b = a.to(out_dtype).contiguous(), b.to(out_dtype).contiguous()
    norm = float(torch.linalg.matrix_norm(m))
    residual = torch.addmm(m, b.to(m.dtype), a.to(m.dtype), alpha=-1)
    error = float(torch.linalg.matrix_norm(residual)) / norm if norm > 0 else 0.0
    return a.cpu(), b.cpu(), k, error


@contextlib.contextmanager
def _single_threaded_torch(enabled: bool) -> Iterator[None]:
    """torch's intra-op threads at 1 on the CPU, where modules are decomposed side by side instead:
    the products here are thin (``n x (k+10)``), and on a machine whose cores are shared, threads
    that wait for each other at every one of them made a whole extraction 3x slower than one thread
    did. One thread per module also makes the bytes independent of the number of cores."""
    before = torch.get_num_threads()
    if enabled:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def extract_lora(
    plan: ExtractPlan,
    base: ModelDir,
    tuned: ModelDir,
    *,
    rank: int | None = None,
    energy: float | None = None,
    seed: int = 0,
    device: torch.device | None = None,
    dtype: str = "float32",
    workers: int | None = None,
    advance: Callable[[int], None] | None = None,
) -> Extracted:
    """The adapter's tensors (PEFT keys), ranks and measured errors. On the CPU, ``workers`` modules
    (default: one per core, at most 4, which bounds memory at a few tensors per worker) are
    decomposed at a time, each with one torch thread; on an accelerator one at a time. Each
    module's draws come from its own generator, so the result does not depend on the order in
    which modules finish."""
    device = device or torch.device("cpu")
    out_dtype = TORCH_DTYPES[dtype]
    if workers is None:
        workers = min(os.cpu_count() or 1, 4) if device.type == "cpu" else 1
    result = Extracted(tensors={})
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    with _single_threaded_torch(device.type == "cpu"), ThreadPoolExecutor(workers) as pool:
        jobs = {pool.submit(_one, t, base, tuned, rank, energy, seed, device, out_dtype): t for t in plan.targets}
        for job in as_completed(jobs):
            t = jobs[job]
            a, b, k, error = job.result()
            factors[t.module], result.ranks[t.module], result.errors[t.module] = (a, b), k, error
            if advance:
                advance(1)
    for t in plan.targets:  # plan order, whatever order the modules finished in
        a_key, b_key = lora_keys(t.module, embedding=t.kind == "embedding")
        result.tensors[a_key], result.tensors[b_key] = factors.pop(t.module)
    result.ranks = {t.module: result.ranks[t.module] for t in plan.targets}
    result.errors = {t.module: result.errors[t.module] for t in plan.targets}
    for name in plan.saved:
        result.tensors[saved_key(name)] = read_weight(tuned, name)
    return result
