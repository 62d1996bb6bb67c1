"""Benchmark `lorahub push` / re-push / `lorahub pull` of a ~1 GB PEFT adapter against
`sha256sum FILE && cp FILE DEST`.

Every measurement is a whole process (`lorahub ...` as a user runs it), timed on the wall clock
with time.perf_counter around spawn + wait. Peak RSS and the bytes written (ru_maxrss, ru_oublock)
come from GNU time (/usr/bin/time -f %M %O); the peak of anonymous memory (RssAnon, i.e. without
the page-cache pages of memory-mapped files) is sampled from /proc/PID/status.

Each run:
  1. baseline:  sha256sum FILE; cp FILE DEST               (and, for reference, + `sync DEST`)
  2. push:      lorahub push DIR --name bench/big          (fresh LORAHUB_HOME, SQLite catalog)
  3. re-push:   the same command into the same home        (must print 'unchanged', store must not grow)
  4. pull:      lorahub pull bench/big:1 -o OUT
Before each timed step (untimed): the dirty pages are flushed (sync); with --drop-caches the page
cache is dropped too (needs root), otherwise all numbers are warm page cache; we wait for the
other processes on the machine to go quiet; and 1.5 GiB of memory is touched and freed (see
prefault(): on a ballooned VM, fresh memory costs 1-3 s per GB of host page faults).

Example:  python bench/bench_push_pull.py --runs 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _envinfo

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
PREFIX = "base_model.model."
WEIGHTS = "adapter_model.safetensors"
TARGET_RATIO = 1.3


# --- the input ---------------------------------------------------------------------------------


def input_spec(size_mib: int, rank: int, hidden: int) -> dict[str, int]:
    per_layer = len(TARGETS) * 2 * rank * hidden * 4  # float32 A [r, in] + B [out, r]
    layers = max(1, round(size_mib * 2**20 / per_layer))
    return {"size_mib": size_mib, "rank": rank, "hidden": hidden, "layers": layers, "seed": 0, "format": 1}


def make_adapter(folder: Path, spec: dict[str, int]) -> None:
    """A PEFT folder: float32 lora_A [r, hidden] / lora_B [hidden, r] for TARGETS on every layer."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(spec["seed"])
    r, h = spec["rank"], spec["hidden"]
    tensors: dict[str, np.ndarray] = {}
    for layer in range(spec["layers"]):
        for t in TARGETS:
            path = f"{PREFIX}model.layers.{layer}.self_attn.{t}"
            tensors[f"{path}.lora_A.weight"] = rng.standard_normal((r, h), dtype=np.float32)
            tensors[f"{path}.lora_B.weight"] = rng.standard_normal((h, r), dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / WEIGHTS))
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": 2 * r,
        "target_modules": TARGETS,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": f"bench/base-{h}",
        "revision": None,
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "bias": "none",
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def ensure_input(workdir: Path, spec: dict[str, int]) -> tuple[Path, bool]:
    """The adapter folder, made unless a previous --keep run left one with the same spec."""
    folder = workdir / "adapter"
    marker = workdir / "adapter.spec.json"
    if marker.is_file() and json.loads(marker.read_text()) == spec and (folder / WEIGHTS).is_file():
        return folder, True
    shutil.rmtree(folder, ignore_errors=True)
    marker.unlink(missing_ok=True)
    t0 = time.perf_counter()
    make_adapter(folder, spec)
    os.sync()
    marker.write_text(json.dumps(spec))
    size = (folder / WEIGHTS).stat().st_size
    print(f"made {folder / WEIGHTS}: {size / 2**20:,.0f} MiB in {time.perf_counter() - t0:.1f} s", flush=True)
    return folder, False


# --- processes ---------------------------------------------------------------------------------


@dataclass
class Proc:
    wall: float
    maxrss_kib: int
    anon_peak_kib: int
    written_bytes: int
    read_bytes: int
    rc: int
    stdout: str
    stderr: str
    foreign_cpu: float = 0.0  # CPU-seconds that other processes used meanwhile


def _sample_anon(pid: int, peak: list[int], interval: float, via_time: bool) -> None:
    if via_time:  # sample the command, not /usr/bin/time: its child
        children = f"/proc/{pid}/task/{pid}/children"
        while True:
            try:
                with open(children) as f:
                    kids = f.read().split()
            except OSError:
                return
            if kids:
                pid = int(kids[0])
                break
            time.sleep(0.001)
    status = f"/proc/{pid}/status"
    while True:
        try:
            with open(status) as f:
                text = f.read()
        except OSError:
            return
        found = False
        for line in text.splitlines():
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]))
                found = True
                break
        if not found:  # a zombie: its memory is gone
            return
        time.sleep(interval)


GNU_TIME = "/usr/bin/time"


def run_proc(cmd: list[str], env: dict[str, str] | None = None, sample: float = 0.01) -> Proc:
    """Run ``cmd``; wall clock from spawn to reap.

    Peak RSS and block I/O come from GNU time (``/usr/bin/time``) when it is there: the rusage
    that os.wait4 gives for a direct child of this Python process is useless for ru_maxrss, as
    Linux carries the RSS of the forked copy of this (large) process across exec. Without GNU
    time we fall back to os.wait4 and say so.
    """
    via_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryFile() as fout, tempfile.TemporaryFile() as ferr, tempfile.NamedTemporaryFile() as ftime:
        full = [GNU_TIME, "-f", "%M %O %I %x", "-o", ftime.name, *cmd] if via_time else cmd
        peak = [0]
        with _envinfo.ForeignCpu() as foreign:
            t0 = time.perf_counter()
            p = subprocess.Popen(full, env=env, stdout=fout, stderr=ferr, stdin=subprocess.DEVNULL)
            sampler = None
            if sample > 0:
                sampler = threading.Thread(target=_sample_anon, args=(p.pid, peak, sample, via_time), daemon=True)
                sampler.start()
            _, status, ru = os.wait4(p.pid, 0)
            wall = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if sampler is not None:
            sampler.join()
        fout.seek(0)
        ferr.seek(0)
        maxrss, oublock, inblock = ru.ru_maxrss, ru.ru_oublock, ru.ru_inblock
        if via_time:
            fields = Path(ftime.name).read_text().split()
            if len(fields) >= 3 and all(f.isdigit() for f in fields[:3]):
                maxrss, oublock, inblock = (int(f) for f in fields[:3])
        return Proc(
            wall=wall,
            maxrss_kib=maxrss,
            anon_peak_kib=peak[0],
            written_bytes=oublock * 512,
            read_bytes=inblock * 512,
            rc=p.returncode,
            stdout=fout.read().decode(errors="replace"),
            stderr=ferr.read().decode(errors="replace"),
            foreign_cpu=foreign.seconds,
        )


def check(proc: Proc, what: str) -> Proc:
    if proc.rc != 0:
        raise SystemExit(f"{what} failed with exit code {proc.rc}:\n{proc.stdout}\n{proc.stderr}")
    return proc


QUIET = {"max_wait": 300.0, "prefault_mib": 1536}


def prefault(mib: int) -> None:
    """Touch and free ``mib`` MiB of memory.

    On a VM with a free-page-reporting balloon (virtio_balloon, e.g. Firecracker), memory the
    guest freed a few seconds ago has been handed back to the host, and the next process that
    allocates 1 GB of page cache pays ~1-3 s of host page faults for it: that lands on whichever
    step runs first, not on the software being measured. Touching the memory just before the
    step makes every step start from the same state.
    """
    if mib > 0:
        block = np.ones(mib << 20, dtype=np.uint8)
        del block


def quiesce(drop_caches: bool) -> None:
    """Flush dirty pages (so one step's writeback does not land in the next), optionally drop
    the page cache, wait for the other processes on the machine to go quiet, and prefault
    memory. Untimed."""
    os.sync()
    if drop_caches:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    if QUIET["max_wait"] > 0:
        _envinfo.wait_quiet(max_wait=QUIET["max_wait"])
    prefault(int(QUIET["prefault_mib"]))


def store_usage(home: Path) -> tuple[int, int]:
    """(bytes, files) of the blob store's sha256/ folder, by `du -sb` and a walk."""
    blobs = home / "blobs" / "sha256"
    if not blobs.is_dir():
        return 0, 0
    du = subprocess.run(["du", "-sb", str(blobs)], capture_output=True, text=True, check=True)
    size = int(du.stdout.split()[0])
    files = sum(len(fs) for _, _, fs in os.walk(blobs))
    return size, files


def blob_identity(home: Path) -> list[tuple[str, int, int]]:
    blobs = home / "blobs" / "sha256"
    out = []
    for dirpath, _, files in os.walk(blobs):
        for f in files:
            st = os.stat(os.path.join(dirpath, f))
            out.append((f, st.st_ino, st.st_mtime_ns))
    return sorted(out)


# --- the benchmark -----------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    procs: list[Proc] = field(default_factory=list)

    @property
    def walls(self) -> list[float]:
        return [p.wall for p in self.procs]

    def median(self) -> float:
        return statistics.median(self.walls)


def lorahub_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    env["LORAHUB_HOME"] = str(home)
    env["COLUMNS"] = "200"
    return env


def lorahub_exe() -> str:
    exe = Path(sys.executable).parent / "lorahub"
    return str(exe) if exe.is_file() else (shutil.which("lorahub") or "lorahub")


def combine(*procs: Proc) -> Proc:
    return Proc(
        wall=sum(p.wall for p in procs),
        maxrss_kib=max(p.maxrss_kib for p in procs),
        anon_peak_kib=max(p.anon_peak_kib for p in procs),
        written_bytes=sum(p.written_bytes for p in procs),
        read_bytes=sum(p.read_bytes for p in procs),
        rc=max(p.rc for p in procs),
        stdout="".join(p.stdout for p in procs),
        stderr="".join(p.stderr for p in procs),
        foreign_cpu=sum(p.foreign_cpu for p in procs),
    )


NOISY_SHARE = 0.2  # retry a step when other processes used more than this share of a CPU during it
RETRIES = {"max": 3, "done": 0}


def noisy(proc: Proc) -> bool:
    return proc.foreign_cpu > NOISY_SHARE * proc.wall


def stepped(fn: Callable[[], tuple[Proc, ...]], drop_caches: bool) -> tuple[Proc, ...]:
    """quiesce, run ``fn``; again (at most RETRIES['max'] times) while other processes were busy
    meanwhile. ``fn`` must set itself up from scratch each time."""
    for attempt in range(RETRIES["max"] + 1):
        quiesce(drop_caches)
        procs = fn()
        if not noisy(procs[0]) or attempt == RETRIES["max"]:
            return procs
        RETRIES["done"] += 1
        print(f"  (other processes used {procs[0].foreign_cpu:.1f} CPU-s meanwhile; measuring again)", flush=True)
    raise AssertionError("unreachable")


def bench(args: argparse.Namespace, folder: Path, scratch: Path) -> dict[str, object]:
    exe = lorahub_exe()
    weights = folder / WEIGHTS
    size = sum(p.stat().st_size for p in folder.iterdir())
    baselines = [("baseline", ["sha256sum"])]
    if shutil.which("openssl"):
        baselines.append(("openssl", ["openssl", "dgst", "-sha256"]))
    keys = [k for b, _ in baselines for k in (b, f"{b}_sync")] + ["startup", "push", "repush", "pull"]
    series = {k: Series(k) for k in keys}
    repush_growth: list[tuple[int, int]] = []
    dest = scratch / "cp-dest.safetensors"
    home = scratch / "home"
    out = scratch / "pulled"
    empty = scratch / "empty"

    def baseline(hasher: list[str]) -> tuple[Proc, ...]:
        dest.unlink(missing_ok=True)
        h = check(run_proc([*hasher, str(weights)], sample=args.sample), hasher[0])
        prefault(int(QUIET["prefault_mib"]))  # untimed, between the two processes
        cp = check(run_proc(["cp", str(weights), str(dest)], sample=args.sample), "cp")
        sync = check(run_proc(["sync", str(dest)], sample=0), "sync")
        dest.unlink()
        return combine(h, cp), combine(h, cp, sync)

    def startup() -> tuple[Proc, ...]:
        # fixed cost of a lorahub process: imports + create and migrate a fresh SQLite catalog
        shutil.rmtree(empty, ignore_errors=True)
        proc = check(run_proc([exe, "list"], env=lorahub_env(empty), sample=args.sample), "lorahub list")
        shutil.rmtree(empty)
        return (proc,)

    def push() -> tuple[Proc, ...]:
        shutil.rmtree(home, ignore_errors=True)
        cmd = [exe, "push", str(folder), "--name", "bench/big"]
        proc = check(run_proc(cmd, env=lorahub_env(home), sample=args.sample), "lorahub push")
        if "bench/big:1" not in proc.stdout or "new" not in proc.stdout:
            raise SystemExit(f"unexpected push output: {proc.stdout!r}")
        return (proc,)

    def repush() -> tuple[Proc, ...]:
        before, ident_before = store_usage(home), blob_identity(home)
        cmd = [exe, "push", str(folder), "--name", "bench/big"]
        proc = check(run_proc(cmd, env=lorahub_env(home), sample=args.sample), "lorahub re-push")
        after, ident_after = store_usage(home), blob_identity(home)
        if "unchanged" not in proc.stdout or "bench/big:1" not in proc.stdout:
            raise SystemExit(f"re-push did not say 'unchanged': {proc.stdout!r}")
        if after != before or ident_after != ident_before:
            raise SystemExit(f"re-push changed the store: {before} -> {after}")
        repush_growth.append((after[0] - before[0], after[1] - before[1]))
        return (proc,)

    def pull() -> tuple[Proc, ...]:
        shutil.rmtree(out, ignore_errors=True)
        cmd = [exe, "pull", "bench/big:1", "-o", str(out)]
        return (check(run_proc(cmd, env=lorahub_env(home), sample=args.sample), "lorahub pull"),)

    for i in range(args.runs):
        for key, hasher in baselines:
            plain, synced = stepped(lambda hasher=hasher: baseline(hasher), args.drop_caches)
            series[key].procs.append(plain)
            series[f"{key}_sync"].procs.append(synced)
        for key, fn in (("startup", startup), ("push", push), ("repush", repush), ("pull", pull)):
            series[key].procs.append(stepped(fn, args.drop_caches)[0])
        if i == 0:  # byte-identical? (untimed)
            for name in (WEIGHTS, "adapter_config.json"):
                subprocess.run(["cmp", str(folder / name), str(out / name)], check=True)
        shutil.rmtree(out)
        shutil.rmtree(home)
        last = {k: s.walls[-1] for k, s in series.items()}
        print(
            f"run {i + 1}/{args.runs}: baseline {last['baseline']:.2f}s  push {last['push']:.2f}s  "
            f"re-push {last['repush']:.2f}s  pull {last['pull']:.2f}s",
            flush=True,
        )
    return {"size": size, "series": series, "repush_growth": repush_growth, "repush_ok": True}


def fmt_table(res: dict[str, object], runs: int) -> str:
    series: dict[str, Series] = res["series"]  # type: ignore[assignment]
    base = series["baseline"].median()
    ref_key = "openssl_sync" if "openssl_sync" in series else "baseline_sync"
    ref = series[ref_key].median()
    ref_label = {"openssl_sync": "openssl+cp+sync", "baseline_sync": "sha256sum+cp+sync"}[ref_key]
    rows = [
        ("baseline: sha256sum + cp", "baseline"),
        ("sha256sum + cp + `sync DEST`", "baseline_sync"),
        ("openssl dgst -sha256 + cp", "openssl"),
        ("openssl dgst -sha256 + cp + `sync DEST`", "openssl_sync"),
        ("lorahub list, empty home (fixed cost)", "startup"),
        ("lorahub push (fresh home)", "push"),
        ("lorahub push again (unchanged)", "repush"),
        ("lorahub pull", "pull"),
    ]
    size_mib = int(res["size"]) / 2**20  # type: ignore[call-overload]
    lines = [
        f"{size_mib:,.0f} MiB adapter, {runs} runs; wall clock of whole processes, seconds.",
        "",
        f"| step | median s | min s | max s | MiB/s (median) | / baseline | / {ref_label} "
        "| peak RSS MiB | peak anon RSS MiB | written MiB | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in rows:
        if key not in series:
            continue
        s = series[key]
        med = s.median()
        rss = max(p.maxrss_kib for p in s.procs) / 1024
        anon = max(p.anon_peak_kib for p in s.procs) / 1024
        written = statistics.median(p.written_bytes for p in s.procs) / 2**20
        foreign = max(p.foreign_cpu for p in s.procs)
        rate = f"{size_mib / med:,.0f}" if key not in ("startup",) else "-"
        lines.append(
            f"| {label} | {med:.3f} | {min(s.walls):.3f} | {max(s.walls):.3f} | {rate} | {med / base:.2f}x "
            f"| {med / ref:.2f}x | {rss:,.0f} | {anon:,.0f} | {written:,.0f} | {foreign:.1f} |"
        )
    growth = res["repush_growth"]
    rss_src = "GNU time %M" if os.access(GNU_TIME, os.X_OK) else "os.wait4 ru_maxrss (includes the forked parent!)"
    lines += [
        "",
        f"peak RSS: {rss_src}, includes file pages mapped by mmap; peak anon RSS: RssAnon sampled every "
        "10 ms; written: ru_oublock (bytes the process dirtied for the disk); "
        "other CPU: the most CPU-seconds other processes used during one kept run of the step (0 = quiet "
        f"machine; a step during which they used more than {NOISY_SHARE:.0%} of a CPU was measured again, at "
        f"most {RETRIES['max']} times: {RETRIES['done']} re-measurements in all).",
        "",
        f"Re-push: printed 'unchanged' and the blob store grew by {max(g[0] for g in growth)} bytes / "  # type: ignore[attr-defined]
        f"{max(g[1] for g in growth)} files in every run (`du -sb`, file count, inode+mtime of each blob): "  # type: ignore[attr-defined]
        f"{'OK' if res['repush_ok'] else 'FAILED'}.",
        "",
        f"Target (push and pull <= {TARGET_RATIO}x sha256sum + cp): "
        f"push {series['push'].median() / base:.2f}x "
        f"{'meets' if series['push'].median() / base <= TARGET_RATIO else 'MISSES'}, "
        f"pull {series['pull'].median() / base:.2f}x "
        f"{'meets' if series['pull'].median() / base <= TARGET_RATIO else 'MISSES'}.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = _common.main_parser(__doc__, Path("/tmp/lorahub-bench"))
    ap.add_argument("--runs", type=int, default=5, help="repetitions of every step (default 5)")
    ap.add_argument("--size-mib", type=int, default=1024, help="approximate adapter size (default 1024)")
    ap.add_argument("--rank", type=int, default=64, help="LoRA rank (default 64)")
    ap.add_argument("--hidden", type=int, default=4096, help="in = out features of every module (default 4096)")
    ap.add_argument("--keep", action="store_true", help="keep the generated adapter (reused by the next run)")
    ap.add_argument(
        "--drop-caches",
        action="store_true",
        help="drop the page cache before every timed step (root only; default: warm page cache)",
    )
    ap.add_argument(
        "--sample",
        type=float,
        default=0.01,
        help="seconds between samples of RssAnon (0: off; default 0.01)",
    )
    _common.add_max_wait(ap, "step")
    ap.add_argument(
        "--prefault-mib",
        type=int,
        default=1536,
        help="touch and free this much memory before each step (0: off; see prefault(); default 1536)",
    )
    ap.add_argument("--json-out", type=Path, help="also write the raw numbers here")
    args = ap.parse_args()
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if args.drop_caches and not os.access("/proc/sys/vm/drop_caches", os.W_OK):
        ap.error("--drop-caches needs write access to /proc/sys/vm/drop_caches (root)")

    QUIET["max_wait"] = args.max_wait
    QUIET["prefault_mib"] = args.prefault_mib
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = input_spec(args.size_mib, args.rank, args.hidden)
    folder, reused = ensure_input(args.workdir, spec)
    if reused:
        print(f"reusing {folder} (from a --keep run)", flush=True)
    scratch = Path(tempfile.mkdtemp(prefix="runs-", dir=args.workdir))
    try:
        res = bench(args, folder, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            (args.workdir / "adapter.spec.json").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                args.workdir.rmdir()

    cache = (
        "page cache dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before every timed step"
        if args.drop_caches
        else "warm page cache (dirty pages flushed with sync before every timed step, cache not dropped)"
    )
    print()
    print(f"## push / pull ({cache})")
    print()
    print("\n".join(_envinfo.machine_lines(args.workdir if args.workdir.exists() else "/tmp")))
    print("\n".join(_envinfo.version_lines({"coreutils": _coreutils()})))
    print(
        f"- input: {spec['layers']} layers x {len(TARGETS)} modules, rank {spec['rank']}, "
        f"in = out = {spec['hidden']}, float32, seed {spec['seed']}"
    )
    print(f"- command: `python bench/bench_push_pull.py {' '.join(sys.argv[1:])}`")
    print()
    print(fmt_table(res, args.runs))
    if args.json_out:
        series: dict[str, Series] = res["series"]  # type: ignore[assignment]
        raw = {
            k: [
                {
                    f: getattr(p, f)
                    for f in ("wall", "maxrss_kib", "anon_peak_kib", "written_bytes", "read_bytes", "foreign_cpu")
                }
                for p in s.procs
            ]
            for k, s in series.items()
        }
        doc = {"size": res["size"], "drop_caches": args.drop_caches, "runs": raw}
        args.json_out.write_text(json.dumps(doc, indent=1))


def _coreutils() -> str:
    out = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0] if out else "?"


if __name__ == "__main__":
    main()
