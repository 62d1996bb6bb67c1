"""Properties of the merge engine: the output folder, dtype conversion, recording and reuse,
safety (refusals, crashes), verification, and streaming in row blocks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from lora_hub import Hub
from lora_hub.errors import (
    ConflictError,
    DestinationExistsError,
    IncompatibleError,
    InvalidArgumentError,
    MergeError,
    StoreError,
)
from lora_hub.formats.hf import read_model_dir
from lora_hub.formats.peft import read_adapter_dir
from lora_hub.merge import execute as ex
from lora_hub.merge.plan import AdapterInput, MergePlan, plan_merge
from lora_hub.types import BaseModelInfo
from tests.helpers import kill, run_until_hang, tree_bytes
from tests.merge.models import (
    LlamaForCausalLM,
    Zoo,
    delta64,
    forward,
    input_ids,
    load_folder,
    lora_modules,
    shard_metadata,
)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PARTIAL = ".lorahub-partial-"


def partials(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if PARTIAL in p.name]


def weights(folder: Path) -> dict[str, bytes]:
    """The shards and the index, byte for byte."""
    return {k: v for k, v in tree_bytes(folder).items() if k.startswith("model")}


def load_shard(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


@pytest.fixture
def base_with_extras(zoo: Zoo, tmp_path: Path) -> Path:
    """The tiny Llama plus the non-weight files a real model folder has."""
    folder = tmp_path / "base"
    shutil.copytree(zoo.base("llama"), folder)
    (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
    (folder / "special_tokens_map.json").write_text("{}\n")
    (folder / "extra").mkdir()
    (folder / "extra" / "notes.txt").write_text("not a weight\n")
    return folder


def find_merge(hub: Hub, recipe_digest: str) -> Any:
    """The catalog's merge record of a recipe, if any (``catalog.merges.find``, or ``find_merge``
    before the catalog was split into repositories)."""
    return hub.merge_record(recipe_digest)


def forbid_execute(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the merge was recomputed")

    monkeypatch.setattr(ex, "execute", boom)


def count_execute(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Calls of the executor, by recipe digest (the executor still runs)."""
    calls: list[str] = []
    original = ex.execute

    def spy(plan: MergePlan, *args: Any, **kwargs: Any) -> Any:
        calls.append(plan.recipe_digest)
        return original(plan, *args, **kwargs)

    monkeypatch.setattr(ex, "execute", spy)
    return calls


# --- the output folder ---------------------------------------------------------------------------


@pytest.mark.parametrize("shard_size", ["50kB", "10kB"])  # 10kB: the 16 kB embeddings get shards of their own
def test_sharded_output_is_an_hf_folder(
    sqlite_hub: Hub, zoo: Zoo, base_with_extras: Path, tmp_path: Path, shard_size: str
) -> None:
    adapter = zoo.adapter("llama-all-linear")
    limit = int(shard_size.removesuffix("kB")) * 1000
    result = sqlite_hub.merge(base_with_extras, [str(adapter)], tmp_path / "out", shard_size=shard_size)
    out = tmp_path / "out"
    digest = result.record.recipe_digest
    assert result.path == str(out) and not result.reused

    # the model's side files are copied as they are; other subfolders are not the model's
    for rel in ("config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json"):
        assert (out / rel).read_bytes() == (base_with_extras / rel).read_bytes(), rel
    assert not (out / "extra").exists()
    assert json.loads((out / "lorahub_merge.json").read_text())["recipe_digest"] == digest

    # shards named as Hugging Face names them, and an index that covers every tensor
    shards = sorted(p.name for p in out.glob("*.safetensors"))
    n = len(shards)
    assert n >= 2
    assert shards == [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    index = json.loads((out / "model.safetensors.index.json").read_text())
    base = load_folder(base_with_extras)
    assert set(index["weight_map"]) == set(base)
    assert set(index["weight_map"].values()) == set(shards)
    assert index["metadata"]["lorahub_recipe"] == digest
    total = 0
    for shard in shards:
        meta = shard_metadata(out / shard)
        assert meta.get("format") == "pt" and meta.get("lorahub_recipe") == digest, shard
        held = load_shard(out / shard)
        assert {k for k, s in index["weight_map"].items() if s == shard} == set(held)
        size = sum(t.numel() * t.element_size() for t in held.values())
        assert size <= limit or len(held) == 1
        total += size
    assert index["metadata"]["total_size"] == total == result.bytes_written
    assert result.tensors_merged == 14 and result.tensors_merged + result.tensors_copied == len(base)

    # transformers opens it, and it holds the same model as an unsharded merge
    sqlite_hub.merge(base_with_extras, [str(adapter)], tmp_path / "single")
    assert sorted(p.name for p in (tmp_path / "single").glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "single" / "model.safetensors.index.json").exists()
    single = load_folder(tmp_path / "single")
    assert set(single) == set(base)
    assert all(torch.equal(single[k], v) for k, v in load_folder(out).items())
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in single.items())
    ids = input_ids()
    assert torch.equal(forward(model, ids), forward(LlamaForCausalLM.from_pretrained(tmp_path / "single"), ids))


def test_bfloat16_output_of_a_float32_base(sqlite_hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    f32 = sqlite_hub.merge(base_dir, [str(adapter)], tmp_path / "f32")
    bf16 = sqlite_hub.merge(base_dir, [str(adapter)], tmp_path / "bf16", dtype="bfloat16")
    assert bf16.record.recipe_digest != f32.record.recipe_digest and not bf16.reused
    assert bf16.record.report.passed and bf16.record.report.verified_tensors == 14
    ours, ref, base = load_folder(tmp_path / "bf16"), load_folder(tmp_path / "f32"), load_folder(base_dir)
    assert set(ours) == set(base)
    for key, value in ours.items():
        assert value.dtype == torch.bfloat16, key
        # one rounding of the float32 result: bit for bit what rounding the float32 merge gives
        assert torch.equal(value, ref[key].to(torch.bfloat16)), key
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"
    model = LlamaForCausalLM.from_pretrained(tmp_path / "bf16")
    assert model.dtype == torch.bfloat16
    assert bf16.bytes_written == f32.bytes_written // 2


# --- recording and reuse -------------------------------------------------------------------------


def test_same_recipe_elsewhere_is_copied_from_the_catalog(
    hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    first = hub.merge(base_dir, [str(adapter)], tmp_path / "out1")
    assert not first.reused and find_merge(hub, first.record.recipe_digest) is not None
    forbid_execute(monkeypatch)
    again = hub.merge(base_dir, [str(adapter)], tmp_path / "out2")
    assert again.reused and again.path == str(tmp_path / "out2")
    assert again.record.recipe_digest == first.record.recipe_digest
    assert tree_bytes(tmp_path / "out2") == tree_bytes(tmp_path / "out1")
    assert partials(tmp_path) == []
    # the same content by other names is the same recipe: a registered base, a pushed adapter
    hub.base_add(base_dir, "tiny/llama")
    hub.push(adapter, "acme/all")
    by_name = hub.merge("tiny/llama", ["acme/all"], tmp_path / "out3")
    assert by_name.reused and by_name.record.recipe_digest == first.record.recipe_digest
    assert tree_bytes(tmp_path / "out3") == tree_bytes(tmp_path / "out1")


def test_same_recipe_into_the_same_output_is_served_from_the_catalog(
    hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Running the same merge command twice: the second time it is served from the catalog
    (``Hub.merge``: "The same recipe again is served from the catalog (copied, if output is
    elsewhere)")."""
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    first = hub.merge(base_dir, [str(adapter)], tmp_path / "out")
    before = tree_bytes(tmp_path / "out")
    forbid_execute(monkeypatch)
    again = hub.merge(base_dir, [str(adapter)], tmp_path / "out")
    assert again.reused and again.record.recipe_digest == first.record.recipe_digest
    assert tree_bytes(tmp_path / "out") == before


def test_recompute_recomputes(hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    first = hub.merge(base_dir, [str(adapter)], tmp_path / "out")
    before = weights(tmp_path / "out")
    calls = count_execute(monkeypatch)
    with pytest.raises(DestinationExistsError, match="--force"):  # recomputing is not replacing
        hub.merge(base_dir, [str(adapter)], tmp_path / "out", recompute=True)
    assert calls == []
    again = hub.merge(base_dir, [str(adapter)], tmp_path / "out", recompute=True, force=True)
    assert calls == [first.record.recipe_digest] and not again.reused
    assert again.tensors_merged == 14
    assert weights(tmp_path / "out") == before  # deterministic
    elsewhere = hub.merge(base_dir, [str(adapter)], tmp_path / "other", recompute=True)
    assert not elsewhere.reused and len(calls) == 2
    assert weights(tmp_path / "other") == before


def test_name_registers_the_output_as_a_base_with_lineage(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    pushed = hub.push(adapter, "acme/all").version
    result = hub.merge(base_dir, ["acme/all@0.5"], tmp_path / "out", name="acme/merged")
    assert result.record.name == "acme/merged"
    info = hub.show_any("acme/merged")
    assert isinstance(info, BaseModelInfo)
    assert info.name == "acme/merged" and info.path == str(tmp_path / "out")
    assert info.content_fingerprint == result.record.content_fingerprint
    lineage = info.lineage
    assert lineage is not None
    assert lineage["recipe_digest"] == result.record.recipe_digest
    recipe = lineage["recipe"]
    assert recipe["adapters"] == [{"ref": "acme/all:1", "digest": pushed.digest, "weight": 0.5}]
    assert recipe["method"] == "linear" and recipe["dtype"] == "auto"
    assert recipe["base_fingerprint"] == hub.validate(str(adapter), base_dir).base_fingerprint
    assert {"lora_hub", "torch", "safetensors", "python"} <= set(lineage["versions"])
    assert lineage["versions"]["torch"] == torch.__version__
    report = lineage["report"]
    assert report["passed"] is True and report["verified_tensors"] == 14
    assert report["errors"] == result.record.report.errors
    assert [b.name for b in hub.base_list()] == ["acme/merged"]
    assert find_merge(hub, result.record.recipe_digest).name == "acme/merged"  # type: ignore[union-attr]

    # the registered merge is a base like any other: merge onto it by name
    onto = hub.merge("acme/merged", [str(adapter)], tmp_path / "twice")
    assert onto.record.recipe["base_fingerprint"] == info.content_fingerprint

    # served again under another name, into another folder: registered too
    other = hub.merge(base_dir, ["acme/all@0.5"], tmp_path / "copy", name="acme/merged-copy")
    assert other.reused
    copy = hub.show_any("acme/merged-copy")
    assert isinstance(copy, BaseModelInfo) and copy.lineage is not None
    assert copy.lineage["recipe_digest"] == result.record.recipe_digest
    assert copy.path == str(tmp_path / "copy")


def test_reuse_with_a_name_registers_it_again_after_base_rm(hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    """``lorahub base rm NAME`` then the same merge ``--name NAME``: served from the catalog, and
    registered again (not just reported as registered)."""
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    hub.merge(base_dir, [str(adapter)], tmp_path / "out", name="acme/merged")
    hub.base_remove("acme/merged")
    assert hub.base_list() == []
    again = hub.merge(base_dir, [str(adapter)], tmp_path / "again", name="acme/merged")
    assert again.reused and again.record.name == "acme/merged"
    assert [b.name for b in hub.base_list()] == ["acme/merged"]
    info = hub.show_any("acme/merged")
    assert isinstance(info, BaseModelInfo) and info.lineage is not None
    assert info.lineage["recipe_digest"] == again.record.recipe_digest


def test_name_taken_by_another_base_is_not_claimed(
    hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--name`` naming a base registered with other content is refused, and the catalog must not
    end up saying that this merge is that base: a retry is refused as well, not served from the
    catalog as "registered as base NAME"."""
    hub.base_add(zoo.base("gpt2"), "acme/taken")
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    calls = count_execute(monkeypatch)
    with pytest.raises(ConflictError):
        hub.merge(base_dir, [str(adapter)], tmp_path / "out", name="acme/taken")
    assert calls == []  # refused before any work
    with pytest.raises(ConflictError):
        hub.merge(base_dir, [str(adapter)], tmp_path / "retry", name="acme/taken")
    assert calls == [] and not (tmp_path / "out").exists() and not (tmp_path / "retry").exists()
    assert hub.base_show("acme/taken").model_type == "gpt2"
    # The refused attempts recorded nothing: the same recipe without the name is computed, not
    # served from the catalog, and names no base.
    plain = hub.merge(base_dir, [str(adapter)], tmp_path / "plain")
    assert not plain.reused and calls == [plain.record.recipe_digest]
    assert plain.record.name is None and find_merge(hub, plain.record.recipe_digest).name is None  # type: ignore[union-attr]


# --- safety ----------------------------------------------------------------------------------------


def test_incompatible_adapter_is_refused_before_anything_is_written(sqlite_hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "out"
    with pytest.raises(IncompatibleError) as info:
        sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter("gpt2-conv1d"))], out)
    assert info.value.problems
    assert not out.exists() and not out.parent.exists()
    assert sqlite_hub.base_list() == []


def test_a_disk_too_small_is_refused_before_any_work(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lora_hub.core.common

    forbid_execute(monkeypatch)
    real = shutil.disk_usage
    monkeypatch.setattr(lora_hub.core.common.shutil, "disk_usage", lambda p: real(p)._replace(free=1000))
    out = tmp_path / "out"
    with pytest.raises(StoreError, match=r"not enough free space .* needs [0-9.]+ kB, 1.0 kB are free"):
        sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter("llama-all-linear"))], out)
    assert not out.exists() and partials(tmp_path) == []


def test_non_empty_output_needs_overwrite(sqlite_hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for force in (False, True):  # --force replaces only a folder lora-hub wrote
        with pytest.raises(DestinationExistsError, match="--overwrite"):
            sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter("llama-all-linear"))], out, force=force)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert partials(tmp_path) == []
    result = sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter("llama-all-linear"))], out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not result.reused
    # an empty folder is fine without force
    (tmp_path / "empty").mkdir()
    sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter("llama-rslora"))], tmp_path / "empty")


def test_merge_killed_before_rename_leaves_nothing(tmp_path: Path, zoo: Zoo, lorahub_env: dict[str, str]) -> None:
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    args = ["merge", "--base", str(base_dir), str(adapter), "-o", str(out), "--name", "acme/merged", "--device", "cpu"]
    proc = run_until_hang(args, lorahub_env, "merge.before_rename", tmp_path / "parked")
    kill(proc)

    assert not out.exists()
    [partial] = partials(work)
    digest = shard_metadata(partial / "model.safetensors")["lorahub_recipe"]
    with Hub() as hub:
        assert find_merge(hub, digest) is None
        assert hub.base_list() == []

        result = hub.merge(base_dir, [str(adapter)], out, name="acme/merged")
        assert not result.reused and result.record.recipe_digest == digest
        assert partials(work) == []  # the dead merge's folder is cleaned up
        assert [b.name for b in hub.base_list()] == ["acme/merged"]
        assert find_merge(hub, digest) is not None


# --- verification ---------------------------------------------------------------------------------


def test_wrong_result_fails_verification_and_nothing_is_kept(
    hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ex._factors

    def wrong(files: Any, ops: Any) -> tuple[torch.Tensor, torch.Tensor]:
        left, right = real(files, ops)
        return left * 1.5, right

    monkeypatch.setattr(ex, "_factors", wrong)
    calls = count_execute(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(MergeError, match="verification failed for model") as info:
        hub.merge(zoo.base("llama"), [str(zoo.adapter("llama-all-linear"))], out, name="acme/merged")
    assert "times its rounding bound" in info.value.message
    assert not out.exists() and partials(tmp_path) == []
    assert len(calls) == 1 and find_merge(hub, calls[0]) is None
    assert hub.base_list() == []


def test_report_has_an_error_within_tolerance_per_changed_tensor(sqlite_hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    """The reported errors against the real ones, recomputed here: in bfloat16 the one rounding
    dominates every entry's bound (``u |exact|`` plus float32 units), so the reported worst error
    of a tensor, a fraction of the bound over the entries the check compared, is at most the
    largest ``|out - exact| / (2^-8 |exact|)`` over the whole tensor, and, over the hundreds of
    entries compared, close to it (bfloat16 rounding errors spread over nearly all of [0, 1) of
    that ratio). A check that compared nothing, or a probe reporting 0, fails this."""
    base_dir, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    result = sqlite_hub.merge(base_dir, [str(adapter)], tmp_path / "out", dtype="bfloat16")
    report = result.record.report
    base, ours = load_folder(base_dir), load_folder(tmp_path / "out")
    config = json.loads((adapter / "adapter_config.json").read_text())
    changed = set(lora_modules(adapter))
    assert len(changed) == 14
    assert set(report.errors) == set(report.tolerances) == set(report.checks) == {m + ".weight" for m in changed}
    assert report.verified_tensors == 14 and report.passed and report.not_verified == []
    assert report.error_kind == "fraction_of_bound"
    for module in changed:
        key = module + ".weight"
        exact = base[key].double() + delta64(
            adapter, module, scale=config["lora_alpha"] / config["r"], transposed=False
        )
        real = float(((ours[key].double() - exact).abs() / (2.0**-8 * exact.abs())).max())
        rows, cols = exact.shape
        assert report.checks[key] == ["probe", "rows"] and report.tolerances[key] == 1.0
        assert (
            report.rows_checked[key] == min(8, rows) and report.entries_checked[key] == report.rows_checked[key] * cols
        )
        assert 0.5 < report.errors[key] <= real <= 1.0, key
    assert report.worst_error == max(report.errors.values())
    assert report.errors[report.worst_tensor] == report.worst_error  # type: ignore[index]


def test_every_tensor_a_lora_update_changes_is_verified(sqlite_hub: Hub, zoo: Zoo, tmp_path: Path) -> None:
    """With ``lora_bias=True`` the base's biases change too (``b += s * lora_B.bias``); those are
    changed tensors like the weights and need their entry in the verification report."""
    base_dir = zoo.base("gpt2")
    result = sqlite_hub.merge(base_dir, [str(zoo.adapter("gpt2-lora-bias"))], tmp_path / "out")
    base, ours = load_folder(base_dir), load_folder(tmp_path / "out")
    changed = {k for k in base if not torch.equal(base[k], ours[k])}
    assert len(changed) == 16 and any(k.endswith(".bias") for k in changed)
    assert result.tensors_merged == 16
    assert set(result.record.report.errors) == changed
    assert result.record.report.verified_tensors == result.tensors_merged


# --- streaming ---------------------------------------------------------------------------------------


def _plan(zoo: Zoo, kind: str, variant: str, dtype: str = "auto") -> tuple[MergePlan, Any, list[AdapterInput]]:
    model = read_model_dir(zoo.base(kind))
    folder = read_adapter_dir(zoo.adapter(variant))
    item = AdapterInput(
        label=variant,
        digest="sha256:" + "0" * 64,
        weight=0.8,
        facts=folder.facts,
        layout=folder.layout,
        weights_path=str(folder.files["adapter_model.safetensors"]),
    )
    plan = plan_merge(model, "sha256:" + "1" * 64, [item], dtype=dtype, shard_size=40_000)
    return plan, model, [item]


def test_read_ahead_asks_for_each_base_tensor_once_in_plan_order_within_the_window(
    zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan, model, items = _plan(zoo, "llama", "llama-all-linear")
    asked: list[tuple[str, int, int]] = []
    at_merge: dict[str, int] = {}
    real_fadvise, real_merge = os.posix_fadvise, ex._merge_tensor

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append((os.readlink(f"/proc/self/fd/{fd}"), offset, length))
        real_fadvise(fd, offset, length, advice)

    def merge_tensor(t: Any, *args: Any) -> None:
        at_merge[t.name] = len(asked)
        real_merge(t, *args)

    window, chunk = 3000, 500
    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(ex, "_merge_tensor", merge_tensor)
    monkeypatch.setattr(ex, "READ_AHEAD_BYTES", window)
    monkeypatch.setattr(ex, "READ_AHEAD_CHUNK", chunk)
    out = tmp_path / "out"
    out.mkdir()
    paths, digests = [a.weights_path for a in items], dict.fromkeys(model.tensors, "x")
    ex.execute(plan, model, paths, out, device=torch.device("cpu"), base_digests=digests, adapters=items)
    by_plan = {t.name: t for t in plan.tensors}
    order = [by_plan[n] for names in plan.shards for n in names if by_plan[n].source is not None]
    # Every tensor once, in the order the merge reads them; in pieces of at most ``chunk``, as
    # the kernel reads only so much per call.
    expected: list[tuple[str, int, int]] = []
    tensor_of_piece: list[int] = []
    for k, t in enumerate(order):
        info = model.tensors[t.name][1]
        path = str(Path(model.headers[t.source].path).resolve())
        for at in range(info.start, info.start + info.nbytes, chunk):
            expected.append((path, at, min(chunk, info.start + info.nbytes - at)))
            tensor_of_piece.append(k)
    assert any(info.nbytes > chunk for _, info in model.tensors.values())
    assert asked == expected
    sizes = [model.tensors[t.name][1].nbytes for t in order]
    for name, count in at_merge.items():
        k = next(i for i, t in enumerate(order) if t.name == name)
        asked_tensors = tensor_of_piece[count - 1] + 1
        assert asked_tensors > k  # the tensor itself was asked for before it is read
        assert sum(sizes[k + 1 : asked_tensors]) <= window + max(sizes)  # and not much more than the window ahead


STREAM_CASES = [
    ("llama", "llama-all-linear", "auto"),
    ("gpt2", "gpt2-conv1d", "auto"),
    ("llama", "llama-rslora", "bfloat16"),
]
BLOCKS = (None, 256, 1000, 64)  # default (4 MB: a whole tiny tensor), 1-2 rows, several rows, less than a row


def _execute_with_blocks(
    zoo: Zoo, tmp_path: Path, kind: str, variant: str, dtype: str, on_read: list[tuple[int, int]] | None = None
) -> tuple[MergePlan, dict[int | None, Path]]:
    plan, model, items = _plan(zoo, kind, variant, dtype)
    assert len(plan.shard_files) >= 2
    outs: dict[int | None, Path] = {}
    for block in BLOCKS:
        out = tmp_path / f"block-{block}"
        out.mkdir()
        if on_read is not None:
            on_read.clear()
        stats = ex.execute(
            plan,
            model,
            [a.weights_path for a in items],
            out,
            device=torch.device("cpu"),
            base_digests=dict.fromkeys(model.tensors, "sha256:unused"),
            adapters=items,
            block_bytes=block,
        )
        assert stats.tensors_merged == plan.touched
        assert set(stats.errors) == {t.name for t in plan.tensors if t.ops}
        assert all(stats.errors[k] <= stats.tolerances[k] for k in stats.errors)
        if block == 256 and on_read is not None:
            # row blocks of at most 256 bytes (or one row, where a row is larger): many reads per
            # tensor, never a whole tensor at once
            assert on_read and all(n <= max(256, row) for n, row in on_read)
            assert len(on_read) > 4 * plan.touched
        outs[block] = out
    return plan, outs


@pytest.mark.parametrize(("kind", "variant", "dtype"), STREAM_CASES)
def test_executor_reads_row_blocks_and_gives_the_same_model(
    zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, variant: str, dtype: str
) -> None:
    reads: list[tuple[int, int]] = []
    real_read = ex._view_rows

    def spy(mapped: Any, dtype: torch.dtype, start: int, row_bytes: int, r0: int, r1: int) -> torch.Tensor:
        reads.append(((r1 - r0) * row_bytes, row_bytes))
        return real_read(mapped, dtype, start, row_bytes, r0, r1)

    monkeypatch.setattr(ex, "_view_rows", spy)
    plan, outs = _execute_with_blocks(zoo, tmp_path, kind, variant, dtype, reads)
    ref = load_folder(outs[None])
    assert set(ref) == {t.name for t in plan.tensors}
    for block in BLOCKS[1:]:
        got = load_folder(outs[block])
        assert set(tree_bytes(outs[block])) == set(plan.shard_files) | {"model.safetensors.index.json"}
        assert (outs[block] / "model.safetensors.index.json").read_bytes() == (
            outs[None] / "model.safetensors.index.json"
        ).read_bytes()
        for key, value in got.items():
            assert value.dtype == ref[key].dtype
            # the same values up to float32 rounding of the accumulation (one ulp)
            torch.testing.assert_close(value.float(), ref[key].float(), atol=1e-7, rtol=2.0**-22)


@pytest.mark.parametrize(("kind", "variant", "dtype"), STREAM_CASES)
def test_block_size_does_not_change_a_single_byte(
    zoo: Zoo, tmp_path: Path, kind: str, variant: str, dtype: str
) -> None:
    """The block size is a tuning knob (1 MB on CPU, 64 MB on CUDA), not part of the recipe: the
    same recipe must give byte-identical shards whatever it is (``PLAN_FORMAT``: "bump when the
    same recipe would produce different bytes")."""
    _, outs = _execute_with_blocks(zoo, tmp_path, kind, variant, dtype)
    default = tree_bytes(outs[None])
    for block in BLOCKS[1:]:
        got = tree_bytes(outs[block])
        differ = sorted(
            name
            for name, tensor in load_folder(outs[block]).items()
            if not torch.equal(tensor, load_folder(outs[None])[name])
        )
        assert got == default, f"block_bytes={block}: {len(differ)} tensors differ from the default, e.g. {differ[:3]}"


def test_a_shard_shorter_than_its_tensor_is_a_merge_error(tmp_path: Path) -> None:
    """Rows are read through a mapping; a shard cut short under it must be reported (as pread's
    short read was), not end the process with SIGBUS."""
    shard = tmp_path / "model.safetensors"
    shard.write_bytes(b"\0" * 4096)
    fd = os.open(shard, os.O_RDONLY)
    scratch = ex._Scratch()
    try:
        assert len(scratch.mapping(fd, 4096)) == 4096
        with pytest.raises(MergeError, match="ended early"):
            scratch.mapping(fd, 4096 + 1)
    finally:
        scratch.close()
        os.close(fd)


def test_a_shard_that_fails_to_close_ends_the_merge_with_its_error(
    zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer thread's failure reaches the caller; it used to leave the hasher waiting, and
    the merge with it, forever."""
    from lora_hub.merge.writer import ShardWriter

    def full(self: ShardWriter) -> None:
        self.abort()
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ShardWriter, "close", full)
    plan, model, items = _plan(zoo, "llama", "llama-all-linear")
    out = tmp_path / "out"
    out.mkdir()
    raised: list[BaseException] = []

    def merge() -> None:
        try:
            digests = dict.fromkeys(model.tensors, "x")
            paths = [a.weights_path for a in items]
            ex.execute(plan, model, paths, out, device=torch.device("cpu"), base_digests=digests, adapters=items)
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=merge, daemon=True)
    worker.start()
    worker.join(timeout=120)  # a bound for a broken build only: the merge takes well under a second
    assert not worker.is_alive(), "the merge hangs after a shard failed to close"
    assert len(raised) == 1 and isinstance(raised[0], OSError) and "No space left" in str(raised[0])


def test_an_unknown_device_is_refused_before_any_work(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    forbid_execute(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(InvalidArgumentError, match="unknown device 'gpu'"):
        sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter("llama-all-linear"))], out, device="gpu")
    assert not out.exists() and partials(tmp_path) == []


WATCH_TORCH = """
import importlib.abc, sys
from pathlib import Path
from lora_hub import Hub

base, adapter, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
seen = []

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:  # what the merge has made when torch starts to load
            seen.append(sorted(p.name for d in work.iterdir() if ".lorahub-partial-" in d.name for p in d.iterdir()))
        return None

sys.meta_path.insert(0, Watch())
with Hub(work / "home", database_url=f"sqlite:///{work / 'c.db'}") as hub:
    hub.merge(base, [adapter], work / "out", shard_size="40KB")
print(seen)
"""


def test_the_merge_creates_its_output_shards_before_torch_loads(zoo: Zoo, tmp_path: Path) -> None:
    """The output's pages are warmed (``OutputFiles``) while torch loads, which takes a second
    that would otherwise keep the second core idle: planning must not need torch."""
    base, adapter = zoo.base("llama"), zoo.adapter("llama-all-linear")
    proc = subprocess.run([sys.executable, "-c", WATCH_TORCH, str(base), str(adapter), str(tmp_path)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    [seen] = json.loads(proc.stdout.strip().splitlines()[-1].replace("'", '"'))
    shards = sorted(p.name for p in (tmp_path / "out").glob("model-*.safetensors"))
    assert len(shards) > 1 and set(shards) <= set(seen)
    assert "config.json" in seen


def test_direct_and_buffered_writes_give_the_same_folder(
    zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``LORAHUB_DIRECT_IO=0`` only changes how the bytes reach the disk."""
    base, adapter = zoo.base("llama"), str(zoo.adapter("llama-all-linear"))
    got = {}
    for flag in ("1", "0"):
        monkeypatch.setenv("LORAHUB_DIRECT_IO", flag)
        with Hub(tmp_path / f"home{flag}", database_url=f"sqlite:///{tmp_path / f'c{flag}.db'}") as hub:
            assert hub.settings.direct_io == (flag == "1")
            hub.merge(base, [adapter], tmp_path / f"out{flag}", shard_size="40KB")
        got[flag] = weights(tmp_path / f"out{flag}")
    assert len(got["1"]) > 2 and got["1"] == got["0"]
