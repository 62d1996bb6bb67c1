"""Jobs benchmark (issue 15): a merge through a warm worker against `cp` of the base's shards, and
the queue's overhead per job, on the local PostgreSQL.

- **merge via worker**: a `lorahub worker` process is started once (torch imported, warm); each
  run submits the merge (`--recompute --force`, so that the recorded recipe is not served) and
  waits for it, timed from the submission to the job's end as the submitter sees it (woken by
  the catalog's NOTIFY when the job ends), into a fresh output folder as cp's is. The base
  is the merge benchmark's Llama (``bench_merge.make_inputs``; ``--layers 22`` is the 1.1B model,
  2.2 GB in bfloat16), registered once.
- **cp**: `cp -r` of the base's folder (its shards), interleaved with the merges, after `sync`.
- **queue overhead**: N jobs whose merge is recorded (served from the record), submitted one at a
  time to the idle warm worker: the submission call (checks, row and queue insert in one
  transaction) plus the time until a worker claimed it (created..started in the catalog), i.e.
  what the queue adds before the work starts. (``follow`` polls every 0.25 s on top of that.)

Goals: the merge through a warm worker at most 1.0x `cp` of the shards; queue overhead per job
under 50 ms. Prints a Markdown table.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from _common import main_parser  # noqa: E402
from _envinfo import machine_lines, version_lines  # noqa: E402
from bench_merge import make_inputs, warm_page_cache  # noqa: E402

PG = os.environ.get("LORAHUB_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def new_database() -> tuple[str, object]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(PG, isolation_level="AUTOCOMMIT")
    name = f"lorahub_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    return make_url(PG).set(database=name).render_as_string(hide_password=False), (admin, name)


def drop_database(handle: object) -> None:
    from sqlalchemy import text

    admin, name = handle  # type: ignore[misc]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    ap = main_parser(__doc__, Path("/tmp/bench-jobs"))
    ap.add_argument("--layers", type=int, default=22, help="Llama layers (22: the 1.1B model)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=20, help="jobs for the queue overhead")
    args = ap.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model, adapter = make_inputs(work, args.layers)
    url, handle = new_database()
    home = work / "home"
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "LORAHUB_HOME": str(home), "LORAHUB_DATABASE_URL": url, "HF_HUB_OFFLINE": "1"}
    os.environ.update({"LORAHUB_HOME": str(home), "LORAHUB_DATABASE_URL": url})
    from lora_hub import Hub

    worker = None
    try:
        with Hub() as hub:
            hub.base_add(model, "bench/base")
            worker = subprocess.Popen([sys.executable, "-m", "lora_hub", "worker", "--queue", "cpu"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            merge_s: list[float] = []
            cp_s: list[float] = []
            out = work / "merged"
            for i in range(args.runs + 1):  # the first merge warms the worker (imports, page cache): not counted
                shutil.rmtree(out, ignore_errors=True)  # a fresh destination, as cp's is
                warm_page_cache([model, adapter])
                subprocess.run(["sync"], check=True)
                spec = hub.merge_pipeline("bench/base", [str(adapter)], out, formats=[])
                t0 = time.perf_counter()
                job = hub.submit_pipeline(spec, device="cpu", recompute=True, force=True)
                done = hub.follow_job(job.id)
                seconds = time.perf_counter() - t0
                assert done.state == "succeeded", done.error
                if i:
                    merge_s.append(seconds)
                copy = work / "copy"
                shutil.rmtree(copy, ignore_errors=True)
                subprocess.run(["sync"], check=True)
                t0 = time.perf_counter()
                subprocess.run(["cp", "-r", str(model), str(copy)], check=True)
                subprocess.run(["sync"], check=True)
                if i:
                    cp_s.append(time.perf_counter() - t0)
                shutil.rmtree(copy, ignore_errors=True)

            overhead: list[float] = []
            spec = hub.merge_pipeline("bench/base", [str(adapter)], out, formats=[])
            for _ in range(args.jobs):
                t0 = time.perf_counter()
                job = hub.submit_pipeline(spec, device="cpu")
                submit_s = time.perf_counter() - t0
                done = hub.follow_job(job.id)
                assert done.state == "succeeded" and done.started_at, done.error
                # the submission call, then the wait in the queue until a worker claimed it (catalog clock)
                overhead.append(submit_s + (done.started_at - done.created_at).total_seconds())
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=60)
        drop_database(handle)

    m, c = statistics.median(merge_s), statistics.median(cp_s)
    print("\n".join(machine_lines(work)))
    print("\n".join(version_lines()))
    print()
    print(f"| measure ({args.layers} layers) | median | min | max |")
    print("|---|---|---|---|")
    print(f"| merge through a warm worker (submit to done) | {m:.2f} s | {min(merge_s):.2f} | {max(merge_s):.2f} |")
    print(f"| cp -r of the base's shards (+ sync) | {c:.2f} s | {min(cp_s):.2f} | {max(cp_s):.2f} |")
    print(f"| ratio merge / cp | {m / c:.2f}x | | |")
    o = statistics.median(overhead)
    print(f"| queue overhead per job ({args.jobs} jobs) | {o * 1000:.0f} ms | {min(overhead) * 1000:.0f} | "
          f"{max(overhead) * 1000:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
