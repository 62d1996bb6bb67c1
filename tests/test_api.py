"""The core API end to end, on SQLite and on Postgres (``hub`` fixture)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from lora_hub import Hub
from lora_hub.catalog import HEAD_REVISION
from lora_hub.errors import (
    AdapterNotFoundError,
    DestinationExistsError,
    IntegrityError,
    InvalidAdapterError,
    InvalidArgumentError,
    InvalidNameError,
    PickleRefusedError,
    VersionNotFoundError,
)
from lora_hub.types import ListQuery
from tests.helpers import adapter_config, adapter_tensors, blob_path, store_of, tree_bytes, write_adapter


def blob_count(hub: Hub) -> int:
    return sum(1 for _ in store_of(hub).digests())


def test_push_records_facts_and_pull_is_byte_identical(hub: Hub, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a", extra_files={"README.md": b"# hello\n", "sub/notes.txt": b"x"})
    res = hub.push(src, "acme/sql-lora", metrics={"accuracy": 0.81}, tags=["sql"], description="first")
    v = res.version
    assert res.created and v.ref == "acme/sql-lora:1" and v.version == 1
    assert v.tags == ["sql"] and v.metrics == {"accuracy": 0.81} and v.description == "first"
    assert v.facts.rank == 4 and v.facts.alpha == 8 and v.facts.target_modules == ["q_proj", "v_proj"]
    assert v.facts.task_type == "CAUSAL_LM" and v.facts.base_model_name_or_path == "tiny-llama"
    expected_params = sum(t.size for t in adapter_tensors().values())
    assert v.facts.num_params == expected_params
    assert v.facts.size_bytes == sum(len(b) for b in tree_bytes(src).values())
    assert {f.path: f.digest for f in v.files} == {
        rel: "sha256:" + hashlib.sha256((src / rel).read_bytes()).hexdigest()
        for rel in ("README.md", "adapter_config.json", "adapter_model.safetensors", "sub/notes.txt")
    }
    out = hub.pull("acme/sql-lora:1", tmp_path / "out")
    assert tree_bytes(Path(out.path)) == tree_bytes(src)


def test_identical_push_returns_existing_version_and_writes_nothing(hub: Hub, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a")
    first = hub.push(src, "acme/x")
    blobs = blob_count(hub)
    again = hub.push(src, "acme/x", metrics={"accuracy": 0.5})
    assert not again.created and again.bytes_written == 0
    assert again.version.version == 1 and again.version.digest == first.version.digest
    assert blob_count(hub) == blobs
    assert hub.versions("acme/x") == [1]
    # a copy of the same content elsewhere is the same content
    copy = write_adapter(tmp_path / "copy")
    assert hub.push(copy, "acme/x").version.version == 1


def test_same_content_under_two_names_shares_blobs(hub: Hub, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a")
    hub.push(src, "acme/x")
    blobs = blob_count(hub)
    res = hub.push(src, "other/y")
    assert res.created and res.version.version == 1 and res.bytes_written == 0
    assert blob_count(hub) == blobs


def test_versions_count_up_and_latest_moves(hub: Hub, tmp_path: Path) -> None:
    for seed in range(3):
        hub.push(write_adapter(tmp_path / f"a{seed}", seed=seed), "acme/x")
    assert hub.versions("acme/x") == [1, 2, 3]
    assert hub.show("acme/x").version == 3
    assert hub.show("acme/x:latest").version == 3
    assert hub.show("acme/x:2").version == 2


def test_removed_version_numbers_are_not_reused(hub: Hub, tmp_path: Path) -> None:
    hub.push(write_adapter(tmp_path / "a", seed=1), "acme/x")
    hub.push(write_adapter(tmp_path / "b", seed=2), "acme/x")
    hub.remove("acme/x:2")
    assert hub.push(write_adapter(tmp_path / "c", seed=3), "acme/x").version.version == 3
    assert hub.versions("acme/x") == [1, 3]


def test_tags_move_and_resolve(hub: Hub, tmp_path: Path) -> None:
    for seed in range(3):
        hub.push(write_adapter(tmp_path / f"a{seed}", seed=seed), "acme/x")
    assert hub.tag("acme/x:1", "prod").tags == ["prod"]
    assert hub.show("acme/x:prod").version == 1
    hub.tag("acme/x:3", "prod")
    assert hub.show("acme/x:prod").version == 3
    assert hub.show("acme/x:1").tags == []
    hub.untag("acme/x", "prod")
    with pytest.raises(VersionNotFoundError) as info:
        hub.show("acme/x:prod")
    assert "1, 2, 3" in str(info.value)
    with pytest.raises(InvalidNameError):
        hub.tag("acme/x:1", "latest")


def test_metrics_set_overwrite_and_remove(hub: Hub, tmp_path: Path) -> None:
    hub.push(write_adapter(tmp_path / "a"), "acme/x", metrics={"accuracy": 0.8})
    v = hub.set_metrics("acme/x:1", {"rougeL": 0.44, "bleu": 31.2, "accuracy": 0.9})
    assert v.metrics == {"accuracy": 0.9, "bleu": 31.2, "rougeL": 0.44}
    v = hub.set_metrics("acme/x:1", {}, remove=["bleu"])
    assert v.metrics == {"accuracy": 0.9, "rougeL": 0.44}
    for bad in ({"rank": 1.0}, {"acc": float("nan")}, {"1acc": 1.0}):
        with pytest.raises(InvalidArgumentError):
            hub.set_metrics("acme/x:1", bad)


def test_missing_things_name_what_exists(hub: Hub, tmp_path: Path) -> None:
    hub.push(write_adapter(tmp_path / "a", seed=1), "acme/sql-lora")
    hub.push(write_adapter(tmp_path / "b", seed=2), "acme/sql-lora")
    with pytest.raises(VersionNotFoundError) as info:
        hub.show("acme/sql-lora:7")
    assert "versions that exist: 1, 2" in str(info.value)
    with pytest.raises(AdapterNotFoundError) as info2:
        hub.show("acme/sql-lorra")
    assert "acme/sql-lora" in str(info2.value)
    with pytest.raises(InvalidArgumentError, match="which version"):
        hub.remove("acme/sql-lora")


def _assert_nothing_stored(hub: Hub) -> None:
    assert hub.list_versions() == []
    assert blob_count(hub) == 0


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: (d / "adapter_config.json").write_text("{not json"), InvalidAdapterError),
        (lambda d: (d / "adapter_config.json").write_text(json.dumps({"r": 4})), InvalidAdapterError),
        (lambda d: (d / "adapter_model.bin").write_bytes(b"\x80\x04K\x01."), PickleRefusedError),
        (lambda d: (d / "adapter_model.safetensors").write_bytes(b"\x80\x04K\x01."), PickleRefusedError),
        (
            lambda d: (d / "adapter_model.safetensors").write_bytes(
                (d / "adapter_model.safetensors").read_bytes()[:-7]
            ),
            InvalidAdapterError,
        ),
    ],
    ids=["bad-json", "missing-fields", "pickle-bin", "renamed-pickle", "truncated"],
)
def test_bad_input_stores_nothing(hub: Hub, tmp_path: Path, mutate, error) -> None:  # type: ignore[no-untyped-def]
    src = write_adapter(tmp_path / "a")
    mutate(src)
    with pytest.raises(error):
        hub.push(src, "acme/x")
    _assert_nothing_stored(hub)


def test_nan_weights_store_nothing(hub: Hub, tmp_path: Path) -> None:
    tensors = adapter_tensors()
    key = next(iter(tensors))
    tensors[key][1, 2] = np.nan
    with pytest.raises(InvalidAdapterError, match="NaN or Inf"):
        hub.push(write_adapter(tmp_path / "a", tensors=tensors), "acme/x")
    _assert_nothing_stored(hub)


def test_rank_mismatch_stores_nothing(hub: Hub, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a", config=adapter_config(r=8))
    with pytest.raises(InvalidAdapterError, match="rank 8"):
        hub.push(src, "acme/x")
    _assert_nothing_stored(hub)


@pytest.mark.parametrize("name", ["acme/../x", "a/b/c", "Acme/x", "acme/" + "x" * 97, "acme/x:3"])
def test_bad_names_store_nothing(hub: Hub, tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidNameError):
        hub.push(write_adapter(tmp_path / "a"), name)
    _assert_nothing_stored(hub)


def test_pull_refuses_non_empty_folder_unless_forced(hub: Hub, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a")
    hub.push(src, "acme/x")
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    for force in (False, True):  # --force replaces only what lora-hub wrote
        with pytest.raises(DestinationExistsError, match="not empty"):
            hub.pull("acme/x", dest, force=force)
    assert tree_bytes(dest) == {"keep.txt": b"mine"}
    hub.pull("acme/x", dest, overwrite=True)
    assert tree_bytes(dest) == tree_bytes(src)
    with pytest.raises(DestinationExistsError, match="earlier lora-hub pull"):
        hub.pull("acme/x", dest)
    hub.pull("acme/x", dest, force=True)
    assert tree_bytes(dest) == tree_bytes(src)
    (tmp_path / "empty").mkdir()
    hub.pull("acme/x", tmp_path / "empty")
    assert tree_bytes(tmp_path / "empty") == tree_bytes(src)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DestinationExistsError, match="not a folder"):
        hub.pull("acme/x", tmp_path / "file")


def test_pull_of_corrupted_blob_fails_and_leaves_nothing(hub: Hub, tmp_path: Path) -> None:
    src = write_adapter(tmp_path / "a")
    v = hub.push(src, "acme/x").version
    weights = next(f for f in v.files if f.path == "adapter_model.safetensors")
    blob = blob_path(hub.settings.home, weights.digest)
    assert blob.is_file()
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    blob.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(IntegrityError, match="corrupted"):
        hub.pull("acme/x:1", dest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if "lorahub" in p.name] == []


@pytest.mark.parametrize("broad_rows", [2000, 1], ids=["selective-conditions", "broad-conditions"])
def test_list_filters_where_sort(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broad_rows: int) -> None:
    """The same answers whichever way a condition is planned: a join that drives the query, or a
    per-row check (what SQLite gets for conditions that match many rows; see ``_apply_condition``)."""
    monkeypatch.setattr("lora_hub.catalog.listing._BROAD_ROWS", broad_rows)
    specs = [
        ("acme/a", 4, {"accuracy": 0.9, "bleu": 10.0}, ["q_proj", "v_proj"]),
        ("acme/b", 8, {"accuracy": 0.7}, ["q_proj"]),
        ("acme/c", 16, {"accuracy": 0.85, "bleu": 30.0}, ["v_proj"]),
        ("other/d", 16, {}, ["q_proj"]),
    ]
    for i, (name, rank, metrics, targets) in enumerate(specs):
        modules = {f"model.layers.0.self_attn.{t}": (32, 32) for t in targets}
        src = write_adapter(
            tmp_path / f"s{i}",
            tensors=adapter_tensors(modules, rank=rank, seed=i),
            config=adapter_config(r=rank, target_modules=targets),
        )
        hub.push(src, name, metrics=metrics, tags=["prod"] if name == "acme/c" else [])

    def refs(**kw: object) -> list[str]:
        return [v.ref for v in hub.list_versions(ListQuery.model_validate(kw))]

    assert refs() == ["other/d:1", "acme/c:1", "acme/b:1", "acme/a:1"]
    assert refs(where="accuracy>=0.8", sort="-accuracy") == ["acme/a:1", "acme/c:1"]
    assert refs(sort="accuracy") == ["acme/b:1", "acme/c:1", "acme/a:1", "other/d:1"]  # missing metric last
    assert refs(sort="-bleu") == ["acme/c:1", "acme/a:1", "other/d:1", "acme/b:1"]
    assert refs(where="accuracy>0.5 and rank>=8", sort="-rank") == ["acme/c:1", "acme/b:1"]
    assert refs(rank=16) == ["other/d:1", "acme/c:1"]
    assert refs(target="v_proj") == ["acme/c:1", "acme/a:1"]
    assert refs(tag="prod") == ["acme/c:1"]
    assert refs(namespace="other") == ["other/d:1"]
    assert refs(where="name=b") == ["acme/b:1"]
    assert refs(limit=2) == ["other/d:1", "acme/c:1"]
    assert refs(where="accuracy>=0.8 and bleu>=20") == ["acme/c:1"]
    assert refs(where="accuracy>=0.8", sort="-bleu") == ["acme/c:1", "acme/a:1"]
    assert refs(sort="-bleu", limit=3) == ["acme/c:1", "acme/a:1", "other/d:1"]  # then those without, newest first
    assert refs(sort="-bleu", limit=1) == ["acme/c:1"]
    assert refs(where="accuracy>=0.8 and rank<=8", sort="-bleu") == ["acme/a:1"]
    assert refs(where="bleu>=5", sort="accuracy") == ["acme/c:1", "acme/a:1"]
    assert refs(where="bleu>=5") == ["acme/c:1", "acme/a:1"]
    assert refs(sort="-size", limit=1) == [max(hub.list_versions(ListQuery()), key=lambda v: v.facts.size_bytes).ref]
    listed = hub.list_versions(ListQuery())
    assert all(v.layout is None for v in listed)


def test_list_latest_only(hub: Hub, tmp_path: Path) -> None:
    hub.push(write_adapter(tmp_path / "a1", seed=1), "acme/a", metrics={"accuracy": 0.9})
    hub.push(write_adapter(tmp_path / "a2", seed=2), "acme/a", metrics={"accuracy": 0.1})
    hub.push(write_adapter(tmp_path / "b1", seed=3), "acme/b", metrics={"accuracy": 0.5})
    refs = [v.ref for v in hub.list_versions(ListQuery(latest_only=True, sort="-accuracy"))]
    assert refs == ["acme/b:1", "acme/a:2"]


def test_list_rejects_bad_limits(hub: Hub) -> None:
    with pytest.raises(InvalidArgumentError):
        hub.list_versions(ListQuery(limit=0))
    with pytest.raises(InvalidArgumentError, match="sorted on"):
        hub.list_versions(ListQuery(where="created>1"))


def test_gc_removes_only_unreferenced_blobs(hub: Hub, tmp_path: Path) -> None:
    a = write_adapter(tmp_path / "a", seed=1)
    b = write_adapter(tmp_path / "b", seed=2)
    hub.push(a, "acme/x")
    hub.push(b, "acme/x")
    hub.push(a, "acme/y")  # shares every blob of acme/x:1
    before = blob_count(hub)
    assert hub.gc().blobs_removed == 0
    hub.remove("acme/x:1")
    assert hub.gc().blobs_removed == 0  # acme/y:1 still holds them
    hub.remove("acme/x:2")
    dry = hub.gc(dry_run=True)
    assert dry.blobs_removed == 1 and blob_count(hub) == before  # only the weights of b differ
    report = hub.gc()
    assert report.blobs_removed == 1 and report.bytes_freed > 0
    assert blob_count(hub) == before - 1
    hub.pull("acme/y:1", tmp_path / "out")
    assert tree_bytes(tmp_path / "out") == tree_bytes(a)


def test_upgrade_db_is_idempotent(hub: Hub) -> None:
    first = hub.upgrade_db()
    assert first.revision == HEAD_REVISION and hub.upgrade_db() == first
    assert "://" in first.database and "password" not in first.database


def test_hub_and_hubapi_list_the_same_methods_with_the_same_signatures() -> None:
    """HubAPI states the surface a remote client must implement: it must be the Hub's, exactly."""
    import inspect

    from lora_hub.api import HubAPI

    def public(cls: type) -> dict[str, inspect.Signature]:
        names = [n for n, v in vars(cls).items() if callable(v) and (not n.startswith("_") or n in ("__enter__",))]
        return {n: inspect.signature(getattr(cls, n)) for n in names}

    hub, api = public(Hub), public(HubAPI)
    assert set(hub) == set(api)
    for name in hub:
        assert [p.replace(annotation=inspect.Parameter.empty) for p in hub[name].parameters.values()] == [
            p.replace(annotation=inspect.Parameter.empty) for p in api[name].parameters.values()
        ], name


def test_open_hub_picks_the_remote_client_for_a_server_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lora_hub import open_hub
    from lora_hub.remote import RemoteHub
    from lora_hub.settings import Settings

    monkeypatch.setenv("LORAHUB_HOME", str(tmp_path / "home"))
    with open_hub() as hub:
        assert isinstance(hub, Hub)
    monkeypatch.setenv("LORAHUB_URL", "http://127.0.0.1:9")
    with open_hub(Settings.from_env()) as remote:
        assert isinstance(remote, RemoteHub) and remote.url == "http://127.0.0.1:9"
