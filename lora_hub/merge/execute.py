"""Carry out a ``MergePlan``, streaming: one tensor at a time, in row blocks of about 4 MB.

Per target tensor ``W`` (stored ``[rows, cols]``), for each row block::

    Wb   <- W[rows] from the shard's read-only mapping, widened to float32 into a reused buffer
    Wb  += L[rows] @ R              L = [w_i s_i B_i ...], R = [A_i; ...]  (transposed layouts swap them)
    out  <- Wb rounded once to the output dtype, into one of a few rotating buffers

A writer thread writes (and hashes) the blocks while the next one is computed, and untouched
tensors are copied as bytes (``ShardWriter.copy_range``), never decoded.
Reusing buffers matters: freshly allocated memory page-faults on every block.

Every changed tensor is checked by ``lora_hub.merge.verify`` against an independent
recomputation of the recipe (a probe over all rows and sampled rows entry by entry for the
linear methods; the dense methods, DoRA, biases and saved tensors recomputed in float64). The
engine hands it the output as written: for streamed tensors the products ``Wx`` and ``W'x`` of
each block with its probe ``x``, the sum of squares of ``W'``, and the sampled rows; otherwise
the whole tensor (and, for the methods that trim, the thresholds they cut at).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open

from lora_hub.errors import MergeError
from lora_hub.formats.dtypes import ITEMSIZE as DTYPE_SIZES
from lora_hub.formats.dtypes import torch_dtype
from lora_hub.formats.hf import ModelDir
from lora_hub.formats.peft import bias_key, find_lora_keys, magnitude_key
from lora_hub.hashing import format_digest
from lora_hub.merge.methods import Method, generator_for, get_method
from lora_hub.merge.plan import BiasOp, DoraOp, FactorOp, MergePlan, ReplaceOp, TensorPlan, open_output
from lora_hub.merge.verify import Verifier, ensure_coefficients_fit
from lora_hub.merge.writer import OutputFiles, ShardWriter, write_index

if TYPE_CHECKING:
    from lora_hub.merge.plan import AdapterInput

BLOCK_BYTES_CPU = 4 << 20
BLOCK_BYTES_CUDA = 64 << 20
READ_AHEAD_BYTES = 256 << 20
# One POSIX_FADV_WILLNEED reads at most max(read_ahead_kb, max_sectors_kb) (measured: 8 MB of a
# 100 MB range here), so a tensor is asked for in pieces.
READ_AHEAD_CHUNK = 2 << 20
# ``W += L @ R`` (one addmm) is computed over whole tiles of rows at fixed offsets. A matrix
# product of a few rows takes other kernel paths than one of many, with other rounding (measured
# with MKL: 1-7 rows differ, any multiple of 16 agrees), so tiling makes the output bytes
# independent of the block size.
ROW_TILE = 16


def default_threads(cores: int | None = None) -> int:
    """Torch threads for a CPU merge: one per core but one, which the writer and hasher threads
    (and the verifier) need. Measured on 2 cores: one torch thread merges the 1.1B model of the
    benchmark in about 3.5 s, two threads (taking the writer's core) in 11 to 20 s. Set
    ``LORAHUB_TORCH_THREADS`` to choose (see BENCHMARKS.md for measurements with more cores)."""
    return max(1, (cores or os.cpu_count() or 1) - 1)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise MergeError("--device cuda was asked for, but torch sees no CUDA device", hint="use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise MergeError(f"unknown device {device!r}", hint="use auto, cpu or cuda") from exc


@dataclass
class MergeStats:
    tensors_merged: int = 0
    tensors_copied: int = 0
    tensors_converted: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    digests: dict[str, str] = field(default_factory=dict)
    # What ``lora_hub.merge.verify`` checked, per changed tensor (``MergeReport`` says what each is).
    errors: dict[str, float] = field(default_factory=dict)  # worst |error| / bound
    tolerances: dict[str, float] = field(default_factory=dict)  # 1.0
    checks: dict[str, list[str]] = field(default_factory=dict)
    rows_checked: dict[str, int] = field(default_factory=dict)
    entries_checked: dict[str, int] = field(default_factory=dict)
    ambiguous: dict[str, int] = field(default_factory=dict)
    thresholds: dict[str, list[float | None]] = field(default_factory=dict)
    not_verified: list[str] = field(default_factory=list)


class _Writer:
    """Two threads behind the compute: one writes blocks to the shard, the next hashes them,
    then the block's buffer goes back to ``free``. The compute thread fills buffers from
    ``free`` directly, so a merged block is never copied in user space before it is written."""

    def __init__(self, block_bytes: int, buffers: int, pin: bool) -> None:
        self.free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(buffers):
            self.free.put(torch.empty(block_bytes, dtype=torch.uint8, pin_memory=pin))
        self.work: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.hash_work: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.hashes: dict[str, str] = {}
        self._threads = [
            threading.Thread(target=self._write_loop, name="lorahub-writer", daemon=True),
            threading.Thread(target=self._hash_loop, name="lorahub-hasher", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _write_loop(self) -> None:
        shard: ShardWriter | None = None
        try:
            while (item := self.work.get()) is not None:
                kind = item[0]
                if kind == "block":
                    _, event, buf, n = item
                    if event is not None:
                        event.synchronize()
                    if self.error is None:
                        try:
                            assert shard is not None
                            shard.write(memoryview(buf.numpy())[:n])
                        except BaseException as exc:
                            self.error = exc
                    self.hash_work.put(("block", buf, n))
                    continue
                if self.error is not None:
                    continue
                try:
                    if kind == "open":
                        shard = item[1]
                    elif kind == "close":
                        assert shard is not None
                        shard.close()
                        shard = None
                    elif kind == "copy":
                        assert shard is not None
                        shard.copy_range(item[1], item[2], item[3])
                    else:  # "begin" / "end" of a hashed tensor
                        self.hash_work.put(item)
                except BaseException as exc:
                    self.error = exc
        finally:
            try:
                if shard is not None:
                    shard.abort()
            finally:
                self.hash_work.put(None)  # else the hasher, and finish() with it, waits forever

    def _hash_loop(self) -> None:
        hasher: Any = None
        while (item := self.hash_work.get()) is not None:
            kind = item[0]
            if kind == "begin":
                hasher = hashlib.sha256()
            elif kind == "block":
                _, buf, n = item
                if self.error is None:
                    hasher.update(memoryview(buf.numpy())[:n])
                self.free.put(buf)
            elif kind == "end":
                self.hashes[item[1]] = format_digest(hasher.hexdigest())

    def buffer(self) -> torch.Tensor:
        if self.error is not None:
            raise self.error
        return self.free.get()

    def put(self, *item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.work.put(item)

    def finish(self) -> None:
        self.work.put(None)
        for t in self._threads:
            t.join()
        if self.error is not None:
            raise self.error


class _AdapterFiles:
    """Lazy access to adapter tensors (memory-mapped by safetensors), as float32 on the device.
    The tensors of the last few modules stay at hand as stored: a merge and its verification
    read the same factors, in two precisions."""

    _KEEP = 8

    def __init__(self, paths: list[str], device: torch.device) -> None:
        self._handles = [safe_open(p, framework="pt") for p in paths]
        self._keys = [set(h.keys()) for h in self._handles]
        self._stored: dict[tuple[int, str], torch.Tensor] = {}
        self.device = device

    def _raw(self, adapter: int, key: str) -> torch.Tensor:
        got = self._stored.get((adapter, key))
        if got is None:
            if len(self._stored) >= self._KEEP:
                del self._stored[next(iter(self._stored))]
            got = self._stored[(adapter, key)] = self._handles[adapter].get_tensor(key)
        return got

    def get(self, adapter: int, key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self._raw(adapter, key).to(self.device, dtype)

    def lora(self, op: FactorOp | DoraOp, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, B) as stored: A [r, in], B [out, r] (embeddings: A [r, vocab], B [dim, r])."""
        a_key, b_key = find_lora_keys(op.module, self._keys[op.adapter])
        return self.get(op.adapter, a_key, dtype), self.get(op.adapter, b_key, dtype)

    def magnitude(self, op: DoraOp) -> torch.Tensor:
        return self.get(op.adapter, magnitude_key(op.module, self._keys[op.adapter]), torch.float64).reshape(-1)


def _factors(files: _AdapterFiles, ops: list[FactorOp]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L, R) with ``sum_i w_i s_i delta_i == L @ R`` in the stored orientation."""
    lefts, rights = [], []
    for op in ops:
        a, b = files.lora(op)
        coef = op.weight * op.scale
        if op.transposed:  # stored [in, out]: delta^T = A^T B^T
            lefts.append(a.t() * coef)
            rights.append(b.t())
        else:
            lefts.append(b * coef)
            rights.append(a)
    return torch.cat(lefts, dim=1).contiguous(), torch.cat(rights, dim=0).contiguous()


def execute(
    plan: MergePlan,
    model: ModelDir,
    adapter_paths: list[str],
    out_dir: Path,
    *,
    device: torch.device,
    base_digests: dict[str, str],
    adapters: Sequence[AdapterInput],
    advance: Callable[[int], None] | None = None,
    block_bytes: int | None = None,
    output: OutputFiles | None = None,
    threads: int | None = None,
) -> MergeStats:
    """Write the merged shards and the index into ``out_dir`` (which must exist and be empty),
    through ``output`` if the caller opened it already (``open_output``); closes it. On the CPU,
    torch computes on ``threads`` threads (default ``default_threads()``).
    ``adapters`` are the recipe's inputs, in its order: the verification derives every
    coefficient, scale and orientation from their facts and layouts, not from the plan's ops.
    A tensor that fails its check raises ``MergeError``; merged values that are not finite
    raise ``InvalidArgumentError``."""
    output = output or open_output(plan, out_dir)
    before = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(threads or default_threads())
    try:
        return _execute(
            plan, model, adapter_paths, out_dir, device, base_digests, adapters, advance, block_bytes, output
        )
    finally:
        output.close()
        torch.set_num_threads(before)


def _execute(
    plan: MergePlan,
    model: ModelDir,
    adapter_paths: list[str],
    out_dir: Path,
    device: torch.device,
    base_digests: dict[str, str],
    adapters: Sequence[AdapterInput],
    advance: Callable[[int], None] | None,
    block_bytes: int | None,
    output: OutputFiles,
) -> MergeStats:
    started = time.perf_counter()
    cuda = device.type == "cuda"
    method = get_method(plan.recipe.method)
    params = dict(plan.recipe.params)
    block_bytes = block_bytes or (BLOCK_BYTES_CUDA if cuda else BLOCK_BYTES_CPU)
    files = _AdapterFiles(adapter_paths, device)
    by_name = {t.name: t for t in plan.tensors}
    stats = MergeStats()
    verifier = Verifier(plan, model, adapters, stats, device)
    # Enough blocks in flight that a stall of the writer or the hasher (which share the second
    # core) does not stop the compute at once: 32 MB on CPU; 4 pinned 64 MB blocks on CUDA.
    writer = _Writer(block_bytes, buffers=4 if cuda else 8, pin=cuda)
    scratch = _Scratch()
    fds: dict[str, int] = {}
    read_ahead = _ReadAhead(model, [by_name[n] for names in plan.shards for n in names], fds)
    state = _MergeState(model, fds, files, writer, device, block_bytes, verifier, method, params, scratch)
    try:
        for i, names in enumerate(plan.shards):
            writer.put("open", output.open(i))
            for name in names:
                t = by_name[name]
                read_ahead.reached(name)
                if t.copy_as_is:
                    info = model.tensors[name][1]
                    writer.put("copy", fds[t.source], info.start, info.nbytes)  # type: ignore[index]
                    stats.digests[name] = base_digests[name]
                    stats.tensors_copied += 1
                else:
                    writer.put("begin")
                    _merge_tensor(t, state)
                    writer.put("end", name)
                    stats.tensors_merged += bool(t.ops)
                    stats.tensors_converted += not t.ops
                stats.bytes_written += math.prod(t.shape) * DTYPE_SIZES[t.dtype_out]
                if advance:
                    advance(math.prod(t.shape) * DTYPE_SIZES[t.dtype_out])
            writer.put("close")
        writer.finish()
        verifier.drain()  # the streamed tensors' checks, run beside the compute
    except BaseException as failure:
        # Stop the writer threads before the failure propagates; a second error there (the shard
        # the first one left half-written) is kept as a note on the first, never raised instead.
        try:
            writer.finish()
        except Exception as second:
            failure.add_note(f"while stopping the writer: {type(second).__name__}: {second}")
        raise
    finally:
        scratch.close()
        verifier.close()
        for fd in fds.values():
            os.close(fd)
    stats.digests.update(writer.hashes)
    write_index(out_dir, output.shards, plan.shard_files, {"lorahub_recipe": plan.recipe_digest})
    stats.seconds = time.perf_counter() - started
    return stats


class _ReadAhead:
    """Keeps the kernel reading about ``READ_AHEAD_BYTES`` of base tensors ahead of the merge, in
    plan order, and opens each base shard once (in ``fds``). Costs next to nothing when the base
    is in the page cache; when it is not (a first merge, or pages the kernel reclaimed), the disk
    reads while the compute works, instead of one fault at a time."""

    def __init__(self, model: ModelDir, order: list[TensorPlan], fds: dict[str, int]) -> None:
        self._model = model
        self._fds = fds
        self._order = [t for t in order if t.source is not None]
        self._index = {t.name: i for i, t in enumerate(self._order)}
        self._issued = 0  # tensors of ``_order`` asked for so far

    def reached(self, name: str) -> None:
        """The merge is about to read ``name``: ask for what follows it, up to the window."""
        at = self._index.get(name)
        if at is None:
            return
        ahead = 0
        for i in range(at, len(self._order)):
            if ahead > READ_AHEAD_BYTES:
                break
            t = self._order[i]
            if i >= self._issued:  # the tensor itself always: that also opens its shard
                self._ask(t)
                self._issued = i + 1
            ahead += self._model.tensors[t.name][1].nbytes

    def _ask(self, t: TensorPlan) -> None:
        assert t.source is not None
        if t.source not in self._fds:
            self._fds[t.source] = os.open(self._model.headers[t.source].path, os.O_RDONLY)
        info = self._model.tensors[t.name][1]
        end = info.start + info.nbytes
        with contextlib.suppress(OSError):
            for at in range(info.start, end, READ_AHEAD_CHUNK):
                os.posix_fadvise(self._fds[t.source], at, min(READ_AHEAD_CHUNK, end - at), os.POSIX_FADV_WILLNEED)


def _emit(writer: _Writer, result: torch.Tensor, device: torch.device) -> None:
    """Queue ``result`` (any dtype, on ``device``) for writing, through the rotating buffers."""
    flat = result.reshape(-1).view(torch.uint8)
    pos = 0
    while pos < flat.numel():
        buf = writer.buffer()
        n = min(buf.numel(), flat.numel() - pos)
        buf[:n].copy_(flat[pos : pos + n], non_blocking=device.type == "cuda")
        event = None
        if device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        writer.put("block", event, buf, n)
        pos += n


def _view_rows(mapped: mmap.mmap, dtype: torch.dtype, start: int, row_bytes: int, r0: int, r1: int) -> torch.Tensor:
    """Rows ``r0:r1`` of the tensor at ``start`` in a mapped shard, without copying them."""
    count = (r1 - r0) * row_bytes // dtype.itemsize
    return torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + r0 * row_bytes)


@dataclass
class _MergeState:
    """What every tensor's merge works with, set up once per merge."""

    model: ModelDir
    fds: dict[str, int]
    files: _AdapterFiles
    writer: _Writer
    device: torch.device
    block_bytes: int
    verifier: Verifier
    method: Method
    params: dict[str, Any]
    scratch: _Scratch


def _merge_tensor(t: TensorPlan, st: _MergeState) -> None:
    """Write one changed (or converted) tensor: a saved tensor replacing the base's, a tensor
    held whole (dense methods, DoRA, LoRA biases, not 2-D), or, the common case, rows streamed."""
    ensure_coefficients_fit(t)
    replace = [op for op in t.ops if isinstance(op, ReplaceOp)]
    if replace:
        _replace(t, st, replace[0], [op for op in t.ops if isinstance(op, FactorOp)])
        return
    factors = [op for op in t.ops if isinstance(op, FactorOp)]
    dense = bool(factors) and st.method.coefficients is None
    if dense or any(isinstance(op, DoraOp | BiasOp) for op in t.ops) or len(t.shape) != 2:
        _whole(t, st, factors, dense)
        return
    _stream_rows(t, st, factors)


def _replace(t: TensorPlan, st: _MergeState, replace: ReplaceOp, on_top: list[FactorOp]) -> None:
    """A saved tensor (``modules_to_save``), as it is or with its own LoRA update on top (PEFT's
    copy of an embedding under a LoRA layer)."""
    if not on_top:
        out = st.files.get(replace.adapter, replace.tensor, torch_dtype(t.dtype_out))
        st.verifier.whole(t, out)
        _emit(st.writer, out, st.device)
        return
    start = st.files.get(replace.adapter, replace.tensor, torch.float32).reshape(t.shape)
    if st.method.coefficients is None:
        out, thresholds = _merge_dense(t, start, on_top, st.files, st.method, st.params)
        st.verifier.whole(t, out, thresholds)
    else:
        out = _merge_whole(t, start, on_top, st.files)
        st.verifier.whole(t, out)
    _emit(st.writer, out, st.device)


def _whole(t: TensorPlan, st: _MergeState, factors: list[FactorOp], dense: bool) -> None:
    """A tensor read and merged whole: a dense method's, a DoRA module's, a LoRA bias, or one
    that is not 2-D (converted to another dtype)."""
    assert t.source is not None
    info = st.model.tensors[t.name][1]
    raw = bytearray(os.pread(st.fds[t.source], info.nbytes, info.start))
    whole = torch.frombuffer(raw, dtype=torch_dtype(t.dtype_in)).reshape(t.shape)
    if dense:
        out, thresholds = _merge_dense(t, whole.to(st.device, torch.float32), factors, st.files, st.method, st.params)
        st.verifier.whole(t, out, thresholds)
        _emit(st.writer, out, st.device)
        return
    dora = [op for op in t.ops if isinstance(op, DoraOp)]
    biases = [op for op in t.ops if isinstance(op, BiasOp)]
    if dora:
        result = _merge_dora(whole.to(st.device, torch.float64), dora[0], st.files)
    else:
        result = whole.to(st.device, torch.float64 if biases else torch.float32)
        for op in biases:
            bias = st.files.get(op.adapter, bias_key(op.module), torch.float64)
            result = result + bias * (op.weight * op.scale)
        if factors:
            raise MergeError(f"{t.name}: LoRA factors on a tensor that is not 2-D")
    out = result.to(torch_dtype(t.dtype_out))
    if dora or biases:
        st.verifier.whole(t, out)
    _emit(st.writer, out, st.device)


def _stream_rows(t: TensorPlan, st: _MergeState, factors: list[FactorOp]) -> None:
    """``W + L @ R`` (or a plain dtype conversion) in row blocks straight from the shard's
    mapping, each block handed to the writer as soon as it is rounded; see the module docstring."""
    assert t.source is not None
    model, fds, files, writer, device, scratch = st.model, st.fds, st.files, st.writer, st.device, st.scratch
    info = model.tensors[t.name][1]
    fd = fds[t.source]
    in_dtype, out_dtype = torch_dtype(t.dtype_in), torch_dtype(t.dtype_out)
    rows, cols = t.shape
    row_bytes = cols * DTYPE_SIZES[t.dtype_in]
    out_item = DTYPE_SIZES[t.dtype_out]
    block_rows = max(1, st.block_bytes // max(1, cols * max(4, out_item)))
    if block_rows >= ROW_TILE:
        block_rows -= block_rows % ROW_TILE  # blocks start on tile boundaries
    oversized = block_rows * cols * out_item > st.block_bytes  # one row does not fit a buffer
    span = min(rows, block_rows) * cols
    # Rows come straight from the page cache through a mapping: pread copied them first, which
    # cost about 1 s per GB here, five times the widening copy itself.
    mapped = scratch.mapping(fd, info.start + info.nbytes)
    # Buffers live across blocks and tensors: a fresh allocation would page-fault every time.
    work = scratch.tensor("work", span, torch.float32, device)
    on_host = device.type == "cpu"
    out_dev = None if on_host else scratch.tensor("out", span, out_dtype, device)
    if factors:
        left, right = _factors(files, factors)
        # Zero rows up to a whole tile, so that every product has a multiple of ROW_TILE rows.
        left = torch.cat([left, left.new_zeros((-rows) % ROW_TILE, left.shape[1])])
        tile = scratch.tensor("tile", ROW_TILE * cols, torch.float32, device).view(ROW_TILE, cols)
        check = st.verifier.streamed(t, device)
        x = check.x
        # float32 products, as the block is; widened once per tensor for the float64 comparison
        y_out = torch.empty(rows, dtype=torch.float32, device=device)
        y_base = torch.empty(rows, dtype=torch.float32, device=device)
        sq_norm = torch.zeros((), dtype=torch.float64, device=device)
    for r0 in range(0, rows, block_rows):
        r1 = min(rows, r0 + block_rows)
        n = (r1 - r0) * cols
        raw = _view_rows(mapped, in_dtype, info.start, row_bytes, r0, r1)
        wb = work[:n].view(r1 - r0, cols)
        wb.copy_(raw.view(r1 - r0, cols), non_blocking=True)
        if factors:
            torch.mv(wb, x, out=y_base[r0:r1])
            _add_update(wb, r0, r1, left, right, tile)
        if oversized:
            out = wb.to(out_dtype)
            _emit(writer, out, device)
        else:
            buf = writer.buffer()
            host_out = buf[: n * out_item].view(out_dtype).view(r1 - r0, cols)
            if on_host:
                host_out.copy_(wb)
                out = host_out
            else:
                out = out_dev[:n].view(r1 - r0, cols)  # type: ignore[index]
                out.copy_(wb)
                host_out.copy_(out, non_blocking=True)
        if factors:
            # The block as written, widened back into the work buffer (done with it): the
            # verification sees the output's bytes, in a buffer that is still in cache.
            check.capture(r0, r1, out.view(r1 - r0, cols))
            wb.copy_(out.view(r1 - r0, cols))
            torch.mv(wb, x, out=y_out[r0:r1])
            flat = wb.view(-1)
            sq_norm += torch.dot(flat, flat)
        if not oversized:
            event = None
            if not on_host:
                event = torch.cuda.Event()
                event.record()
            writer.put("block", event, buf, n * out_item)
    scratch.release(fd, info.start, info.nbytes)
    if factors:
        # ||W'||_F, one dot product per block, bounds || |W'| |x| || for the probe's check.
        check.finish(y_base, y_out, float(sq_norm), span)


def _add_update(
    wb: torch.Tensor, r0: int, r1: int, left: torch.Tensor, right: torch.Tensor, tile: torch.Tensor
) -> None:
    """``wb += left[r0:r1] @ right`` where ``wb`` holds rows ``r0:r1``, with every product over
    whole tiles of ``ROW_TILE`` rows at fixed offsets (see ``ROW_TILE``). Full tiles are updated
    in place; a part of a tile goes through ``tile``, zero elsewhere, since a row's result
    depends only on that row."""
    full_end = r0 + (r1 - r0) // ROW_TILE * ROW_TILE if r0 % ROW_TILE == 0 else r0
    if full_end > r0:
        wb[: full_end - r0].addmm_(left[r0:full_end], right)
    pos = full_end
    while pos < r1:
        t0 = pos - pos % ROW_TILE
        end = min(r1, t0 + ROW_TILE)
        tile.zero_()
        tile[pos - t0 : end - t0].copy_(wb[pos - r0 : end - r0])
        tile.addmm_(left[t0 : t0 + ROW_TILE], right)
        wb[pos - r0 : end - r0].copy_(tile[pos - t0 : end - t0])
        pos = end


class _Scratch:
    """Buffers reused across tensors, grown when a larger one is needed, and the base shards'
    read-only mappings."""

    def __init__(self) -> None:
        self._tensors: dict[str, torch.Tensor] = {}
        self._maps: dict[int, mmap.mmap] = {}

    def mapping(self, fd: int, end: int) -> mmap.mmap:
        """The shard open as ``fd``, mapped (copy-on-write, never written: torch wants a
        writable buffer). Checked to still reach ``end``: a file truncated under a mapping
        kills the process with SIGBUS where pread reported a short read."""
        if os.fstat(fd).st_size < end:
            raise MergeError("a base shard ended early: was it changed during the merge?")
        if fd not in self._maps:
            self._maps[fd] = mmap.mmap(fd, 0, access=mmap.ACCESS_COPY)
        return self._maps[fd]

    def release(self, fd: int, start: int, nbytes: int) -> None:
        """Unmap the pages of a tensor that is done, so that RSS stays at a few blocks rather
        than growing to the model's size; the page cache keeps them."""
        m = self._maps.get(fd)
        if m is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        lo = start - start % mmap.PAGESIZE
        hi = min(len(m), start + nbytes + (-(start + nbytes)) % mmap.PAGESIZE)
        with contextlib.suppress(OSError, ValueError):
            m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def close(self) -> None:
        for m in self._maps.values():
            with contextlib.suppress(BufferError):  # a tensor still viewing it: freed with it
                m.close()
        self._maps.clear()

    def tensor(self, name: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        nbytes = numel * dtype.itemsize
        have = self._tensors.get(name)
        if have is None or have.numel() < nbytes or have.device != device:
            have = self._tensors[name] = torch.empty(nbytes, dtype=torch.uint8, device=device)
        return have[:nbytes].view(dtype)


def _merge_whole(t: TensorPlan, w: torch.Tensor, ops: list[FactorOp], files: _AdapterFiles) -> torch.Tensor:
    """``W + L @ R`` for a weight held whole in float32 (a saved base layer), computed like the
    streamed ones."""
    left, right = _factors(files, ops)
    left = torch.cat([left, left.new_zeros((-w.shape[0]) % ROW_TILE, left.shape[1])])
    merged = w.clone()
    tile = torch.empty(ROW_TILE, w.shape[1], dtype=torch.float32, device=w.device)
    _add_update(merged, 0, w.shape[0], left, right, tile)
    return merged.to(torch_dtype(t.dtype_out))


def _merge_dense(
    t: TensorPlan,
    w: torch.Tensor,
    ops: list[FactorOp],
    files: _AdapterFiles,
    method: Method,
    params: dict[str, Any],
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """``W + combine(delta_1..delta_n)`` for a method that needs the dense updates (TIES, DARE...),
    and the trim thresholds the method used, if it trims (one per op)."""
    deltas = []
    for op in ops:
        a, b = files.lora(op)
        deltas.append(((a.t() @ b.t()) if op.transposed else (b @ a)) * op.scale)
    # Seeded by the adapter's module path, as ``combine`` does, so both draw the same masks.
    gen = generator_for(params["seed"], ops[0].module) if method.random else None
    used: dict[str, Any] = {}
    combined = method.combine(deltas, [op.weight for op in ops], params, gen, used=used)  # type: ignore[misc]
    return (w + combined).to(torch_dtype(t.dtype_out)), used.get("thresholds")


def _merge_dora(w: torch.Tensor, op: DoraOp, files: _AdapterFiles) -> torch.Tensor:
    """``m / ||W + sBA||_row * (W + sBA)`` in float64, the norm over the input axis of the
    logical ``[out, in]`` weight (stored transposed for fan_in_fan_out and embeddings)."""
    a, b = files.lora(op, torch.float64)
    delta = (b @ a) * op.scale
    logical = w.t() if op.transposed else w
    combined = logical + delta
    magnitude = files.magnitude(op)
    norm = torch.linalg.vector_norm(combined, dim=1)
    merged = combined * (magnitude / norm).unsqueeze(1)
    return merged.t() if op.transposed else merged
