"""Concurrency and crash safety, on SQLite and on Postgres."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from lora_hub import Hub
from lora_hub.errors import ConflictError
from lora_hub.store import LocalStore
from lora_hub.types import ListQuery
from tests.helpers import kill, run_until_hang, tree_bytes, write_adapter

WORKERS = 8
PUSHES_EACH = 5


def _push_worker(home: str, url: str, folders: list[str], barrier, results) -> None:  # type: ignore[no-untyped-def]
    try:
        with Hub(home, database_url=url) as hub:
            barrier.wait(timeout=120)
            out = [(hub.push(f, "acme/race").version.version, f) for f in folders]
        results.put(("ok", out))
    except BaseException as exc:  # report, never hang the parent
        results.put(("error", repr(exc)))


def test_concurrent_pushes_get_unique_gap_free_versions(tmp_path: Path, catalog_url: str) -> None:
    folders = [
        str(write_adapter(tmp_path / f"a{w}_{i}", seed=w * 100 + i)) for w in range(WORKERS) for i in range(PUSHES_EACH)
    ]
    home = str(tmp_path / "home")
    with Hub(home, database_url=catalog_url) as hub:
        hub.upgrade_db()  # migrate once up front, as `db upgrade` would
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_push_worker,
            args=(home, catalog_url, folders[w * PUSHES_EACH : (w + 1) * PUSHES_EACH], barrier, results),
        )
        for w in range(WORKERS)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    errors = [detail for status, detail in outcomes if status != "ok"]
    assert errors == []
    got = sorted(v for _, pairs in outcomes for v, _ in pairs)
    assert got == list(range(1, WORKERS * PUSHES_EACH + 1))
    with Hub(home, database_url=catalog_url) as hub:
        assert hub.versions("acme/race") == list(range(1, 41))
        listed = hub.list_versions(ListQuery(name="race", limit=100))
        assert len({v.digest for v in listed}) == 40
        # every version holds the folder its pusher sent
        pushed = {v: f for _, pairs in outcomes for v, f in pairs}
        for version in (1, 17, 40):
            out = tmp_path / f"pulled{version}"
            hub.pull(f"acme/race:{version}", out)
            assert tree_bytes(out) == tree_bytes(Path(pushed[version]))


def test_first_use_migrates_once_under_concurrency(
    tmp_path: Path, catalog_url: str, request: pytest.FixtureRequest
) -> None:
    if catalog_url.startswith("postgresql"):
        catalog_url = request.getfixturevalue("postgres").new_database(migrated=False)
    else:
        catalog_url = f"sqlite:///{tmp_path / 'fresh.db'}"
    folders = [str(write_adapter(tmp_path / f"f{w}", seed=w)) for w in range(4)]
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(4)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=_push_worker, args=(str(tmp_path / "home"), catalog_url, [f], barrier, results))
        for f in folders
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [s for s, _ in outcomes] == ["ok"] * 4, outcomes
    assert sorted(pairs[0][0] for _, pairs in outcomes) == [1, 2, 3, 4]


@pytest.mark.parametrize("point", ["store.put.before_fsync", "push.before_catalog"])
def test_push_killed_midway_leaves_no_adapter_and_gc_cleans_up(
    tmp_path: Path, lorahub_env: dict[str, str], point: str
) -> None:
    src = write_adapter(tmp_path / "a")
    proc = run_until_hang(["push", str(src), "--name", "acme/x"], lorahub_env, point, tmp_path / "parked")
    kill(proc)
    with Hub() as hub:  # the killed push's store lease does not block: its process is gone
        assert hub.list_versions() == []
        temp_dir = Path(lorahub_env["LORAHUB_HOME"]) / "blobs" / "tmp"
        leftovers = list(temp_dir.iterdir())
        assert len(leftovers) == (1 if point == "store.put.before_fsync" else 0)
        res = hub.push(src, "acme/x")
        assert res.created and res.version.version == 1
        report = hub.gc()
        assert report.temp_files_removed == len(leftovers)
        assert not temp_dir.exists() or list(temp_dir.iterdir()) == []
        assert report.blobs_removed == 0  # what the killed push stored is now referenced
        hub.pull("acme/x", tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(src)


def test_orphan_blob_of_killed_push_is_collected(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    src = write_adapter(tmp_path / "a")
    kill(run_until_hang(["push", str(src), "--name", "acme/x"], lorahub_env, "push.before_catalog", tmp_path / "p"))
    with Hub() as hub:
        assert hub.list_versions() == []
        assert hub.gc().blobs_removed == 2  # config + weights, never recorded


def test_gc_leaves_live_writers_alone(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    src = write_adapter(tmp_path / "a")
    proc = run_until_hang(["push", str(src), "--name", "acme/x"], lorahub_env, "store.put.before_fsync", tmp_path / "p")
    store = LocalStore(Path(lorahub_env["LORAHUB_HOME"]) / "blobs")
    try:
        assert store.remove_stale_temp() == 0  # its temp file is locked by a live process
        with Hub() as hub, pytest.raises(ConflictError, match="pushes in progress"):
            hub.gc(wait_s=0.5)  # nor does gc run while the push holds its store lease
    finally:
        kill(proc)
    assert store.remove_stale_temp() == 1


def test_pull_killed_midway_leaves_no_output(tmp_path: Path, lorahub_env: dict[str, str]) -> None:
    src = write_adapter(tmp_path / "a", extra_files={"README.md": b"x"})
    with Hub() as hub:
        hub.push(src, "acme/x")
    dest = tmp_path / "out"
    kill(run_until_hang(["pull", "acme/x", "-o", str(dest)], lorahub_env, "pull.after_file", tmp_path / "p"))
    assert not dest.exists()
    partials = [p for p in tmp_path.iterdir() if ".lorahub-partial-" in p.name]
    assert len(partials) == 1
    with Hub() as hub:
        hub.pull("acme/x", dest)
    assert tree_bytes(dest) == tree_bytes(src)
    assert [p for p in tmp_path.iterdir() if ".lorahub-partial-" in p.name] == []
