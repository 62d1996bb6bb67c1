"""Jobs that read their inputs through the store and write their result back (``store_output``):
a job sent to the server (``ServingHub.submit_request``) merges a stored base and a pushed
adapter whose folders are gone, stores the merged model as a stored base with its lineage, and
``base pull`` writes it out. Checked against an independent float64 merge, ``W + s * B @ A``.

- SQLite and PostgreSQL with the local store (the ``catalog_url`` fixture): the blob files are
  read where they are (the in-process worker on SQLite, ``lorahub worker`` on PostgreSQL);
- PostgreSQL with the S3 store (moto on 127.0.0.1): the worker reads the base through its
  bounded cache (``LORAHUB_CACHE_DIR``), not the store's own unbounded copy.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from lora_hub.api import ServingHub
from lora_hub.cli.main import app
from lora_hub.errors import InvalidArgumentError, NotSupportedError
from lora_hub.settings import Settings
from tests.helpers import PREFIX, adapter_config, adapter_tensors, save_llama, write_adapter

SCALE = 8 / 4  # adapter_config: lora_alpha 8, r 4
NAME = "acme/merged"
runner = CliRunner()


def _base_tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def expected_merge(base: dict[str, torch.Tensor], adapter: dict[str, Any]) -> dict[str, torch.Tensor]:
    """W + s * B @ A in float64, for every target; the other tensors as they are."""
    out = {k: v.double() for k, v in base.items()}
    for key, a in adapter.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PREFIX) : -len(".lora_A.weight")]
        b = adapter[key.replace("lora_A", "lora_B")]
        delta = torch.from_numpy(b).double() @ torch.from_numpy(a).double()
        out[f"{module}.weight"] = out[f"{module}.weight"] + SCALE * delta
    return out


def _inputs(hub: ServingHub, tmp_path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """A stored base and a pushed adapter, their folders removed (only the store holds them);
    the base's tensors, the adapter's, and a merge request that stores its output."""
    base = save_llama(tmp_path / "base", seed=5)
    hub.base_add(base, "tiny", store=True)
    tensors = _base_tensors(base)
    lora = adapter_tensors(seed=9)
    adapter = write_adapter(tmp_path / "adapter", tensors=lora, config=adapter_config())
    hub.push(adapter, "acme/lora", base="tiny")
    shutil.rmtree(base)
    shutil.rmtree(adapter)
    request = {
        "kind": "pipeline",
        "pipeline": {"base_model": "tiny", "models": [{"model": "acme/lora"}], "output": "ignored", "name": NAME},
        "device": "cpu",
        "store_output": True,
    }
    return tensors, lora, request


def _check_pulled(hub: ServingHub, tmp_path: Path, base: dict[str, torch.Tensor], lora: dict[str, Any]) -> None:
    info = hub.base_show(NAME)
    assert info.stored and info.path is None and info.status == "missing"
    assert info.lineage is not None and info.lineage["recipe_digest"]
    pulled = hub.base_pull(NAME, tmp_path / "pulled")
    got = _base_tensors(Path(pulled.path))
    want = expected_merge(base, lora)
    assert set(got) == set(want)
    for key, w in want.items():
        assert torch.allclose(got[key].double(), w, atol=1e-5, rtol=1e-5), key
    assert any(not torch.equal(got[k], base[k]) for k in got)  # the merge changed something
    assert (Path(pulled.path) / "config.json").is_file()


def _leftover_work_folders() -> list[Path]:
    import tempfile

    return [p for p in Path(tempfile.gettempdir()).glob(f"lorahub-job-{os.getpid()}-*")]


def _run(hub: ServingHub, request: dict[str, Any]) -> Any:
    job = hub.submit_request(request)
    if not hub.settings.database_url.startswith("sqlite"):
        hub.run_worker(queue="cpu", wait=False)
    done = hub.follow_job(job.id, timeout_s=120)
    assert done.state == "succeeded", done.error
    return done


def test_a_stored_merge_job_on_the_local_store(tmp_path: Path, catalog_url: str, lorahub_env: dict[str, str]) -> None:
    settings = Settings.from_env(home=tmp_path / "home", database_url=catalog_url)
    with ServingHub(settings=settings) as hub:
        base, lora, request = _inputs(hub, tmp_path)
        before = _leftover_work_folders()
        done = _run(hub, request)
        assert done.result is not None and done.result["stored_base"] == NAME and done.result["merge"]["path"] == ""
        assert hub.job_result(done).merge.registered == NAME
        _check_pulled(hub, tmp_path, base, lora)
        assert _leftover_work_folders() == before  # the worker's own folder is gone

        shown = runner.invoke(app, ["jobs", "show", done.id])
        assert shown.exit_code == 0, shown.output
        assert f"merge tiny + 1 -> the blob store as base {NAME}" in shown.output
        assert f"stored as base {NAME}" in shown.output
        pulled = runner.invoke(app, ["base", "pull", NAME, "-o", str(tmp_path / "by-cli")])
        assert pulled.exit_code == 0, pulled.output
        assert _base_tensors(tmp_path / "by-cli").keys() == base.keys()


def test_a_recorded_stored_merge_is_served_from_the_store(
    tmp_path: Path, catalog_url: str, lorahub_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same recipe again, as a stored merge under the same name, is answered at submission
    from its record, with no job; with recompute, a job serves it from the stored base (nothing
    merged or stored again); as a merge into a folder (or under another name) it is written out
    from the stored base. Another recipe (another weight) is a job of its own."""
    from lora_hub.merge import execute as merge_execute

    settings = Settings.from_env(home=tmp_path / "home", database_url=catalog_url)
    with ServingHub(settings=settings) as hub:
        base, lora, request = _inputs(hub, tmp_path)
        first = _run(hub, request)
        assert not hub.job_result(first).merge.reused
        stored_before = hub.base_show(NAME)

        def no_merge(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("the recorded recipe was merged again")

        monkeypatch.setattr(merge_execute, "execute", no_merge)
        recorded = hub.submit_request(request)
        assert recorded.recorded and recorded.id == "" and recorded.state == "succeeded"
        assert [j.id for j in hub.jobs()] == [first.id]  # no job row, nothing queued
        again = hub.job_result(recorded)
        assert again.merge.reused and again.merge.path == "" and again.merge.registered == NAME
        assert again.merge.record.recipe_digest == first.result["merge"]["record"]["recipe_digest"]
        assert hub.base_show(NAME) == stored_before

        monkeypatch.undo()
        recomputed = _run(hub, {**request, "recompute": True})  # a job, though its recipe is recorded
        assert not recomputed.recorded and recomputed.id != first.id
        assert not hub.job_result(recomputed).merge.reused
        other = {**request, "pipeline": {**request["pipeline"], "models": [{"model": "acme/lora", "weight": 0.5}],
                                          "name": "acme/half"}}  # fmt: skip
        half = _run(hub, other)
        assert not half.recorded and not hub.job_result(half).merge.reused

        out = tmp_path / "copy"
        local = hub.merge("tiny", ["acme/lora"], out, name="acme/copy")
        assert local.reused and local.path == str(out) and local.registered == "acme/copy"
        got, want = _base_tensors(out), expected_merge(base, lora)
        assert set(got) == set(want)
        for key, w in want.items():
            assert torch.allclose(got[key].double(), w, atol=1e-5, rtol=1e-5), key
        assert hub.base_show("acme/copy").content_fingerprint == stored_before.content_fingerprint


def test_a_stored_merge_request_is_checked_at_submission(tmp_path: Path, catalog_url: str) -> None:
    settings = Settings.from_env(home=tmp_path / "home", database_url=catalog_url)
    with ServingHub(settings=settings) as hub:
        _, _, request = _inputs(hub, tmp_path)
        unnamed = {**request, "pipeline": {**request["pipeline"], "name": None}}
        with pytest.raises(InvalidArgumentError, match="needs a name"):
            hub.submit_request(unnamed)
        exported = {**request, "pipeline": {**request["pipeline"], "exports": [{"format": "onnx"}]}}
        with pytest.raises(NotSupportedError, match="exports"):
            hub.submit_request(exported)
        assert hub.jobs() == []


# --- S3 ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    moto_server = pytest.importorskip("moto.server", reason="moto[s3] + flask are not installed")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.mark.postgres
def test_on_s3_the_worker_reads_the_base_through_its_cache(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, postgres: Any
) -> None:
    boto3 = pytest.importorskip("boto3")
    home = tmp_path / "home"
    for key, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "LORAHUB_HOME": str(home),
        "LORAHUB_CACHE_DIR": str(tmp_path / "worker-cache"),
        "LORAHUB_CACHE_MAX_BYTES": str(20 << 20),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"lorahub-jobs-{os.urandom(4).hex()}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    settings = Settings.from_env(home=home, database_url=postgres.new_database(), store_url=f"s3://{bucket}/team")
    assert settings.cache_dir == tmp_path / "worker-cache" and settings.cache_max_bytes == 20 << 20
    with ServingHub(settings=settings) as hub:
        base, lora, request = _inputs(hub, tmp_path)
        weights = {f.digest for f in hub.base_show("tiny").files if f.path.endswith(".safetensors")}
        weights |= {f.digest for f in hub.show("acme/lora").files if f.path.endswith(".safetensors")}
        done = _run(hub, request)
        assert done.result is not None and done.result["stored_base"] == NAME

        cache = tmp_path / "worker-cache" / "sha256"
        cached = {"sha256:" + p.name for p in cache.glob("??/*") if len(p.name) == 64}
        assert len(weights) == 2 and weights <= cached  # base and adapter came through the worker's cache
        own_copy = home / "cache" / "s3" / "sha256"  # the store's own, unbounded copy: unused
        assert not any(own_copy.glob("??/*"))
        _check_pulled(hub, tmp_path, base, lora)
        # every blob of the merged model is in the bucket
        for f in hub.base_show(NAME).files:
            assert f.digest is not None
            key = f"team/sha256/{f.digest[7:9]}/{f.digest[7:]}"
            assert boto3.client("s3").head_object(Bucket=bucket, Key=key)["ContentLength"] == f.size


def test_a_cancelled_stored_merge_leaves_no_base_and_no_folder(
    tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from lora_hub.merge import execute as merge_execute

    real = merge_execute._merge_tensor

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # slow enough to cancel in the middle (no timing is asserted)
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_execute, "_merge_tensor", slow)
    settings = Settings.from_env(home=tmp_path / "home", database_url=catalog_url)
    with ServingHub(settings=settings) as hub:
        _, _, request = _inputs(hub, tmp_path)
        before = _leftover_work_folders()
        job = hub.submit_request(request)
        worker = None
        if not catalog_url.startswith("sqlite"):
            worker = threading.Thread(target=hub.run_worker, kwargs={"queue": "cpu", "wait": False})
            worker.start()
        deadline = time.monotonic() + 60
        while not (hub.job(job.id).progress or {}).get("done") and time.monotonic() < deadline:
            time.sleep(0.05)
        hub.cancel_job(job.id)
        done = hub.follow_job(job.id, timeout_s=60)
        if worker is not None:
            worker.join(timeout=60)
        assert done.state == "cancelled", done
        assert [b.name for b in hub.base_list()] == ["tiny"]  # the merged model was not left registered
        assert _leftover_work_folders() == before
