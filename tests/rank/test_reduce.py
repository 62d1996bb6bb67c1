"""``Hub.reduce``: the reduced adapter's updates against the input's, in float64, with the
Eckart-Young bound and the energy ranks computed here from ``torch.linalg.svd``; PEFT loads the
result; the lineage and the base are recorded; bad input pushes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lora_hub import Hub
from lora_hub.errors import DestinationExistsError, InvalidArgumentError, LoraHubError, NotFoundError
from lora_hub.formats.peft import read_adapter_dir
from lora_hub.rank.reduce import reduce_adapter
from tests.helpers import adapter_config, listing, write_adapter
from tests.rank.conftest import Adapters
from tests.rank.models import adapter_updates, eckart_young, model_tensors, peft_model, rank_keeping, read_all


def pulled(hub: Hub, ref: str, tmp_path: Path) -> Path:
    out = tmp_path / ref.replace("/", "_").replace(":", "_")
    hub.pull(ref, out)
    return out


def assert_absent(hub: Hub, name: str) -> None:
    with pytest.raises(NotFoundError):
        hub.show(name)


def stored_ranks(folder: Path) -> dict[str, int]:
    """Each module's rank, from the shape of its stored A."""
    out = {}
    for key, t in read_all(folder / "adapter_model.safetensors").items():
        for part in (".lora_A.weight", ".lora_embedding_A"):
            if key.endswith(part):
                out[key.removeprefix("base_model.model.").removesuffix(part)] = t.shape[0]
    return out


@pytest.mark.parametrize("which", ["plain", "rslora", "embedding"])
def test_rank_cut_error_is_the_eckart_young_bound(hub: Hub, adapters: Adapters, tmp_path: Path, which: str) -> None:
    folder = getattr(adapters, which)
    hub.push(folder, "acme/in")
    result = hub.reduce("acme/in", "acme/out", rank=3)
    before, after = adapter_updates(folder), adapter_updates(pulled(hub, "acme/out:1", tmp_path))
    assert set(after) == set(before)
    for path, d in before.items():
        bound = eckart_young(d, 3)
        measured = float((d - after[path]).norm() / d.norm())
        assert measured == pytest.approx(bound, rel=1e-5, abs=1e-6), path
        assert result.errors[path] == pytest.approx(measured, rel=1e-6, abs=1e-7)
        assert result.bounds[path] == pytest.approx(bound, rel=1e-9, abs=1e-12)
        assert result.ranks[path] == 3 and result.ranks_before[path] == stored_ranks(folder)[path]
    assert result.max_error == max(result.errors.values())


def test_rank_at_or_above_r_is_lossless(hub: Hub, adapters: Adapters, tmp_path: Path) -> None:
    hub.push(adapters.rslora, "acme/in")
    result = hub.reduce("acme/in", "acme/same", rank=8)
    before, after = adapter_updates(adapters.rslora), adapter_updates(pulled(hub, "acme/same:1", tmp_path))
    for path, d in before.items():
        torch.testing.assert_close(after[path], d, rtol=1e-14, atol=0)
    assert result.max_error <= 1e-14
    original = read_all(adapters.rslora / "adapter_model.safetensors")
    reduced = read_all(pulled(hub, "acme/same:1", tmp_path / "again") / "adapter_model.safetensors")
    assert all(torch.equal(reduced[k], original[k]) for k in original)  # the same factors, bit for bit


def test_energy_keeps_the_smallest_rank_per_module_and_peft_loads_it(
    hub: Hub, adapters: Adapters, tmp_path: Path
) -> None:
    hub.base_add(adapters.base, "tiny")
    hub.push(adapters.plain, "acme/in", base="tiny")
    result = hub.reduce("acme/in", "acme/e80", energy=0.8)
    before = adapter_updates(adapters.plain)
    folder = pulled(hub, "acme/e80:1", tmp_path)
    after = adapter_updates(folder)
    for path, d in before.items():
        k = rank_keeping(d, 0.8)
        assert result.ranks[path] == k
        assert float((d - after[path]).norm() / d.norm()) == pytest.approx(eckart_young(d, k), rel=1e-5, abs=1e-6)
        assert eckart_young(d, k) ** 2 <= 0.2 + 1e-12
    assert len(set(result.ranks.values())) > 1  # a real rank_pattern
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["use_rslora"] is False and config["rank_pattern"]

    # PEFT, on its own, merges the reduced adapter into W + dW' for every module.
    merged = peft_model(adapters.base, folder).merge_and_unload().state_dict()
    weights = model_tensors(adapters.base)
    for path, d in after.items():
        torch.testing.assert_close(merged[path + ".weight"].double(), weights[path + ".weight"].double() + d,
                                   rtol=0, atol=1e-5)  # fmt: skip

    version = hub.show("acme/e80:1")
    assert version.base == "tiny" and version.base_fingerprint == hub.show("acme/in:1").base_fingerprint
    assert hub.validate("acme/e80", "tiny").verdict == "exact"
    lineage = version.lineage or {}
    assert lineage["kind"] == "reduce" and lineage["params"]["energy"] == 0.8 and lineage["params"]["rank"] is None
    assert lineage["inputs"] == [{"ref": "acme/in:1", "digest": hub.show("acme/in:1").digest}]
    assert lineage["errors"] == pytest.approx(result.errors)
    assert result.params_before == sum(8 * sum(d.shape) for d in before.values())
    assert result.params_after == sum(result.ranks[p] * sum(d.shape) for p, d in before.items())


def test_saved_tensors_are_carried_over(adapters: Adapters) -> None:
    a = read_adapter_dir(adapters.embedding)
    assert a.layout.saved_tensors  # PEFT saved the embedding's base layer
    reduced = reduce_adapter("e", str(a.files["adapter_model.safetensors"]), a.facts, a.layout, rank=2)
    original = read_all(adapters.embedding / "adapter_model.safetensors")
    for st in a.layout.saved_tensors:
        assert torch.equal(reduced.tensors[st.file_key], original[st.file_key])


def test_conv_factors_keep_their_kernel_shape(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    tensors = {
        "base_model.model.conv.lora_A.weight": torch.randn(4, 3, 2, 2, generator=gen).numpy(),
        "base_model.model.conv.lora_B.weight": torch.randn(5, 4, 1, 1, generator=gen).numpy(),
    }
    folder = write_adapter(tmp_path / "c", tensors=tensors, config=adapter_config(r=4, target_modules=["conv"]))
    a = read_adapter_dir(folder)
    reduced = reduce_adapter("c", str(a.files["adapter_model.safetensors"]), a.facts, a.layout, rank=2)
    assert list(reduced.tensors["base_model.model.conv.lora_A.weight"].shape) == [2, 3, 2, 2]
    assert list(reduced.tensors["base_model.model.conv.lora_B.weight"].shape) == [5, 2, 1, 1]
    (d,) = adapter_updates(folder).values()
    assert reduced.errors["conv"] == pytest.approx(eckart_young(d, 2), rel=1e-5)


BAD_ARGUMENTS = [
    ({"rank": 4, "energy": 0.9}, "not both"),
    ({}, "--rank K or --energy E"),
    ({"rank": 0}, "at least 1"),
    ({"energy": 0.0}, "(0, 1]"),
    ({"energy": 1.5}, "(0, 1]"),
    ({"rank": 4, "dtype": "int8"}, "unknown dtype"),
]


def test_bad_arguments_push_nothing(hub: Hub, adapters: Adapters) -> None:
    hub.push(adapters.plain, "acme/in")
    for kwargs, message in BAD_ARGUMENTS:
        with pytest.raises(InvalidArgumentError) as info:
            hub.reduce("acme/in", "acme/bad", **kwargs)
        assert message in info.value.message, kwargs
    assert_absent(hub, "acme/bad")


def test_dora_unknown_refs_and_a_taken_output_are_refused(hub: Hub, adapters: Adapters, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="DoRA"):
        hub.reduce(str(adapters.dora), "acme/bad", rank=2)
    with pytest.raises(LoraHubError):
        hub.reduce("acme/missing:1", "acme/bad", rank=2)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("x")
    with pytest.raises(DestinationExistsError):
        hub.reduce(str(adapters.plain), "acme/bad", rank=2, output=taken)
    assert_absent(hub, "acme/bad")


def test_output_keeps_the_folder_and_a_failed_push_leaves_none(
    hub: Hub, adapters: Adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "kept"
    hub.reduce(str(adapters.plain), "acme/kept", rank=2, output=out)
    assert listing(out) == ["adapter_config.json", "adapter_model.safetensors"]

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the push broke")

    monkeypatch.setattr("lora_hub.core.adapters.push", broken)
    with pytest.raises(RuntimeError):
        hub.reduce(str(adapters.plain), "acme/lost", rank=2, output=tmp_path / "lost")
    assert not (tmp_path / "lost").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".lost")] == []
