"""Benchmark `Hub.list` on a catalog of 100,000 adapter versions, on SQLite and on PostgreSQL.

The catalog is seeded with bulk SQLAlchemy Core inserts into the tables of lora_hub.catalog.tables
(the schema itself is made by lora_hub.catalog.Database, i.e. by the Alembic migrations):
10,000 names x 10 versions, rank in {4, 8, 16, 32, 64}, 2-7 target modules, 1-3 metrics
(accuracy ~ U(0,1) on 90 %, bleu ~ U(0,60) on 60 %, eval_loss ~ U(0.5,3) on 50 %), and the tags
prod (30 % of names), staging (50 %) and canary (10 %), each on one version of its name.

Each query is timed in-process (imports and the catalog's first open excluded): warm-ups, then
repetitions timed one by one with time.perf_counter; p50 / p95 in ms. SQLite is measured as
lora-hub leaves it (no ANALYZE: lora-hub never runs it) and again after ANALYZE; Postgres after
VACUUM ANALYZE (what autovacuum does shortly after a bulk load). Queries over the target are
explained (EXPLAIN QUERY PLAN / EXPLAIN ANALYZE) with the SQL that lora-hub actually sent.

Example:  python bench/bench_list.py
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from lora_hub import Hub
from lora_hub.catalog import Database
from lora_hub.catalog.tables import AdapterRow, MetricRow, TagRow, TargetRow, VersionFileRow, VersionRow
from lora_hub.types import AdapterFacts, AdapterLayout, ListQuery, LoraModule

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common
import _envinfo

RANKS = [4, 8, 16, 32, 64]
TARGET_SETS = [
    ["q_proj", "v_proj"],
    ["k_proj", "q_proj", "v_proj"],
    ["k_proj", "o_proj", "q_proj", "v_proj"],
    ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    ["k_proj", "v_proj"],
    ["down_proj", "gate_proj", "up_proj"],
]
BASES = ["meta-llama/Llama-3.1-8B", "mistralai/Mistral-7B-v0.3", "Qwen/Qwen2.5-7B"]
DTYPES = {"float32": 4, "bfloat16": 2}
TAGS = {"prod": 0.3, "staging": 0.5, "canary": 0.1}
TARGET_P95_MS = 20.0
BATCH = 5000
NOISY_SHARE = 0.2  # time a query again when other processes used more than this share of a CPU meanwhile
RETRIES = 3


@dataclass(frozen=True)
class Query:
    label: str
    query: ListQuery


QUERIES = [
    Query(
        'where "accuracy>=0.8" sort -accuracy limit 20', ListQuery(where="accuracy>=0.8", sort="-accuracy", limit=20)
    ),
    Query(
        'where "accuracy>=0.5 and rank<=16" sort -bleu limit 20',
        ListQuery(where="accuracy>=0.5 and rank<=16", sort="-bleu", limit=20),
    ),
    Query("target q_proj rank 16 limit 20", ListQuery(target="q_proj", rank=16, limit=20)),
    Query("tag prod limit 50", ListQuery(tag="prod", limit=50)),
    Query("default (no filters) limit 50", ListQuery(limit=50)),
    Query("latest_only sort -accuracy limit 20", ListQuery(latest_only=True, sort="-accuracy", limit=20)),
]


# --- seeding -----------------------------------------------------------------------------------


def facts_for(rank: int, targets: list[str], dtype: str, base: str, layers: int = 32, hidden: int = 4096) -> dict:
    num_params = layers * len(targets) * 2 * rank * hidden
    return AdapterFacts(
        rank=rank,
        alpha=2 * rank,
        target_modules=targets,
        dtype=dtype,
        num_params=num_params,
        size_bytes=num_params * DTYPES[dtype] + 20_000,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    ).model_dump(mode="json")


def layout_for(rank: int, hidden: int = 4096) -> dict:
    modules = [
        LoraModule(
            path=f"model.layers.{i}.self_attn.q_proj",
            rank=rank,
            alpha=2 * rank,
            scale=2.0,
            in_features=hidden,
            out_features=hidden,
            a_shape=[rank, hidden],
            b_shape=[hidden, rank],
        )
        for i in range(2)
    ]
    return AdapterLayout(modules=modules).model_dump(mode="json")


def digest(*parts: object) -> str:
    return "sha256:" + hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()


@dataclass
class Seed:
    adapters: list[dict[str, Any]] = field(default_factory=list)
    versions: list[dict[str, Any]] = field(default_factory=list)
    files: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    targets: list[dict[str, Any]] = field(default_factory=list)
    tags: list[dict[str, Any]] = field(default_factory=list)


def make_seed(names: int, versions_per_name: int, seed: int) -> Seed:
    rng = random.Random(seed)
    out = Seed()
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for a in range(1, names + 1):
        out.adapters.append(
            {
                "id": a,
                "namespace": f"team{a % 20:02d}",
                "name": f"adapter-{a:05d}",
                "next_version": versions_per_name + 1,
                "created_at": t0 + timedelta(seconds=a),
            }
        )
    facts_cache: dict[tuple, dict] = {}
    layouts = {r: layout_for(r) for r in RANKS}
    vid = 0
    version_ids: dict[int, list[int]] = {a: [] for a in range(1, names + 1)}
    order = list(range(1, names + 1))
    # Versions are made in rounds, names in random order within a round: ids (= creation order)
    # interleave the names, as they would in a real registry.
    for v in range(1, versions_per_name + 1):
        rng.shuffle(order)
        for a in order:
            vid += 1
            version_ids[a].append(vid)
            rank = rng.choice(RANKS)
            targets = rng.choice(TARGET_SETS)
            dtype = rng.choice(list(DTYPES))
            base = BASES[a % len(BASES)]
            key = (rank, tuple(targets), dtype, base)
            if key not in facts_cache:
                facts_cache[key] = facts_for(rank, targets, dtype, base)
            facts = facts_cache[key]
            out.versions.append(
                {
                    "id": vid,
                    "adapter_id": a,
                    "version": v,
                    "digest": digest("manifest", vid),
                    "created_at": t0 + timedelta(days=1, seconds=vid),
                    "description": None if rng.random() < 0.5 else f"run {vid} of adapter {a}",
                    "rank": rank,
                    "alpha": float(2 * rank),
                    "dtype": dtype,
                    "num_params": facts["num_params"],
                    "size_bytes": facts["size_bytes"],
                    "task_type": "CAUSAL_LM",
                    "base_model_name": base,
                    "facts": facts,
                    "layout": layouts[rank],
                    "lineage": None,
                }
            )
            out.files.append(
                {"version_id": vid, "path": "adapter_config.json", "digest": digest("cfg", vid), "size": 700}
            )
            out.files.append(
                {
                    "version_id": vid,
                    "path": "adapter_model.safetensors",
                    "digest": digest("weights", vid),
                    "size": facts["size_bytes"],
                }
            )
            metrics = {}
            if rng.random() < 0.9:
                metrics["accuracy"] = rng.random()
            if rng.random() < 0.6:
                metrics["bleu"] = rng.uniform(0, 60)
            if rng.random() < 0.5:
                metrics["eval_loss"] = rng.uniform(0.5, 3)
            if not metrics:
                metrics["accuracy"] = rng.random()
            out.metrics += [{"version_id": vid, "key": k, "value": val} for k, val in metrics.items()]
            out.targets += [{"version_id": vid, "target": t} for t in targets]
    for a in range(1, names + 1):
        for tag, p in TAGS.items():
            if rng.random() < p:
                out.tags.append({"adapter_id": a, "tag": tag, "version_id": rng.choice(version_ids[a])})
    return out


def batches(rows: list[dict[str, Any]], n: int = BATCH) -> Iterator[list[dict[str, Any]]]:
    for i in range(0, len(rows), n):
        yield rows[i : i + n]


def seed_catalog(url: str, data: Seed) -> float:
    """Create the schema (Alembic, through Database) and bulk-insert ``data``; seconds taken."""
    t0 = time.perf_counter()
    db = Database(url)
    try:
        plan = [
            (AdapterRow, data.adapters),
            (VersionRow, data.versions),
            (VersionFileRow, data.files),
            (MetricRow, data.metrics),
            (TargetRow, data.targets),
            (TagRow, data.tags),
        ]
        for row_cls, rows in plan:
            table = row_cls.__table__
            for chunk in batches(rows):
                with db.engine.begin() as conn:
                    conn.execute(table.insert(), chunk)
        if db.engine.dialect.name == "postgresql":
            with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE"))
    finally:
        db.close()
    return time.perf_counter() - t0


def sqlite_analyze(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    finally:
        engine.dispose()


# --- postgres database --------------------------------------------------------------------------


def pg_admin(admin_url: str) -> Engine:
    return create_engine(admin_url, isolation_level="AUTOCOMMIT")


def pg_create(admin_url: str, dbname: str) -> tuple[str, str]:
    engine = pg_admin(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}"'))
            conn.execute(text(f'CREATE DATABASE "{dbname}"'))
            server = conn.execute(text("SHOW server_version")).scalar_one()
    finally:
        engine.dispose()
    return make_url(admin_url).set(database=dbname).render_as_string(hide_password=False), str(server)


def pg_drop(admin_url: str, dbname: str) -> None:
    engine = pg_admin(admin_url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
    finally:
        engine.dispose()


# --- timing ------------------------------------------------------------------------------------


@dataclass
class Timing:
    rows: int
    samples_ms: list[float]
    main_sql_ms: float  # p50 of the main SELECT alone, from a separate pass with cursor events
    other_sql_ms: float  # p50 of the other statements of the call (tags, metrics, files)
    python_ms: float  # p50 of the rest of the call in that pass (ORM rows, pydantic, session)
    statement: str
    parameters: Any
    refs: list[str]
    foreign_cpu_share: float  # other processes' CPU use while timing, as a share of the wall time

    def pct(self, q: float) -> float:
        xs = sorted(self.samples_ms)
        k = (len(xs) - 1) * q
        lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
        return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class SqlRecorder:
    """Records (statement, parameters, seconds) of every cursor execution on an engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.calls: list[tuple[str, Any, float]] = []
        self.on = False
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def _before(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        conn.info.setdefault("_bench_t0", []).append(time.perf_counter())

    def _after(self, conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        t0 = conn.info["_bench_t0"].pop()
        if self.on:
            self.calls.append((statement, parameters, time.perf_counter() - t0))

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._before)
        event.remove(self.engine, "after_cursor_execute", self._after)


def is_main(statement: str) -> bool:
    s = " ".join(statement.split())
    return s.startswith("SELECT") and "FROM adapter_versions JOIN adapters" in s


def time_queries(url: str, home: Path, warmup: int, reps: int, profile_reps: int, max_wait: float) -> dict[str, Timing]:
    hub = Hub(home=home, database_url=url)
    try:
        hub.list_versions(ListQuery(limit=1))  # first open (engine, schema check) excluded
        engine = hub._ctx.catalog.db.engine  # the benchmark reaches into the Hub to time and explain its SQL

        def backends() -> list[int]:
            """The Postgres server processes of our database: their CPU is ours, not noise."""
            if engine.dialect.name != "postgresql":
                return []
            with engine.connect() as conn:
                return list(
                    conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars()
                )

        out: dict[str, Timing] = {}
        for q in QUERIES:
            # The postmaster reaps the parallel workers of our queries: count their CPU as ours
            # (and, unavoidably, that of other sessions' short-lived backends too).
            postmaster = [p for p in {_envinfo.parent_pid(b) for b in backends()} if p]
            for attempt in range(RETRIES + 1):
                if max_wait > 0:
                    _envinfo.wait_quiet(max_wait=max_wait)
                for _ in range(warmup):
                    hub.list_versions(q.query)
                samples = []
                with _envinfo.ForeignCpu(backends, postmaster) as foreign:
                    start = time.perf_counter()
                    for _ in range(reps):
                        t0 = time.perf_counter()
                        rows = hub.list_versions(q.query)
                        samples.append((time.perf_counter() - t0) * 1000)
                    block = time.perf_counter() - start
                if foreign.seconds <= NOISY_SHARE * block or attempt == RETRIES:
                    break
                print(f"    ({q.label}: other processes used {foreign.seconds / block:.0%} of a CPU; again)")
            # separate pass: where does the time go, and which SQL was sent
            rec = SqlRecorder(hub._ctx.catalog.db.engine)
            main_ms, other_ms, rest_ms = [], [], []
            stmt, params = "", None
            try:
                for _ in range(profile_reps):
                    rec.calls.clear()
                    rec.on = True
                    t0 = time.perf_counter()
                    hub.list_versions(q.query)
                    total = (time.perf_counter() - t0) * 1000
                    rec.on = False
                    main = [c for c in rec.calls if is_main(c[0])]
                    if main:
                        stmt, params = main[0][0], main[0][1]
                        main_ms.append(main[0][2] * 1000)
                    other_ms.append(sum(c[2] for c in rec.calls if not is_main(c[0])) * 1000)
                    rest_ms.append(total - sum(c[2] for c in rec.calls) * 1000)
            finally:
                rec.close()
            out[q.label] = Timing(
                rows=len(rows),
                samples_ms=samples,
                main_sql_ms=statistics.median(main_ms) if main_ms else float("nan"),
                other_sql_ms=statistics.median(other_ms) if other_ms else float("nan"),
                python_ms=statistics.median(rest_ms) if rest_ms else float("nan"),
                statement=stmt,
                parameters=params,
                refs=[r.ref for r in rows],
                foreign_cpu_share=foreign.seconds / block,
            )
            t = out[q.label]
            print(
                f"    {q.label}: p50 {t.pct(0.5):.1f} ms, p95 {t.pct(0.95):.1f} ms ({t.rows} rows; "
                f"other processes used {t.foreign_cpu_share:.0%} of a CPU meanwhile)",
                flush=True,
            )
        return out
    finally:
        hub.close()


def explain(url: str, statement: str, parameters: Any) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "sqlite":
                rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
                # (id, parent, notused, detail) -> an indented tree
                depth: dict[int, int] = {0: -1}
                lines = []
                for rid, parent, _, detail in rows:
                    depth[rid] = depth.get(parent, -1) + 1
                    lines.append("  " * depth[rid] + detail)
                return "\n".join(lines)
            rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
            return "\n".join(r[0] for r in rows)
    finally:
        engine.dispose()


def render_sql(statement: str, parameters: Any) -> str:
    """The statement with its parameters inlined, for reading only."""
    s = statement
    if isinstance(parameters, dict):
        for k, v in parameters.items():
            s = s.replace(f"%({k})s", repr(v))
    elif isinstance(parameters, tuple | list):
        for v in parameters:
            s = s.replace("?", repr(v), 1)
    return s


def time_cli(url: str, home: Path, args: list[str], runs: int) -> list[float]:
    exe = Path(sys.executable).parent / "lorahub"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORAHUB_")}
    env.update(LORAHUB_HOME=str(home), LORAHUB_DATABASE_URL=url)
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([str(exe), *args], env=env, check=True, stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - t0)
    return walls


# --- main --------------------------------------------------------------------------------------


def main() -> None:
    ap = _common.main_parser(__doc__, Path("/tmp/lorahub-bench-list"))
    ap.add_argument("--names", type=int, default=10_000, help="adapter names (default 10,000)")
    ap.add_argument("--versions", type=int, default=10, help="versions per name (default 10)")
    ap.add_argument("--reps", type=int, default=200, help="timed repetitions per query (default 200)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed repetitions first (default 10)")
    ap.add_argument("--cli-runs", type=int, default=5, help="runs of the whole-process `lorahub list` (default 5)")
    ap.add_argument(
        "--pg-admin-url",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="a database to connect to for CREATE/DROP DATABASE",
    )
    ap.add_argument("--pg-db", default="lorahub_bench", help="the database to create, use and drop")
    ap.add_argument("--no-postgres", action="store_true", help="SQLite only")
    ap.add_argument("--explain", choices=["slow", "all", "none"], default="slow", help="which queries to explain")
    ap.add_argument("--keep", action="store_true", help="keep the SQLite file and the Postgres database")
    _common.add_max_wait(ap, "query")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="list-", dir=args.workdir))
    home = scratch / "home"
    home.mkdir()
    t0 = time.perf_counter()
    data = make_seed(args.names, args.versions, args.seed)
    print(
        f"generated {len(data.versions):,} versions, {len(data.metrics):,} metrics, {len(data.targets):,} targets, "
        f"{len(data.tags):,} tags in {time.perf_counter() - t0:.1f} s",
        flush=True,
    )

    backends: list[tuple[str, str]] = []
    sqlite_path = scratch / "catalog.db"
    sqlite_url = f"sqlite:///{sqlite_path}"
    pg_url = pg_server = None
    results: dict[str, dict[str, Timing]] = {}
    cli: dict[str, list[float]] = {}
    plans: list[str] = []
    seed_s: dict[str, float] = {}
    try:
        print("seeding SQLite ...", flush=True)
        seed_s["SQLite"] = seed_catalog(sqlite_url, data)
        backends.append(("SQLite", sqlite_url))
        if not args.no_postgres:
            pg_url, pg_server = pg_create(args.pg_admin_url, args.pg_db)
            print("seeding Postgres ...", flush=True)
            seed_s["Postgres"] = seed_catalog(pg_url, data)
        del data

        def measure(name: str, url: str) -> None:
            print(f"  {name}", flush=True)
            results[name] = time_queries(url, home, args.warmup, args.reps, 20, args.max_wait)
            cli_args = ["list", "--where", "accuracy>=0.8", "--sort", "-accuracy", "--limit", "20"]
            cli[name] = time_cli(url, home, cli_args, args.cli_runs)
            for q in QUERIES:
                t = results[name][q.label]
                if args.explain == "all" or (args.explain == "slow" and t.pct(0.95) > TARGET_P95_MS):
                    plan = explain(url, t.statement, t.parameters)
                    plans.append(
                        f"### {name}: {q.label} (p95 {t.pct(0.95):.1f} ms)\n\n```sql\n"
                        f"{render_sql(t.statement, t.parameters)}\n```\n\n```\n{plan}\n```\n"
                    )

        print("timing", flush=True)
        measure("SQLite", sqlite_url)
        sqlite_analyze(sqlite_url)
        measure("SQLite+ANALYZE", sqlite_url)
        if pg_url:
            measure("Postgres", pg_url)
        version_cli = time_cli(sqlite_url, home, ["--version"], args.cli_runs)
        sqlite_mib = sqlite_path.stat().st_size / 2**20
    finally:
        if pg_url and not args.keep:
            with contextlib.suppress(Exception):
                pg_drop(args.pg_admin_url, args.pg_db)
        if args.keep:
            print(f"kept {sqlite_path}" + (f" and {args.pg_db}" if pg_url else ""))
        else:
            shutil.rmtree(scratch, ignore_errors=True)
            with contextlib.suppress(OSError):
                args.workdir.rmdir()

    # --- report ---
    names = list(results)
    print()
    print(f"## list: {args.names * args.versions:,} versions ({args.names:,} names x {args.versions})")
    print()
    print("\n".join(_envinfo.machine_lines(args.workdir if args.workdir.exists() else "/tmp")))
    print("\n".join(_envinfo.version_lines({"PostgreSQL server": pg_server} if pg_server else None)))
    print(f"- command: `python bench/bench_list.py {' '.join(sys.argv[1:])}`")
    print(
        "- seeding (schema + bulk insert): "
        + ", ".join(f"{k} {v:.1f} s" for k, v in seed_s.items())
        + f"; SQLite file {sqlite_mib:.0f} MiB"
    )
    print(f"- {args.reps} timed calls of Hub.list per query after {args.warmup} warm-ups; ms")
    print()
    head = "| query | rows | " + " | ".join(f"{n} p50 | {n} p95" for n in names) + " |"
    print(head)
    print("|---|---:|" + "---:|---:|" * len(names))
    for q in QUERIES:
        cells = []
        for n in names:
            t = results[n][q.label]
            p95 = t.pct(0.95)
            mark = "" if p95 <= TARGET_P95_MS else " ✗"
            cells.append(f"{t.pct(0.5):.1f} | {p95:.1f}{mark}")
        print(f"| {q.label} | {results[names[0]][q.label].rows} | " + " | ".join(cells) + " |")
    print()
    share = max(t.foreign_cpu_share for r in results.values() for t in r.values())
    print(
        f"✗: over the target p95 <= {TARGET_P95_MS:.0f} ms. Other processes used at most {share:.0%} of a CPU "
        "while a query was being timed."
    )
    print()
    print(
        "Where the time of one call goes (p50 of 20 calls, ms): main SELECT / the 3 follow-up SELECTs "
        "(tags, metrics, files) / the rest (ORM rows, pydantic, session):"
    )
    print()
    print("| query | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for q in QUERIES:
        cells = []
        for n in names:
            t = results[n][q.label]
            cells.append(f"{t.main_sql_ms:.1f} / {t.other_sql_ms:.1f} / {t.python_ms:.1f}")
        print(f"| {q.label} | " + " | ".join(cells) + " |")
    print()
    print(
        'Whole process, `lorahub list --where "accuracy>=0.8" --sort -accuracy --limit 20`, '
        f"{args.cli_runs} runs, s: "
        + "; ".join(
            f"{n} median {statistics.median(w):.2f} (min {min(w):.2f}, max {max(w):.2f})" for n, w in cli.items()
        )
        + f"; for scale, `lorahub --version`: median {statistics.median(version_cli):.2f} s."
    )
    # the backends must agree on the answers (same data, same order rules)
    mismatched = [q.label for q in QUERIES if len({tuple(results[n][q.label].refs) for n in names}) > 1]
    print()
    print(
        "Same refs, in the same order, from every backend: "
        + ("yes" if not mismatched else "NO, for: " + "; ".join(mismatched))
    )
    if plans:
        print()
        print("## plans of the queries over the target")
        print()
        print("\n".join(plans))


if __name__ == "__main__":
    main()
