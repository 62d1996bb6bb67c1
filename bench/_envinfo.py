"""Machine and version facts shared by the benchmarks (printed with every result table)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _run("lscpu").splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def disk_of(path: str | os.PathLike[str]) -> str:
    """Device, filesystem and the kernel's rotational flag of the filesystem holding ``path``."""
    source, fstype = "?", "?"
    out = _run("findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path))
    if out:
        source, _, fstype = out.partition(" ")
    dev = Path(source).name
    rota = Path(f"/sys/block/{dev}/queue/rotational")
    kind = ""
    if rota.is_file():
        kind = "rotational=1 (as reported; virtual disks often say 1)" if rota.read_text().strip() == "1" else "SSD"
    virt = _run("systemd-detect-virt") or ""
    hyper = ""
    for line in _run("lscpu").splitlines():
        if line.startswith("Hypervisor vendor:"):
            hyper = line.split(":", 1)[1].strip()
    extra = f", VM ({hyper or virt})" if hyper or (virt and virt != "none") else ""
    return f"{source} ({fstype.strip()}), {kind or 'type unknown'}{extra}"


def version_of(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    commit = _run("git", "-C", str(REPO), "rev-parse", "--short", "HEAD") or "unknown"
    dirty = _run("git", "-C", str(REPO), "status", "--porcelain", "--", "lora_hub", "migrations")
    return f"{commit} (lora_hub/ or migrations/ modified in the working tree)" if dirty else commit


def machine_lines(workdir: str | os.PathLike[str] | None = None) -> list[str]:
    lines = [
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores (nproc)",
        f"- RAM: {mem_total_gib():.1f} GiB",
        f"- kernel: {platform.release()}",
    ]
    if workdir is not None:
        lines.append(f"- disk of {workdir}: {disk_of(workdir)}")
    return lines


def version_lines(extra: dict[str, str] | None = None) -> list[str]:
    pkgs = ["lora-hub", "numpy", "safetensors", "sqlalchemy", "alembic", "pydantic", "psycopg"]
    lines = [f"- python {sys.version.split()[0]}"]
    lines += [f"- {p} {version_of(p)}" for p in pkgs]
    lines += [f"- {k} {v}" for k, v in (extra or {}).items()]
    lines.append(f"- lora-hub commit {git_commit()}")
    return lines


# --- other load on the machine ---------------------------------------------------------------------


def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def busy_fraction(seconds: float = 0.5) -> float:
    b0, t0 = _cpu_jiffies()
    import time

    time.sleep(seconds)
    b1, t1 = _cpu_jiffies()
    return (b1 - b0) / max(t1 - t0, 1)


def wait_quiet(threshold: float = 0.15, max_wait: float = 300.0, quiet_for: int = 2) -> float:
    """Wait until the CPUs are less than ``threshold`` busy for ``quiet_for`` half-second windows
    in a row (other sessions' test suites share this machine), at most ``max_wait`` seconds.
    Returns the busy fraction last seen."""
    import time

    deadline = time.monotonic() + max_wait
    streak = 0
    busy = busy_fraction()
    while time.monotonic() < deadline:
        streak = streak + 1 if busy < threshold else 0
        if streak >= quiet_for:
            break
        busy = busy_fraction()
    return busy


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def process_cpu(pid: int, *, reaped_children: bool = False) -> float:
    """CPU-seconds (user + system) used so far by process ``pid`` (and, with ``reaped_children``,
    by its children that have exited); 0 when it is gone."""
    fields = _stat(pid)
    if not fields:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def parent_pid(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


class ForeignCpu:
    """CPU-seconds used on the machine during a block, minus what our own processes used: this
    process, its reaped children, and the processes ``own_pids()`` names (e.g. the Postgres
    backends serving our connections)."""

    def __init__(self, own_pids: Callable[[], Iterable[int]] | None = None, own_parents: Iterable[int] = ()) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.own_pids = own_pids or (lambda: ())
        self.parents = list(own_parents)  # their exited children count as ours (Postgres parallel workers)

    def __enter__(self) -> ForeignCpu:
        self.pids0 = {pid: process_cpu(pid) for pid in self.own_pids()}
        self.parents0 = {pid: process_cpu(pid, reaped_children=True) for pid in self.parents}
        self.b0, _ = _cpu_jiffies()
        self.self0 = os.times()
        return self

    def __exit__(self, *exc: object) -> None:
        b1, _ = _cpu_jiffies()
        t = os.times()
        ours = (t.user - self.self0.user) + (t.system - self.self0.system)
        ours += (t.children_user - self.self0.children_user) + (t.children_system - self.self0.children_system)
        for pid in set(self.pids0) | set(self.own_pids()):
            ours += max(process_cpu(pid) - self.pids0.get(pid, 0.0), 0.0)
        for pid, before in self.parents0.items():
            ours += max(process_cpu(pid, reaped_children=True) - before, 0.0)
        self.seconds = max((b1 - self.b0) / self.ticks - ours, 0.0)
