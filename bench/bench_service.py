"""Benchmark push and pull of a ~1 GiB PEFT adapter over loopback HTTP (`lorahub serve` +
`LORAHUB_URL`) against the local `lorahub push` / `lorahub pull`, and the server's memory.

Every measurement is a whole `lorahub` process, timed on the wall clock around spawn + wait.
The server is `lorahub serve --workers 1` in its own process and home (SQLite catalog, local
store). Its memory: VmHWM (peak resident, which counts the page cache of the files the commit's
validation memory-maps) after the transfers minus VmRSS before them, and the peak of RssAnon
(anonymous memory: buffers), sampled every 50 ms from /proc/PID/status. Each run uses fresh
homes. The input is bench_push_pull's adapter.

The `list` step (``--step list``): a catalog of ``--list-versions`` adapter versions (bench_list's
seed: names x 10 versions, ranks, targets, metrics and tags, bulk-loaded through the migrated
schema) served by `lorahub serve --workers N` on SQLite and on PostgreSQL. ``--list-clients``
threads, each with its own keep-alive connection and a read token on ``*``, send the request of
`lorahub list` (limit 50, counted; and a filtered, sorted one) ``--list-reps`` times each, after
warm-ups: back to back, or with ``--list-think-ms`` a pause between requests. Each request is
timed from its send to the last byte of its body, by httpx clients (that do not parse the JSON)
and, with ``--list-client raw``, by clients that send a prepared request on a socket and read
the response by its Content-Length (about 30 us of CPU a request): the clients share the 2 cores
and one interpreter's lock with nothing else to do, so httpx's own cost (0.5-1 ms a request)
caps what 50 of them can ask for. p50/p95/p99 in ms, requests per second
(over the whole run, until the last client is done), and one client alone for scale. With no
pause the latency is the number of clients divided by the throughput (Little's law): a p95 of
30 ms under 50 back-to-back clients asks for about 2,000 requests/s. ``--list-profile N`` then
profiles N list requests in-process (cProfile over the ASGI app on one thread, SQL timed through
the engine's cursor events), to show where one request's time goes.

``--step all`` (the default) runs the list step, then the transfer step; `lorahub` must be on PATH.

Examples:  python bench/bench_service.py --runs 3
           python bench/bench_service.py --step list --list-workers 1,2 --list-think-ms 0,500
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _envinfo
from bench_push_pull import ensure_input, input_spec

from lora_hub.settings import Settings
from lora_hub.types import ListQuery

TARGET_RATIO = 1.3
TARGET_RSS_MIB = 64
LIST_TARGET_P95_MS = 30.0
START_TIMEOUT_S = 60


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


def _warm(folder: Path) -> None:
    """Read every blob of a store once (untimed) before a pull, so that the local and the remote
    pull both read the stored blob from the page cache: a push writes its blob past the page cache
    (O_DIRECT), and whether the server's commit scan left it cached should not decide the ratio."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with path.open("rb", buffering=0) as f:
                while f.read(16 << 20):
                    pass


def one_run(workdir: Path, adapter: Path) -> dict[str, float]:
    shutil.rmtree(workdir / "run", ignore_errors=True)
    run = workdir / "run"
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    local = {**base, "LORAHUB_HOME": str(run / "local")}
    out: dict[str, float] = {}
    subprocess.run(["sync"], check=True)
    out["local_push"] = _lorahub(["push", str(adapter), "--name", "bench/big"], local)
    subprocess.run(["sync"], check=True)
    _warm(run / "local" / "blobs")
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
        _warm(run / "server" / "blobs")
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


# --- the list step ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ListCase:
    label: str
    query: ListQuery

    def params(self) -> dict[str, Any]:
        """The query string ``RemoteHub.search`` sends for this query."""
        return {k: v for k, v in self.query.model_dump().items() if v is not None}


LIST_CASES = [
    ListCase("`lorahub list` (limit 50, counted)", ListQuery(limit=50, count=True)),
    ListCase(
        '`lorahub list --where "accuracy>=0.8" --sort -accuracy --limit 20`',
        ListQuery(where="accuracy>=0.8", sort="-accuracy", limit=20, count=True),
    ),
]


@dataclass
class LoadRun:
    samples_ms: list[float]
    wall_s: float
    errors: list[str]
    foreign_cpu_share: float  # other processes' CPU use meanwhile, as a share of one CPU
    client_cpu_s: float = 0.0  # this process's CPU time meanwhile: the clients' own cost

    def pct(self, q: float) -> float:
        xs = sorted(self.samples_ms)
        k = (len(xs) - 1) * q
        lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)

    @property
    def rate(self) -> float:
        return len(self.samples_ms) / self.wall_s

    @property
    def client_cpu_ms(self) -> float:
        """The clients' CPU time per request (ms): what the load generator itself costs."""
        return self.client_cpu_s * 1000 / max(1, len(self.samples_ms))


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@contextlib.contextmanager
def _serve(env: dict[str, str], workers: int) -> Iterator[tuple[str, Callable[[], list[int]]]]:
    """`lorahub serve --workers N` on a free port; yields its URL and what lists its processes."""
    port = _free_port()
    exe = str(Path(sys.executable).parent / "lorahub")
    server = subprocess.Popen(
        [exe, "serve", "--port", str(port), "--workers", str(workers)], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"lorahub serve exited with {server.returncode} at start")
            if time.monotonic() > deadline:
                raise RuntimeError(f"lorahub serve did not answer /readyz in {START_TIMEOUT_S} s")
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        yield url, lambda: [server.pid, *_children(server.pid)]
    finally:
        server.terminate()
        server.wait(30)


class _RawClient:
    """One keep-alive HTTP/1.1 connection that sends a request prepared once and reads the whole
    response (by its Content-Length) without parsing anything else: a client that costs the
    shared CPU about 30 us a request, so that 50 of them in one process measure the server, not
    httpx and the GIL (``--list-client raw``)."""

    def __init__(self, url: str, path: str, token: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n".encode()
        self.buf = b""

    def get(self) -> tuple[int, bytes]:
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            self._recv()
        head, _, rest = self.buf.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                      if line.lower().startswith(b"content-length:"))  # fmt: skip
        while len(rest) < length:
            rest += self._recv_more()
        body, self.buf = rest[:length], rest[length:]
        return status, body

    def _recv(self) -> None:
        self.buf += self._recv_more()

    def _recv_more(self) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed the connection")
        return data

    def close(self) -> None:
        self.sock.close()


def _load(url: str, token: str, case: ListCase, clients: int, reps: int, warmup: int,
          own_pids: Callable[[], list[int]], think_ms: float = 0.0, kind: str = "httpx") -> LoadRun:  # fmt: skip
    """``clients`` threads, one keep-alive connection each, ``reps`` requests each: back to back,
    or with ``think_ms`` a pause between them (exponentially distributed with that mean, seeded
    per client, and a first pause drawn uniformly, so that the clients do not move in step).
    ``kind``: httpx clients, or ``raw`` ones (``_RawClient``)."""
    barrier = threading.Barrier(clients + 1)
    samples: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    params = case.params()

    def client(k: int) -> None:
        rng = random.Random(k)
        try:
            if kind == "raw":
                raw = _RawClient(url, "/v1/adapters?" + urllib.parse.urlencode(params), token)

                def get() -> tuple[int, str]:
                    status, body = raw.get()
                    return status, body[:200].decode(errors="replace")
            else:
                http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120)

                def get() -> tuple[int, str]:
                    r = http.get("/v1/adapters", params=params)  # reads the whole body
                    return r.status_code, r.text[:200]

            try:
                for _ in range(warmup):
                    get()
                barrier.wait(600)
                if think_ms > 0:
                    time.sleep(rng.uniform(0, think_ms) / 1000)
                for _ in range(reps):
                    t0 = time.perf_counter()
                    status, text = get()
                    samples[k].append((time.perf_counter() - t0) * 1000)
                    if status != 200:
                        errors.append(f"{status} {text}")
                    if think_ms > 0:
                        time.sleep(rng.expovariate(1000 / think_ms))
            finally:
                (raw if kind == "raw" else http).close()
        except Exception as exc:  # reported with the results
            errors.append(repr(exc))
            barrier.abort()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    barrier.wait(600)
    start, cpu0 = time.perf_counter(), time.process_time()
    with _envinfo.ForeignCpu(own_pids) as foreign:
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    return LoadRun([x for xs in samples for x in xs], wall, errors, foreign.seconds / wall, cpu)


def _pg_backends(url: str) -> Callable[[], list[int]]:
    """The Postgres server processes of the database at ``url``: their CPU is the benchmark's."""
    engine = create_engine(url, pool_size=1)

    def pids() -> list[int]:
        with engine.connect() as conn:
            query = "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            return list(conn.execute(text(query)).scalars())

    return pids


def _profile(url: str, home: Path, token: str, case: ListCase, requests: int) -> str:
    """Where one list request's time goes, in this process: the ASGI app driven through httpx's
    ASGI transport on one thread (FastAPI's thread-pool hops run inline, so cProfile sees the
    route, the auth lookup and the serialisation), SQL timed through the engine's cursor events."""
    import asyncio
    import cProfile
    import io
    import pstats

    import fastapi.dependencies.utils
    import fastapi.routing
    from sqlalchemy import event

    from lora_hub.api import ServingHub
    from lora_hub.service import create_app

    async def inline(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    for module in (fastapi.routing, fastapi.dependencies.utils):
        module.run_in_threadpool = inline  # type: ignore[attr-defined]
    hub = ServingHub(settings=Settings.from_env(home=home, database_url=url))
    engine = hub._ctx.catalog.db.engine  # the benchmark reaches into the hub to time its SQL
    sql = {"s": 0.0, "n": 0}

    def before(conn: Any, *_: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(conn: Any, *_: Any) -> None:
        sql["s"] += time.perf_counter() - conn.info.pop("bench_t0")
        sql["n"] += 1

    parts = {"search": 0.0, "authenticate": 0.0}
    seen: dict[str, float] = {}  # parts as they were after the timed pass (before the profiled one)
    for name in parts:
        original = getattr(hub, name)

        def timed(*a: Any, _f: Callable[..., Any] = original, _n: str = name, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _f(*a, **kw)
            finally:
                parts[_n] += time.perf_counter() - t0

        setattr(hub, name, timed)
    app = create_app(hub=hub)
    params = case.params()
    profiler = cProfile.Profile()

    async def drive() -> float:
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", headers=headers) as http:
            for _ in range(20):
                (await http.get("/v1/adapters", params=params)).raise_for_status()
            for key in parts:
                parts[key] = 0.0
            event.listen(engine, "before_cursor_execute", before)
            event.listen(engine, "after_cursor_execute", after)
            t0 = time.perf_counter()
            for _ in range(requests):
                (await http.get("/v1/adapters", params=params)).raise_for_status()
            plain = time.perf_counter() - t0
            event.remove(engine, "before_cursor_execute", before)
            event.remove(engine, "after_cursor_execute", after)
            seen.update(parts)
            profiler.enable()
            for _ in range(requests):
                await http.get("/v1/adapters", params=params)
            profiler.disable()
            return plain

    try:
        plain_s = asyncio.run(drive())
    finally:
        hub.close()
    per = 1000 / requests
    auth_ms, search_ms, sql_ms = seen["authenticate"] * per, seen["search"] * per, sql["s"] * per
    total_ms = plain_s * per
    out = io.StringIO()
    out.write(
        f"in-process, {requests} requests, ms per request: whole request {total_ms:.2f}; "
        f"token lookup (Hub.authenticate) {auth_ms:.2f}; Hub.search {search_ms:.2f}, of which SQL "
        f"{sql_ms:.2f} ({sql['n'] / requests:.1f} statements, auth included); the rest (FastAPI: query "
        f"parsing, response validation and JSON; httpx's ASGI transport) {total_ms - auth_ms - search_ms:.2f}\n\n"
    )
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(r"lora_hub|pydantic|sqlalchemy/orm/session|json|encoders", 40)
    return out.getvalue()


TABLE_HEAD = (
    "| catalog | workers | client | query | clients | pause ms | p50 | p95 | p99 | req/s | client CPU ms/req "
    "| errors | other CPU |\n"
    "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def _table_row(key: tuple[str, int, str, str, int, float], run: LoadRun) -> str:
    backend, workers, kind, label, clients, think = key
    p95 = run.pct(0.95)
    mark = " ✗" if clients > 1 and p95 > LIST_TARGET_P95_MS else ""
    cells = [backend, workers, kind, label, clients, f"{think:.0f}", f"{run.pct(0.5):.1f}", f"{p95:.1f}{mark}",
             f"{run.pct(0.99):.1f}", f"{run.rate:.0f}", f"{run.client_cpu_ms:.2f}", len(run.errors),
             f"{run.foreign_cpu_share:.0%}"]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def list_step(args: argparse.Namespace) -> None:
    """Seed a catalog per backend, serve it, load it with list requests; print the table."""
    from bench_list import make_seed, pg_create, pg_drop, seed_catalog

    from lora_hub.api import ServingHub

    names = max(1, args.list_versions // 10)
    data = make_seed(names, 10, 0)
    scratch = args.workdir / "list"
    shutil.rmtree(scratch, ignore_errors=True)
    backends: list[tuple[str, str]] = [("SQLite", f"sqlite:///{scratch / 'server' / 'catalog.db'}")]
    (scratch / "server").mkdir(parents=True)
    pg_server = None
    if not args.no_postgres:
        pg_url, pg_server = pg_create(args.pg_admin_url, args.pg_db)
        backends.append(("Postgres", pg_url))
    base = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    workers = [int(w) for w in args.list_workers.split(",")]
    results: dict[tuple[str, int, str, str, int, float], LoadRun] = {}
    thinks = [float(t) for t in args.list_think_ms.split(",")]
    kinds = args.list_client.split(",")
    plan = [(1, args.list_reps_single, 0.0)] + [(args.list_clients, args.list_reps, t) for t in thinks]
    profiles: list[str] = []
    print(TABLE_HEAD, flush=True)
    try:
        for backend, url in backends:
            seed_catalog(url, data)
            home = scratch / f"home-{backend.lower()}"
            with ServingHub(settings=Settings.from_env(home=home, database_url=url)) as hub:
                total = hub.search(ListQuery(limit=1, count=True)).total
                token = hub.token_create("read", "*", label="bench").secret
            print(f"{backend}: {total} versions", flush=True)
            env = {**base, "LORAHUB_HOME": str(home), "LORAHUB_DATABASE_URL": url}
            extra = _pg_backends(url) if backend == "Postgres" else (lambda: [])
            for n in workers:
                with _serve(env, n) as (server_url, pids):
                    for kind, case, (clients, reps, think) in itertools.product(kinds, LIST_CASES, plan):
                        if args.max_wait > 0:
                            _envinfo.wait_quiet(max_wait=args.max_wait)
                        run = _load(server_url, token, case, clients, reps, args.list_warmup,
                                    lambda p=pids, e=extra: [*p(), *e()], think, kind)  # fmt: skip
                        key = (backend, n, kind, case.label, clients, think)
                        results[key] = run
                        print(_table_row(key, run), flush=True)
            if args.list_profile:
                text_ = _profile(url, home, token, LIST_CASES[0], args.list_profile)
                profiles.append(f"### {backend}: {LIST_CASES[0].label}\n\n```\n{text_}```\n")
    finally:
        if pg_server is not None and not args.keep:
            with contextlib.suppress(Exception):
                pg_drop(args.pg_admin_url, args.pg_db)
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(f"## list under {args.list_clients} concurrent clients: {len(data.versions)} versions ({names} names x 10)")
    print()
    print("\n".join(_envinfo.machine_lines(args.workdir)))
    versions = {"fastapi": _envinfo.version_of("fastapi"), "uvicorn": _envinfo.version_of("uvicorn"),
                "httpx": _envinfo.version_of("httpx")}  # fmt: skip
    if pg_server:
        versions["PostgreSQL server"] = pg_server
    print("\n".join(_envinfo.version_lines(versions)))
    print(f"- command: `python bench/bench_service.py {' '.join(sys.argv[1:])}`")
    print(
        f"- each client: {args.list_warmup} warm-up requests, then {args.list_reps} timed ones back to back "
        f"({args.list_reps_single} for the single client) or after a pause (exponential, of that mean); "
        "latency from send to the body's last byte, ms"
    )
    print()
    print(TABLE_HEAD)
    for key, run in results.items():
        print(_table_row(key, run))
    print()
    print(
        f"✗: over the goal p95 <= {LIST_TARGET_P95_MS:.0f} ms. 'other CPU': what other processes of the machine "
        "used meanwhile, as a share of one CPU (the server, its workers and its Postgres backends excepted). "
        "'client CPU': the benchmark's own clients' CPU time per request, on the same cores as the server."
    )
    for run in results.values():
        for err in run.errors[:3]:
            print(f"error: {err}")
    if profiles:
        print()
        print("## where a list request's time goes")
        print()
        print("\n".join(profiles))


def main() -> None:
    ap = _common.main_parser(__doc__, Path("/tmp/bench-service"))
    ap.add_argument("--step", choices=["transfer", "list", "all"], default="all",
                    help="transfer: 1 GiB push and pull; list: list latency under concurrent clients")  # fmt: skip
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--list-versions", type=int, default=500, help="adapter versions in the catalog (names x 10)")
    ap.add_argument("--list-clients", type=int, default=50)
    ap.add_argument("--list-reps", type=int, default=40, help="timed requests per client")
    ap.add_argument("--list-reps-single", type=int, default=200, help="timed requests of the single client")
    ap.add_argument("--list-warmup", type=int, default=5, help="untimed requests per client first")
    ap.add_argument("--list-workers", default="1,2", help="server processes to measure with, e.g. 1,2")
    ap.add_argument("--list-think-ms", default="0", metavar="MS[,MS]",
                    help="mean pause of each client between its requests (0: back to back), e.g. 0,500")  # fmt: skip
    ap.add_argument("--list-client", default="httpx,raw", metavar="KIND[,KIND]",
                    help="the load's clients: httpx and/or raw (a prepared request on a socket)")  # fmt: skip
    ap.add_argument("--list-profile", type=int, default=200, metavar="N",
                    help="profile N list requests in-process after the load (0: don't)")  # fmt: skip
    ap.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="a database to connect to for CREATE/DROP DATABASE")  # fmt: skip
    ap.add_argument("--pg-db", default="lorahub_bench_service", help="the database to create, use and drop")
    ap.add_argument("--no-postgres", action="store_true", help="list step on SQLite only")
    ap.add_argument("--keep", action="store_true", help="keep the list step's catalogs")
    _common.add_max_wait(ap, "list measurement")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.step in ("list", "all"):
        list_step(args)
    if args.step == "list":
        return
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
