"""Benchmark push and pull of a ~1 GiB PEFT adapter over loopback HTTP (`lorahub serve` +
`LORAHUB_URL`) against the local `lorahub push` / `lorahub pull`, and the server's memory.

Every measurement is a whole `lorahub` process, timed on the wall clock around spawn + wait.
The server is `lorahub serve --workers 1` in its own process and home (SQLite catalog, local
store). Its memory: VmHWM (peak resident, which counts the page cache of the files the commit's
validation memory-maps) after the transfers minus VmRSS before them, and the peak of RssAnon
(anonymous memory: buffers), sampled every 50 ms from /proc/PID/status. Each run uses fresh
homes. The input is bench_push_pull's adapter.

Example:  python bench/bench_service.py --runs 3
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
from bench_push_pull import ensure_input, input_spec

TARGET_RATIO = 1.3
TARGET_RSS_MIB = 64


def _lorahub(args: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(["lorahub", *args], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def one_run(workdir: Path, adapter: Path) -> dict[str, float]:
    shutil.rmtree(workdir / "run", ignore_errors=True)
    run = workdir / "run"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    local = {**base, "LORAHUB_HOME": str(run / "local")}
    out: dict[str, float] = {}
    subprocess.run(["sync"], check=True)
    out["local_push"] = _lorahub(["push", str(adapter), "--name", "bench/big"], local)
    subprocess.run(["sync"], check=True)
    out["local_pull"] = _lorahub(["pull", "bench/big:1", "-o", str(run / "local-out")], local)

    server_env = {**base, "LORAHUB_HOME": str(run / "server")}
    token = subprocess.run(
        ["lorahub", "token", "create", "--scope", "write", "--namespace", "bench"],
        env=server_env, check=True, capture_output=True, text=True,
    ).stdout.split()[0]  # fmt: skip
    port = _free_port()
    server = subprocess.Popen(
        ["lorahub", "serve", "--port", str(port), "--workers", "1"], env=server_env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                urllib.request.urlopen(url + "/readyz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        rss_before = _status(server.pid, "VmRSS")
        anon_before = _status(server.pid, "RssAnon")
        peak = [anon_before]
        done = threading.Event()

        def sample() -> None:  # anonymous memory, without the page cache of memory-mapped files
            while not done.wait(0.05):
                with contextlib.suppress(OSError, KeyError):
                    peak[0] = max(peak[0], _status(server.pid, "RssAnon"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        remote = {**base, "LORAHUB_HOME": str(run / "client"), "LORAHUB_URL": url, "LORAHUB_TOKEN": token}
        subprocess.run(["sync"], check=True)
        out["remote_push"] = _lorahub(["push", str(adapter), "--name", "bench/big"], remote)
        subprocess.run(["sync"], check=True)
        out["remote_pull"] = _lorahub(["pull", "bench/big:1", "-o", str(run / "remote-out")], remote)
        done.set()
        sampler.join()
        out["server_rss_growth_mib"] = (_status(server.pid, "VmHWM") - rss_before) / 2**20
        out["server_anon_growth_mib"] = (peak[0] - anon_before) / 2**20
    finally:
        server.terminate()
        server.wait(30)
    shutil.rmtree(run, ignore_errors=True)
    return out


def main() -> None:
    ap = _common.main_parser(__doc__, Path("/tmp/bench-service"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    spec = input_spec(args.size_mib, 64, 4096)
    adapter, _ = ensure_input(args.workdir, spec)
    runs = [one_run(args.workdir, adapter) for _ in range(args.runs)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    report = {
        "size_mib": args.size_mib,
        "runs": runs,
        "median": med,
        "push_ratio": med["remote_push"] / med["local_push"],
        "pull_ratio": med["remote_pull"] / med["local_pull"],
        "targets": {"ratio": TARGET_RATIO, "server_rss_growth_mib": TARGET_RSS_MIB},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
