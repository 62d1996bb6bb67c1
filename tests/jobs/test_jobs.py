"""Jobs on workers (``lora_hub.core.jobs``, ``lora_hub.jobs``), on the local PostgreSQL: a merge
handed to a worker gives PEFT's weights; identical requests become one job; cancel (queued and
mid-merge); a failed job reports the local command's error; a worker killed mid-merge leaves the
job to another worker, which finishes it once; SQLite refuses jobs with the way out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import LlamaForCausalLM
from typer.testing import CliRunner

from lora_hub import Hub
from lora_hub.cli.main import app
from lora_hub.errors import InvalidModelError, NotSupportedError
from lora_hub.merge import execute as merge_execute
from lora_hub.types import JobInfo
from tests.conftest import Postgres
from tests.merge.models import Zoo, input_ids, load_folder, peft_reference

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning", "ignore::DeprecationWarning"),
]

ADAPTER = "llama-all-linear"
PARTIAL = ".lorahub-partial-"
runner = CliRunner()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Zoo:
    return Zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture
def pg_url(postgres: Postgres) -> str:
    return postgres.new_database()


@pytest.fixture
def hub(tmp_path: Path, pg_url: str) -> Iterator[Hub]:
    with Hub(tmp_path / "home", database_url=pg_url) as h:
        yield h


def merges_run(monkeypatch: pytest.MonkeyPatch, delay_s: float = 0.0) -> list[str]:
    """Counts the merges the engine computes (``delay_s`` per tensor makes one slow enough to
    cancel in the middle)."""
    calls: list[str] = []
    real_execute, real_tensor = merge_execute.execute, merge_execute._merge_tensor

    def execute(*args: Any, **kwargs: Any) -> Any:
        calls.append("merge")
        return real_execute(*args, **kwargs)

    def tensor(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay_s)
        return real_tensor(*args, **kwargs)

    monkeypatch.setattr(merge_execute, "execute", execute)
    if delay_s:
        monkeypatch.setattr(merge_execute, "_merge_tensor", tensor)
    return calls


def wait_for(check: Any, timeout_s: float = 30.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_a_merge_on_a_worker_gives_pefts_weights(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    base, adapter = zoo.base("llama"), zoo.adapter(ADAPTER)
    spec = hub.merge_pipeline(base, [str(adapter)], tmp_path / "out", formats=[], name="acme/merged")
    job = hub.submit_pipeline(spec, device="cpu")
    assert job.state == "queued" and job.queue == "cpu" and not job.joined
    hub.run_worker(queue="cpu", wait=False)

    done = hub.job(job.id)
    assert done.state == "succeeded", done.error
    assert done.log[0].message == "submitted to the cpu queue"
    assert any(line.message.startswith("started on ") for line in done.log)
    result = hub.job_result(done)
    assert result.merge.path == str(tmp_path / "out") and result.merge.registered == "acme/merged"
    assert hub.base_show("acme/merged").lineage is not None

    ref = peft_reference(base, LlamaForCausalLM, adapter, input_ids()).merged
    got = load_folder(tmp_path / "out")
    for name, want in ref.items():
        if name in got:
            assert torch.allclose(got[name], want, atol=1e-6, rtol=1e-5), name


def test_twenty_requests_with_duplicates_compute_each_recipe_once(
    hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 submissions at once, from 20 hubs, of 4 distinct recipes: 4 jobs, 4 merges."""
    calls = merges_run(monkeypatch)
    weights = (1.0, 0.5, 0.25, 2.0)
    specs = [
        hub.merge_pipeline(zoo.base("llama"), [f"{zoo.adapter(ADAPTER)}@{w}"], tmp_path / f"out-{w}", formats=[])
        for w in weights
    ]
    got: dict[int, list[JobInfo]] = {i: [] for i in range(len(specs))}
    failures: list[BaseException] = []
    start = threading.Barrier(20)

    def submit(i: int) -> None:
        try:
            with Hub(tmp_path / "home", database_url=hub.settings.database_url) as h:
                start.wait(timeout=60)
                got[i % len(specs)].append(h.submit_pipeline(specs[i % len(specs)]))
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert failures == []
    for jobs in got.values():
        assert len(jobs) == 5 and len({j.id for j in jobs}) == 1 and sum(not j.joined for j in jobs) == 1
    assert len({jobs[0].id for jobs in got.values()}) == len(specs)

    hub.run_worker(wait=False)
    assert calls == ["merge"] * len(specs)  # one per distinct recipe
    assert [j.state for j in hub.jobs()] == ["succeeded"] * len(specs)
    # once done, the same request is a new job again, served from the merge's record
    again = hub.submit_pipeline(specs[0])
    assert again.id != got[0][0].id and not again.joined
    hub.run_worker(wait=False)
    assert calls == ["merge"] * len(specs) and hub.job_result(hub.job(again.id)).merge.reused


def test_cancel_a_queued_job(hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = merges_run(monkeypatch)
    spec = hub.merge_pipeline(zoo.base("llama"), [str(zoo.adapter(ADAPTER))], tmp_path / "out", formats=[])
    job = hub.submit_pipeline(spec)
    cancelled = hub.cancel_job(job.id)
    assert cancelled.state == "cancelled" and cancelled.log[-1].message == "cancelled while queued"
    hub.run_worker(wait=False)
    assert calls == [] and not (tmp_path / "out").exists()


def test_cancel_stops_a_running_merge_and_keeps_nothing(
    hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    merges_run(monkeypatch, delay_s=0.3)  # 14 tensors: about 4 s of merging
    spec = hub.merge_pipeline(zoo.base("llama"), [str(zoo.adapter(ADAPTER))], tmp_path / "out", formats=[])
    job = hub.submit_pipeline(spec)
    worker = threading.Thread(target=hub.run_worker, kwargs={"wait": False})
    worker.start()
    wait_for(lambda: (hub.job(job.id).progress or {}).get("done"), what="the merge to start writing")
    asked = time.monotonic()
    assert hub.cancel_job(job.id).state == "running"
    done = wait_for(lambda: (j := hub.job(job.id)).done and j, timeout_s=10, what="the job to stop")
    stopped_after = time.monotonic() - asked
    worker.join(timeout=30)
    assert done.state == "cancelled" and done.error is not None and done.error["code"] == "cancelled"
    assert stopped_after < 2.0, stopped_after
    assert not (tmp_path / "out").exists() and [p for p in tmp_path.iterdir() if PARTIAL in p.name] == []
    assert hub.base_list() == [] and hub.merge_record("x") is None


def test_a_failed_job_reports_the_local_commands_error(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    import shutil

    base = tmp_path / "base"
    shutil.copytree(zoo.base("llama"), base)
    spec = hub.merge_pipeline(base, [str(zoo.adapter(ADAPTER))], tmp_path / "out", formats=[])
    job = hub.submit_pipeline(spec)
    (base / "config.json").unlink()  # broken after it was accepted
    hub.run_worker(wait=False)
    failed = hub.job(job.id)
    assert failed.state == "failed" and failed.error is not None
    with pytest.raises(InvalidModelError) as local:
        hub.run_pipeline(spec)
    assert failed.error["message"] == local.value.message and failed.error["hint"] == local.value.hint
    with pytest.raises(InvalidModelError) as remote:
        hub.job_result(failed)
    assert str(remote.value) == str(local.value) and remote.value.exit_code == local.value.exit_code


def worker_process(tmp_path: Path, pg_url: str, **env: str) -> subprocess.Popen[str]:
    environ = {
        **os.environ,
        "LORAHUB_HOME": str(tmp_path / "home"),
        "LORAHUB_DATABASE_URL": pg_url,
        "LORAHUB_WORKER_HEARTBEAT_S": "0.5",
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "lora_hub", "worker", "--queue", "cpu"],
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_killed_worker_leaves_the_job_to_another(hub: Hub, zoo: Zoo, tmp_path: Path, pg_url: str) -> None:
    out = tmp_path / "out"
    spec = hub.merge_pipeline(zoo.base("llama"), [str(zoo.adapter(ADAPTER))], out, formats=[], name="acme/m")
    job = hub.submit_pipeline(spec)
    marker = tmp_path / "hung"
    first = worker_process(tmp_path, pg_url, LORAHUB_TEST_HANG_AT="merge.before_rename",
                           LORAHUB_TEST_HANG_FILE=str(marker))  # fmt: skip
    try:
        wait_for(marker.exists, timeout_s=60, what="the first worker to reach the end of its merge")
        partials = [p for p in tmp_path.iterdir() if PARTIAL in p.name]
        assert len(partials) == 1  # its merge, written in full, not yet in place
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        first.kill()
    assert hub.job(job.id).state == "running" and not out.exists()

    second = worker_process(tmp_path, pg_url)
    try:
        done = wait_for(lambda: ((j := hub.job(job.id)).done and j) or second.poll() is not None, timeout_s=90,
                        what="the second worker")  # fmt: skip
    except AssertionError:
        second.kill()
        raise AssertionError((hub.job(job.id), second.stdout.read() if second.stdout else "")) from None
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=20)
        except subprocess.TimeoutExpired:
            second.kill()
    said = second.stdout.read() if second.stdout else ""
    assert isinstance(done, JobInfo), said
    assert done.state == "succeeded", (done.error, said)
    assert done.attempts == 2 and any(line.message.startswith("restarted on ") for line in done.log)
    assert out.is_dir() and [p for p in tmp_path.iterdir() if PARTIAL in p.name] == []
    assert [b.name for b in hub.base_list()] == ["acme/m"]
    record = json.loads((out / "lorahub_merge.json").read_text())
    assert hub.merge_record(record["recipe_digest"]) is not None


def test_sqlite_refuses_jobs_with_the_way_out(tmp_path: Path, zoo: Zoo, monkeypatch: pytest.MonkeyPatch) -> None:
    with Hub(tmp_path / "home", database_url=f"sqlite:///{tmp_path / 'c.db'}") as h:
        spec = h.merge_pipeline(zoo.base("llama"), [str(zoo.adapter(ADAPTER))], tmp_path / "out", formats=[])
        with pytest.raises(NotSupportedError, match="jobs need a PostgreSQL catalog") as info:
            h.submit_pipeline(spec)
        assert "without --detach" in (info.value.hint or "")
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", f"sqlite:///{tmp_path / 'c.db'}")
    result = runner.invoke(app, ["merge", "--base", str(zoo.base("llama")), str(zoo.adapter(ADAPTER)),
                                 "-o", str(tmp_path / "out"), "--detach"])  # fmt: skip
    assert result.exit_code == 2 and result.stderr.startswith("error: jobs need a PostgreSQL catalog")
    assert not (tmp_path / "out").exists()


def test_the_cli_submits_follows_and_lists(
    zoo: Zoo, tmp_path: Path, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("LORAHUB_DATABASE_URL", pg_url)
    monkeypatch.delenv("LORAHUB_URL", raising=False)
    base, adapter = str(zoo.base("llama")), str(zoo.adapter(ADAPTER))

    detached = runner.invoke(app, ["merge", "--base", base, adapter, "-o", str(tmp_path / "a"), "--detach", "--json"])
    assert detached.exit_code == 0, detached.stderr
    job = json.loads(detached.stdout)
    assert job["state"] == "queued" and job["kind"] == "pipeline"
    listed = runner.invoke(app, ["jobs", "list"])
    assert listed.stdout.startswith(f"{job['id']}  queued ") and f"-> {tmp_path / 'a'}" in listed.stdout

    stop = threading.Event()

    def work() -> None:
        with Hub(tmp_path / "home", database_url=pg_url) as h:
            while not stop.is_set():
                h.run_worker(wait=False)
                stop.wait(0.2)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        waited = runner.invoke(app, ["jobs", "wait", job["id"]])
        assert waited.exit_code == 0 and waited.stdout.strip().endswith(f"job {job['id']} succeeded"), waited.stderr
        followed = runner.invoke(app, ["merge", "--base", base, f"{adapter}@0.5", "-o", str(tmp_path / "b"),
                                       "--submit"])  # fmt: skip
        local = runner.invoke(app, ["merge", "--base", base, f"{adapter}@0.5", "-o", str(tmp_path / "c")])
    finally:
        stop.set()
        worker.join(timeout=60)
    assert followed.exit_code == 0, followed.stderr
    lines = followed.stdout.splitlines()
    assert lines[0].startswith("submitted job ") and "(pipeline, any queue, queued)" in lines[0]
    assert lines[1].startswith("merged 14 tensors, copied 7 -> ") and lines[1].endswith(str(tmp_path / "b"))
    # the same summary as the local merge of the same recipe (served from the job's record)
    assert local.stdout.splitlines()[0].startswith(f"{tmp_path / 'c'}: served from the catalog")
    shown = runner.invoke(app, ["jobs", "show", job["id"]])
    assert "state      succeeded" in shown.stdout and f"result     {tmp_path / 'a'}" in shown.stdout
    logs = runner.invoke(app, ["jobs", "logs", job["id"]]).stdout.splitlines()
    assert logs[0].endswith("submitted to the any queue") and logs[-1].endswith("succeeded")
    missing = runner.invoke(app, ["jobs", "show", "nope"])
    assert missing.exit_code == 2 and missing.stderr.startswith("error: no job 'nope'")
