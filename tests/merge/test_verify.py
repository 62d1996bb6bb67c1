"""The merge's verification (``lora_hub.merge.verify``) against a wrong engine.

Each mutation test monkeypatches the ENGINE (the plan, the methods registry and functions,
``lora_hub.merge.execute``), never the verifier, so that it writes a wrong update, and shows that
``Hub.merge`` raises ``MergeError`` naming the tensor and the check, and keeps nothing: no output
folder, no hidden partial, no merge record, no base. The correct engine passes for every method
and output dtype, and its report says what was checked; the trim thresholds it reports are
counted here, in float64, from the adapters' stored tensors.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import lora_hub.merge.methods as methods_module
import lora_hub.merge.plan as plan_module
from lora_hub import Hub
from lora_hub.errors import InvalidArgumentError, MergeError
from lora_hub.merge import execute as ex
from lora_hub.merge.methods import METHODS
from lora_hub.merge.plan import MergePlan, TensorPlan
from lora_hub.merge.verify import probe_vector, sample_rows
from lora_hub.types import MergeReport
from tests.merge.models import Zoo, adapter_config, delta64, load_folder, lora_modules

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

PARTIAL = ".lorahub-partial-"
A, B = "llama-all-linear", "llama-rslora"  # r=4, alpha 8; rsLoRA r=8, alpha 4: all 7 projections


def spy_digests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Recipe digests of the merges the executor ran (it still runs)."""
    calls: list[str] = []
    real = ex.execute

    def spy(plan: MergePlan, *args: Any, **kwargs: Any) -> Any:
        calls.append(plan.recipe_digest)
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(ex, "execute", spy)
    return calls


def fails(
    hub: Hub,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    base: Path,
    adapters: list[str],
    check: str | tuple[str, ...],
    **kwargs: Any,
) -> MergeError:
    """The merge (registered as a base) fails with ``MergeError``, its message naming a changed
    tensor and ``check``, and leaves nothing behind."""
    calls = spy_digests(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(MergeError) as info:
        hub.merge(base, adapters, out, name="acme/merged", **kwargs)
    exc = info.value
    message = exc.message
    checks = (check,) if isinstance(check, str) else check
    assert any(f"({c} check)" in message for c in checks), message
    assert message.startswith("verification failed for "), message
    # the input may have changed under the merge; otherwise it is lora-hub's fault
    assert exc.hint is not None and "changed while it was merged" in exc.hint and "please report" in exc.hint
    assert not out.exists() and [p for p in tmp_path.iterdir() if PARTIAL in p.name] == []
    assert len(calls) == 1 and find_merge(hub, calls[0]) is None
    assert hub.base_list() == []
    return exc


def find_merge(hub: Hub, recipe_digest: str) -> Any:
    """The catalog's merge record of a recipe, if any (``catalog.merges.find``, or ``find_merge``
    before the catalog was split into repositories)."""
    return hub.merge_record(recipe_digest)


def change_plan(monkeypatch: pytest.MonkeyPatch, change: Callable[[TensorPlan], TensorPlan]) -> None:
    """The planner's output changed tensor by tensor (the verifier reads the plan's assignments)."""
    real = plan_module.plan_merge

    def planned(*args: Any, **kwargs: Any) -> MergePlan:
        plan = real(*args, **kwargs)
        return plan.model_copy(update={"tensors": [change(t) for t in plan.tensors]})

    monkeypatch.setattr(plan_module, "plan_merge", planned)


def scale_ops(name: str, kind: str, factor: float) -> Callable[[TensorPlan], TensorPlan]:
    def change(t: TensorPlan) -> TensorPlan:
        if t.name != name:
            return t
        ops = [op.model_copy(update={"scale": op.scale * factor}) if op.kind == kind else op for op in t.ops]
        return t.model_copy(update={"ops": ops})

    return change


def replace_method(monkeypatch: pytest.MonkeyPatch, name: str, **changes: Any) -> None:
    monkeypatch.setitem(METHODS, name, dataclasses.replace(METHODS[name], **changes))


Q0 = "model.layers.0.self_attn.q_proj.weight"


# --- a correct engine passes, and the report says what was checked ---------------------------------

CASES = [
    ("linear", {}),
    ("task_arithmetic", {"lambda": 0.7}),
    ("magnitude_prune", {"density": 0.3}),
    ("ties", {"density": 0.5}),
    ("ties", {"density": 0.4, "majority_sign": "count"}),
    ("dare_linear", {"density": 0.5}),
    ("dare_ties", {"density": 0.6, "majority_sign": "count"}),
]
CHECKS = {
    "linear": ["probe", "rows"],
    "task_arithmetic": ["probe", "rows"],
    "magnitude_prune": ["rows", "threshold"],
    "ties": ["rows", "threshold"],
    "dare_linear": ["rows"],
    "dare_ties": ["rows"],
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", ["auto", "float16", "bfloat16"])
@pytest.mark.parametrize(("method", "params"), CASES, ids=[f"{m}-{p}" for m, p in CASES])
def test_a_correct_merge_passes_and_the_report_says_what_was_checked(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, method: str, params: dict[str, Any], dtype: str, seed: int
) -> None:
    weights = [(0.6, 0.4), (1.3, -0.5)][seed]
    params = {**params, "seed": seed} if METHODS[method].random else params
    adapters = [f"{zoo.adapter(A)}@{weights[0]}", f"{zoo.adapter(B)}@{weights[1]}"]
    result = sqlite_hub.merge(zoo.base("llama"), adapters, tmp_path / "out", method=method, params=params, dtype=dtype)
    report = result.record.report
    changed = {m + ".weight" for m in lora_modules(zoo.adapter(A))}
    assert report.passed and report.error_kind == "fraction_of_bound" and report.not_verified == []
    assert set(report.checks) == set(report.errors) == changed and report.verified_tensors == 14
    ours = load_folder(tmp_path / "out")
    for name in changed:
        rows, cols = ours[name].shape
        assert report.checks[name] == CHECKS[method]
        assert 0 <= report.errors[name] <= report.tolerances[name] == 1.0
        assert report.rows_checked[name] == min(8 if "probe" in CHECKS[method] else 32, rows)
        assert report.entries_checked[name] + report.ambiguous[name] == report.rows_checked[name] * cols
        assert report.ambiguous[name] <= 0.01 * rows * cols
    assert report.worst_error == max(report.errors.values()) > 0
    if "threshold" in CHECKS[method]:
        assert set(report.thresholds) == changed
        check_thresholds(zoo, report, params["density"])
    else:
        assert report.thresholds == {}


def check_thresholds(zoo: Zoo, report: MergeReport, density: float) -> None:
    """Each reported cut keeps about the ``round(density * n)`` entries of the float64 delta,
    recomputed here from the stored tensors (``s = alpha / r``; rsLoRA ``alpha / sqrt(r)``)."""
    for i, variant in enumerate((A, B)):
        folder = zoo.adapter(variant)
        cfg = adapter_config(folder)
        scale = cfg["lora_alpha"] / (math.sqrt(cfg["r"]) if cfg.get("use_rslora") else cfg["r"])
        for module in lora_modules(folder):
            d = delta64(folder, module, scale=scale, transposed=False).abs()
            cut = report.thresholds[module + ".weight"][i]
            assert cut is not None and cut > 0
            k = round(density * d.numel())
            assert abs(int((d >= cut).sum()) - k) <= 2, (module, i)


@pytest.mark.parametrize(
    ("kind", "variant", "check"),
    [
        ("llama", "llama-dora", "dora"),
        ("gpt2", "gpt2-dora", "dora"),  # fan_in_fan_out: whole logical rows are stored columns
        ("gpt2", "gpt2-lora-bias", "bias"),
        ("bert", "bert-seq-cls-lora-bias", "bias"),
        ("bert", "bert-seq-cls", "copy"),
        ("llama", "llama-embedding-peft-default-save", "probe"),  # on top of the saved base layer
    ],
)
def test_dora_biases_and_saved_tensors_are_checked(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, kind: str, variant: str, check: str
) -> None:
    base_dir = zoo.base(kind)
    result = sqlite_hub.merge(base_dir, [str(zoo.adapter(variant))], tmp_path / "out", dtype="bfloat16")
    report = result.record.report
    base, ours = load_folder(base_dir), load_folder(tmp_path / "out")
    changed = {k for k in base if not torch.equal(base[k].to(torch.bfloat16), ours[k])}
    assert report.passed and report.not_verified == [] and set(report.checks) == changed
    assert any(check in c for c in report.checks.values())
    for name, checks in report.checks.items():
        if checks in (["bias"], ["copy"]):  # every entry
            assert report.entries_checked[name] == ours[name].numel() and report.rows_checked[name] == 0
        elif checks == ["dora"]:
            logical_rows = ours[name].shape[1 if kind == "gpt2" else 0]
            assert report.rows_checked[name] == min(32, logical_rows)
        else:  # streamed, or held whole on top of a saved base layer
            rows = 32 if variant.endswith("default-save") and "embed" in name else 8
            assert checks == ["probe", "rows"] and report.rows_checked[name] == min(rows, ours[name].shape[0])


def test_old_reports_still_load() -> None:
    """A catalog row written before these checks: its keys only, the new fields at their defaults."""
    old = {"verified_tensors": 1, "worst_error": 1e-8, "worst_tensor": "w", "errors": {"w": 1e-8},
           "tolerances": {"w": 3e-5}, "passed": True}  # fmt: skip
    report = MergeReport.model_validate(old)
    assert report.error_kind == "probe_relative" and report.checks == {} and report.not_verified == []
    assert MergeReport.model_validate_json(report.model_dump_json()) == report


# --- a wrong engine fails, and nothing is kept ------------------------------------------------------


@pytest.mark.parametrize(("factor", "dtype"), [(1 + 2.0**-12, "auto"), (1.05, "bfloat16")])
def test_linear_with_a_wrong_module_scale_in_the_plan_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factor: float, dtype: str
) -> None:
    """The scale a hair off (2^-12 relative, float32 output) is still caught: the bound is a few
    float32 units of each entry's magnitudes."""
    change_plan(monkeypatch, scale_ops(Q0, "factor", factor))
    exc = fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter(A))], ("rows", "probe"),
                dtype=dtype)  # fmt: skip
    assert Q0 in str(exc)


def test_task_arithmetic_with_lambda_applied_twice_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replace_method(monkeypatch, "task_arithmetic", coefficients=lambda w, p: [x * p["lambda"] ** 2 for x in w])
    adapters = [f"{zoo.adapter(A)}@0.6", f"{zoo.adapter(B)}@0.4"]
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), adapters, ("rows", "probe"),
          method="task_arithmetic", params={"lambda": 0.7}, dtype="bfloat16")  # fmt: skip


def test_magnitude_prune_at_a_wrong_density_fails_the_threshold_check(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine trims at another density and reports the cut it used: each entry is consistent
    with that cut, but the cut keeps the wrong number of entries."""
    real = methods_module._trim_threshold
    monkeypatch.setattr(methods_module, "_trim_threshold", lambda d, density: real(d, density * 0.9))
    exc = fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter(A)), str(zoo.adapter(B))],
                "threshold", method="magnitude_prune", params={"density": 0.5})  # fmt: skip
    assert "keeps the" in str(exc) and "density 0.5" in str(exc)


def test_ties_scaled_by_one_and_a_half_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The review's mutation: TIES' update times 1.5 (the old report said "passed")."""
    real = METHODS["ties"].combine
    assert real is not None
    replace_method(monkeypatch, "ties", combine=lambda *a, **k: real(*a, **k) * 1.5)
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [f"{zoo.adapter(A)}@0.7", str(zoo.adapter(B))],
          "rows", method="ties", params={"density": 0.5}, dtype="bfloat16")  # fmt: skip


def test_ties_that_reports_another_cut_than_it_used_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine reports the right thresholds but trims each update at a slightly larger one."""
    real = METHODS["ties"].combine
    assert real is not None

    def combine(deltas: Any, weights: Any, params: Any, gen: Any, used: dict[str, Any] | None = None) -> Any:
        seen: dict[str, Any] = {}
        real(deltas, weights, params, gen, used=seen)
        trimmed = [torch.where(d.abs() >= t * 1.05, d, 0.0) for d, t in zip(deltas, seen["thresholds"], strict=True)]
        out = real(trimmed, weights, {**params, "density": 1.0}, gen)
        if used is not None:
            used["thresholds"] = seen["thresholds"]
        return out

    replace_method(monkeypatch, "ties", combine=combine)
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter(A)), str(zoo.adapter(B))],
          "rows", method="ties", params={"density": 0.5})  # fmt: skip


def test_dare_linear_with_flipped_mask_bits_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = methods_module.bernoulli_mask

    def flipped(shape: Any, density: float, gen: Any, device: Any) -> torch.Tensor:
        mask = real(shape, density, gen, device)
        return mask ^ (torch.arange(mask.numel()).reshape(mask.shape) % 53 == 0)  # about 2% of the bits

    monkeypatch.setattr(methods_module, "bernoulli_mask", flipped)
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter(A)), str(zoo.adapter(B))],
          "rows", method="dare_linear", params={"density": 0.5, "seed": 3}, dtype="float16")  # fmt: skip


def test_dare_ties_with_masks_of_another_seed_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = ex.generator_for
    monkeypatch.setattr(ex, "generator_for", lambda seed, key: real(seed + 1, key))
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter(A)), str(zoo.adapter(B))],
          "rows", method="dare_ties", params={"density": 0.5, "seed": 7})  # fmt: skip


@pytest.mark.parametrize(("kind", "variant"), [("llama", "llama-dora"), ("gpt2", "gpt2-dora")])
def test_dora_with_a_wrong_magnitude_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, variant: str
) -> None:
    real = ex._AdapterFiles.magnitude
    monkeypatch.setattr(ex._AdapterFiles, "magnitude", lambda self, op: real(self, op) * (1 + 2.0**-10))
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base(kind), [str(zoo.adapter(variant))], "dora")


def test_lora_bias_with_a_wrong_scale_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    change_plan(monkeypatch, scale_ops("transformer.h.0.attn.c_attn.bias", "bias", 2.0))
    exc = fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("gpt2"), [str(zoo.adapter("gpt2-lora-bias"))], "bias")
    assert "transformer.h.0.attn.c_attn.bias" in str(exc)


def test_a_saved_tensor_written_wrong_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``modules_to_save`` (the classifier): one entry one float32 unit off."""
    real = ex._AdapterFiles.get

    def get(self: Any, adapter: int, key: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        value = real(self, adapter, key, dtype)
        if "classifier" in key:
            value = value.clone()
            value.view(-1)[0] = torch.nextafter(value.view(-1)[0], torch.tensor(math.inf, dtype=value.dtype))
        return value

    monkeypatch.setattr(ex._AdapterFiles, "get", get)
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("bert"), [str(zoo.adapter("bert-seq-cls"))], "copy")


def test_an_update_on_a_saved_base_layer_written_wrong_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PEFT's saved copy of the embeddings under their LoRA: the update on top of it, 1% off."""
    real = ex._merge_whole
    monkeypatch.setattr(ex, "_merge_whole", lambda t, w, ops, files: w + (real(t, w, ops, files) - w) * 1.01)
    fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter("llama-embedding-peft-default-save"))],
          ("probe", "rows"))  # fmt: skip


def test_the_probe_catches_a_row_the_sample_leaves_out(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One row of a 64-row tensor 20% off, outside the 32 rows compared entry by entry.

    The probe sees a row's error ``d`` only through ``d . x``: a wrong row is missed when that
    product happens to fall under the rounding bound. The fixture's adapter names its (temporary)
    base folder, so the recipe, and with it ``x``, changes from run to run; the row taken is the
    off-sample row that ``x`` sees best, so that the test does not depend on the draw."""
    name = "model.layers.0.mlp.up_proj.weight"
    with Hub(tmp_path / "other", database_url=f"sqlite:///{tmp_path / 'other.db'}") as other:
        digest = other.merge(zoo.base("llama"), [str(zoo.adapter(A))], tmp_path / "first").record.recipe_digest
    off_sample = [r for r in range(64) if r not in sample_rows(digest, name, 64)]
    real = ex._factors

    def factors(files: Any, ops: Any) -> tuple[torch.Tensor, torch.Tensor]:
        left, right = real(files, ops)
        if left.shape[0] == 64 and ops[0].module == name.removesuffix(".weight"):
            seen = (left @ (right @ probe_vector(digest, name, right.shape[1]))).abs()
            row = max(off_sample, key=lambda r: float(seen[r]))
            left = left.clone()
            left[row] *= 1.2
        return left, right

    monkeypatch.setattr(ex, "_factors", factors)
    exc = fails(sqlite_hub, tmp_path, monkeypatch, zoo.base("llama"), [str(zoo.adapter(A))], "probe")
    assert name in str(exc)


def test_a_plan_that_applies_a_module_to_another_tensor_fails(
    sqlite_hub: Hub, zoo: Zoo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """q_proj's update of layer 0 on layer 1's q_proj (same shape): caught before any work."""
    q1 = Q0.replace("layers.0", "layers.1")
    real = plan_module.plan_merge

    def planned(*args: Any, **kwargs: Any) -> MergePlan:
        plan = real(*args, **kwargs)
        ops = {t.name: t.ops for t in plan.tensors}
        swapped = {Q0: ops[q1], q1: ops[Q0]}
        tensors = [t.model_copy(update={"ops": swapped[t.name]}) if t.name in swapped else t for t in plan.tensors]
        return plan.model_copy(update={"tensors": tensors})

    monkeypatch.setattr(plan_module, "plan_merge", planned)
    calls = spy_digests(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(MergeError, match="the merge plan does not apply the adapters") as info:
        sqlite_hub.merge(zoo.base("llama"), [str(zoo.adapter(A))], out, name="acme/merged")
    assert f"is applied to {q1}" in info.value.message
    assert not out.exists() and [p for p in tmp_path.iterdir() if PARTIAL in p.name] == []
    assert hub_is_empty(sqlite_hub, calls)


def hub_is_empty(hub: Hub, calls: list[str]) -> bool:
    return len(calls) == 1 and find_merge(hub, calls[0]) is None and hub.base_list() == []


# --- an update that overflows is the input's fault, said before any check -----------------------


@pytest.mark.parametrize(
    ("method", "params", "dtype", "weight", "says"),
    [
        ("linear", {}, "auto", "1e40", "beyond float32's range"),
        ("ties", {"density": 0.5}, "auto", "1e40", "beyond float32's range"),
        # in range, but w_i d_i / 0.1 is not
        ("dare_linear", {"density": 0.1}, "auto", "1.5e38", "values that are not finite (inf or NaN): the update"),
        ("linear", {}, "float16", "1e6", "overflows float32 or float16 (float16 holds at most 65504)"),
    ],
)
def test_an_update_that_overflows_is_a_user_error(
    sqlite_hub: Hub,
    zoo: Zoo,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    params: dict[str, Any],
    dtype: str,
    weight: str,
    says: str,
) -> None:
    calls = spy_digests(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(InvalidArgumentError, match="overflows float32") as info:
        sqlite_hub.merge(zoo.base("llama"), [f"{zoo.adapter(A)}@{weight}"], out, name="acme/merged", method=method,
                         params=params, dtype=dtype)  # fmt: skip
    assert not isinstance(info.value, MergeError)
    assert says in info.value.message and info.value.hint is not None and "lower the adapter weights" in info.value.hint
    assert "report" not in info.value.hint
    assert ("--dtype bfloat16" in info.value.hint) == (dtype == "float16")
    assert not out.exists() and [p for p in tmp_path.iterdir() if PARTIAL in p.name] == []
    assert hub_is_empty(sqlite_hub, calls)
