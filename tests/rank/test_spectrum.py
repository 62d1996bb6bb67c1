"""``lora_hub.rank.spectrum`` and ``Hub.analyze``: every number against ``torch.linalg.svd`` of the dense
update ``s * B @ A`` in float64, built in the test from the stored tensors and config, and the
formulas written out here."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lora_hub import Hub
from lora_hub.errors import IncompatibleError, InvalidArgumentError
from lora_hub.formats.peft import read_adapter_dir
from lora_hub.rank.spectrum import analyze_adapter
from tests.helpers import adapter_config, adapter_tensors, write_adapter
from tests.rank.conftest import Adapters
from tests.rank.models import adapter_updates, model_tensors

ENERGIES = (0.5, 0.9, 0.99, 1.0)


def analyze_folder(folder: Path, base: Path | None = None, energies: tuple[float, ...] = ENERGIES):
    from lora_hub.formats.hf import read_model_dir

    a = read_adapter_dir(folder)
    return analyze_adapter(
        str(folder),
        "sha256:x",
        str(a.files["adapter_model.safetensors"]),
        a.layout,
        energies=energies,
        base=read_model_dir(base) if base else None,
        base_label=str(base) if base else None,
    )


def expected(d: torch.Tensor, energies: tuple[float, ...]) -> dict[str, object]:
    """The spectrum's numbers by their definitions, from the float64 SVD of the dense update."""
    s = torch.linalg.svdvals(d.double())
    s = s[: min(d.shape)]
    sq = s**2
    kept = torch.cumsum(sq, 0) / sq.sum()
    p = s / s.sum()
    p = p[p > 0]
    return {
        "s": s,
        "energy": kept,
        "rank_for": {f"{e:g}": int((kept < e - 1e-12).sum()) + 1 for e in energies},
        "effective_rank": math.exp(float(-(p * p.log()).sum())),
        "stable_rank": float(sq.sum() / sq[0]),
        "norm": float(d.norm()),
    }


@pytest.mark.parametrize("which", ["plain", "rslora", "embedding", "dora"])
def test_spectra_match_the_svd_of_the_dense_update(adapters: Adapters, which: str) -> None:
    folder = getattr(adapters, which)
    result = analyze_folder(folder)
    updates = adapter_updates(folder)
    assert {m.path for m in result.modules} == set(updates)
    for m in result.modules:
        ref = expected(updates[m.path], ENERGIES)
        got = torch.tensor(m.singular_values, dtype=torch.float64)
        n = len(got)
        assert n == min(m.rank, *updates[m.path].shape)
        torch.testing.assert_close(got, ref["s"][:n], rtol=1e-10, atol=1e-12 * float(ref["s"][0]))
        torch.testing.assert_close(
            torch.tensor(m.energy[:n], dtype=torch.float64), ref["energy"][:n], rtol=0, atol=1e-12
        )
        assert m.rank_for == ref["rank_for"]
        assert m.effective_rank == pytest.approx(ref["effective_rank"], rel=1e-9)
        assert m.stable_rank == pytest.approx(ref["stable_rank"], rel=1e-9)
        assert m.norm == pytest.approx(ref["norm"], rel=1e-10)
        assert m.relative_norm is None
    if which == "rslora":
        v = next(m for m in result.modules if m.path.endswith("v_proj"))
        assert (v.rank, v.scale) == (4, pytest.approx(6 / 2))  # alpha_pattern 6 / sqrt(rank_pattern 4)


def test_relative_norm_against_the_base_weights(adapters: Adapters) -> None:
    result = analyze_folder(adapters.embedding, base=adapters.base)
    updates = adapter_updates(adapters.embedding)
    weights = model_tensors(adapters.base)
    for m in result.modules:
        w = weights[m.path + ".weight"].double()
        assert m.relative_norm == pytest.approx(float(updates[m.path].norm() / w.norm()), rel=1e-9)


def test_suggestions_are_the_largest_needed_rank_and_the_per_module_ranks(adapters: Adapters) -> None:
    result = analyze_folder(adapters.rslora, energies=(0.8, 0.95))
    sizes = {m.path: m.shape[0] + m.shape[1] for m in result.modules}
    assert result.params == sum(m.rank * sizes[m.path] for m in result.modules)
    assert result.bytes == 4 * result.params  # float32
    for s in result.suggestions:
        pattern = {m.path: m.rank_for[f"{s.energy:g}"] for m in result.modules}
        assert s.rank_pattern == pattern
        assert s.uniform_rank == max(pattern.values())
        assert s.uniform_params == sum(min(s.uniform_rank, m.rank) * sizes[m.path] for m in result.modules)
        assert s.pattern_params == sum(k * sizes[p] for p, k in pattern.items())
        assert s.pattern_bytes == 4 * s.pattern_params


def test_a_planted_spectrum_and_a_zero_update(tmp_path: Path) -> None:
    """A rank-2 update stored at rank 4 (a zero direction), and a module whose B is zero."""
    tensors = adapter_tensors(rank=4, seed=0)
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    tensors[f"{q}.lora_B.weight"][:, 2:] = 0  # rank 2 only
    zero = "base_model.model.model.layers.1.self_attn.v_proj"
    tensors[f"{zero}.lora_B.weight"][:] = 0
    folder = write_adapter(tmp_path / "a", tensors=tensors, config=adapter_config(r=4))
    result = {m.path: m for m in analyze_folder(folder).modules}
    planted = result["model.layers.0.self_attn.q_proj"]
    assert planted.rank_for["1"] == 2 and planted.energy[1] == pytest.approx(1.0, abs=1e-12)
    assert max(planted.singular_values[2:]) <= 1e-12 * planted.singular_values[0]
    z = result["model.layers.1.self_attn.v_proj"]
    assert max(z.singular_values) == 0.0
    assert (z.rank_for["0.9"], z.effective_rank, z.stable_rank, z.norm) == (0, 0.0, 0.0, 0.0)


def test_conv_kernels_are_flattened(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = "base_model.model.conv"
    tensors = {
        f"{path}.lora_A.weight": rng.standard_normal((3, 4, 2, 2)).astype(np.float32),
        f"{path}.lora_B.weight": rng.standard_normal((5, 3, 1, 1)).astype(np.float32),
    }
    folder = write_adapter(
        tmp_path / "c", tensors=tensors, config=adapter_config(r=3, lora_alpha=6, target_modules=["conv"])
    )
    (m,) = analyze_folder(folder).modules
    d = (
        2.0
        * tensors[f"{path}.lora_B.weight"].reshape(5, 3).astype(np.float64)
        @ tensors[f"{path}.lora_A.weight"].reshape(3, 16).astype(np.float64)
    )
    np.testing.assert_allclose(m.singular_values, np.linalg.svd(d, compute_uv=False)[:3], rtol=1e-10)
    assert m.shape == [5, 16]


@pytest.mark.parametrize("energies", [(0.0,), (1.5,), (), (float("nan"),)])
def test_energy_targets_outside_zero_one_are_refused(adapters: Adapters, energies: tuple[float, ...]) -> None:
    with pytest.raises(InvalidArgumentError):
        analyze_folder(adapters.plain, energies=energies)


def test_hub_analyze_by_reference_with_a_registered_base(hub: Hub, adapters: Adapters) -> None:
    hub.base_add(adapters.base, "tiny")
    hub.push(adapters.rslora, "acme/rs", base="tiny")
    result = hub.analyze("acme/rs:1", base="tiny", energies=[0.9])
    assert result.adapter == "acme/rs:1" and result.base == "tiny"
    assert result.digest == hub.show("acme/rs:1").digest
    direct = analyze_folder(adapters.rslora, base=adapters.base, energies=(0.9,))
    assert [m.model_dump() for m in result.modules] == [m.model_dump() for m in direct.modules]


def test_hub_analyze_notes_dora_and_refuses_an_incompatible_base(hub: Hub, adapters: Adapters, tmp_path: Path) -> None:
    result = hub.analyze(str(adapters.dora))
    assert any("DoRA" in n and "LoRA part" in n for n in result.notes)
    wrong = write_adapter(
        tmp_path / "wrong",
        tensors=adapter_tensors({"nope.q_proj": (32, 32)}, rank=4),
        config=adapter_config(target_modules=["q_proj"]),
    )
    with pytest.raises(IncompatibleError):
        hub.analyze(str(wrong), base=str(adapters.base))


def test_plot_writes_a_png_and_without_matplotlib_says_what_to_install(
    adapters: Adapters, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the optional 'rank' extra")
    from lora_hub.rank.plot import plot_spectra

    result = analyze_folder(adapters.plain)
    out = plot_spectra(result, tmp_path / "s.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(InvalidArgumentError) as info:
        plot_spectra(result, tmp_path / "t.png")
    assert "pip install 'lora-hub[rank]'" in (info.value.hint or "")
    assert not (tmp_path / "t.png").exists()
