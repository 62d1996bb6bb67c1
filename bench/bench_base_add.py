"""`lorahub base add` of a sharded ~2.2 GB model against `sha256sum` of the same shards, in one run.

Uses the model that bench_merge.py generates (TinyLlama's shape, bfloat16, 1 GB shards). For
--runs times, interleaved: `sha256sum SHARDS` and `lorahub base add MODEL --name b` in a fresh
LORAHUB_HOME (both whole processes, warm page cache). Then the cached re-add: `Hub.base_add`
again in-process (the call alone, median of 20), and `lorahub base add` again as a whole process.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lorahub-bench-merge"))
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    model = args.workdir / f"llama-{args.layers}l-bf16"
    if not (model / "config.json").exists():
        subprocess.run(
            [
                sys.executable,
                str(HERE / "bench_merge.py"),
                "--workdir",
                str(args.workdir),
                "--layers",
                str(args.layers),
                "--runs",
                "0",
                "--only",
                "floor",
            ],
            check=True,
        )
    shards = sorted(str(p) for p in model.glob("*.safetensors"))
    size = sum(Path(p).stat().st_size for p in shards)
    lorahub = shutil.which("lorahub") or str(Path(sys.executable).parent / "lorahub")
    subprocess.run(["cat", *shards], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

    base, ours = [], []
    for _ in range(args.runs):
        base.append(timed(["sha256sum", *shards]))
        with tempfile.TemporaryDirectory() as home:
            ours.append(timed([lorahub, "base", "add", str(model), "--name", "b"], {"LORAHUB_HOME": home}))

    with tempfile.TemporaryDirectory() as home:
        from lora_hub import Hub

        hub = Hub(home)
        hub.base_add(model, "b")
        calls = []
        for _ in range(20):
            started = time.perf_counter()
            result = hub.base_add(model, "b")
            calls.append(time.perf_counter() - started)
            assert result.hashed_bytes == 0
        cli = [timed([lorahub, "base", "add", str(model), "--name", "b"], {"LORAHUB_HOME": home}) for _ in range(5)]

    med_base, med_ours = statistics.median(base), statistics.median(ours)
    print(f"\n{len(shards)} shards, {size / 1e9:.2f} GB; {args.runs} runs each, warm page cache\n")
    print("| what | median | min | max | ratio |")
    print("|---|---|---|---|---|")
    print(f"| sha256sum of the shards | {med_base:.2f} s | {min(base):.2f} s | {max(base):.2f} s | 1.00x |")
    print(
        f"| lorahub base add (whole process) | {med_ours:.2f} s | {min(ours):.2f} s | {max(ours):.2f} s | "
        f"{med_ours / med_base:.2f}x |"
    )
    print(
        f"| cached re-add, Hub.base_add call | {statistics.median(calls) * 1e3:.1f} ms | {min(calls) * 1e3:.1f} ms | "
        f"{max(calls) * 1e3:.1f} ms | |"
    )
    print(f"| cached re-add, whole process | {statistics.median(cli):.2f} s | {min(cli):.2f} s | {max(cli):.2f} s | |")


if __name__ == "__main__":
    main()
