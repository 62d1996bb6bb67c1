"""Combine benchmark: `lorahub combine` against PEFT's `add_weighted_adapter`, in one run.

Inputs: the ~1.1B-parameter bf16 Llama of `bench_merge.py` (generated there, cached in --workdir)
and 8 rank-16 adapters on all 7 linear projections (random factors, seeds 1..8, bf16, written
straight as PEFT folders). Each tool combines the 8 adapters with weights 1/8 into one adapter of
rank 32, as a whole process, --runs times:

  lorahub ties   `lorahub combine A1..A8 --method ties --density 0.5 --rank 32 --name ...`
  lorahub svd    `lorahub combine A1..A8 --method svd --rank 32 --name ...`
  peft ties      from_pretrained + 8 adapters loaded + add_weighted_adapter(combination_type=
                 "ties_svd", density=0.5, svd_rank=32) + save_pretrained of the new adapter
                 ("ties_svd" is PEFT's TIES in delta space, as ours; its plain "ties" combines A
                 and B separately, which is not the TIES update, see peft #3004)
  peft svd       the same with combination_type="svd", svd_rank=32

Besides time and peak RSS, the relative Frobenius error of each result against the exact update
``sum_i w_i s_i B_i A_i`` (svd) is computed afterwards on a few modules, in float64.

Example:  python bench/bench_combine.py --runs 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _envinfo
from bench_merge import PY, make_inputs

N_ADAPTERS = 8
RANK = 16
OUT_RANK = 32
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CHECKED = ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.v_proj"]

PEFT_SCRIPT = """
import sys, json, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base_dir, out, kind, *adapters = sys.argv[1:]
base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
model = PeftModel.from_pretrained(base, adapters[0], adapter_name="a0")
for i, path in enumerate(adapters[1:], 1):
    model.load_adapter(path, adapter_name=f"a{i}")
names = [f"a{i}" for i in range(len(adapters))]
extra = {"density": 0.5} if kind == "ties_svd" else {}
model.add_weighted_adapter(names, [1 / len(names)] * len(names), "combined", combination_type=kind,
                           svd_rank=SVD_RANK, **extra)
model.save_pretrained(out, selected_adapters=["combined"])
""".replace("SVD_RANK", str(OUT_RANK))


def run_timed(cmd: list[str], env: dict[str, str], timeout: float) -> tuple[float, int] | None:
    """Wall seconds and peak RSS of ``cmd``, or None if it ran past ``timeout`` (then killed)."""
    wrapped = ["/usr/bin/time", "-f", "%M", *cmd]
    started = time.perf_counter()
    proc = subprocess.Popen(wrapped, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return None
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{err[-4000:]}")
    return seconds, int(err.strip().splitlines()[-1]) * 1024


def make_adapters(work: Path, template: Path, layers: int) -> list[Path]:
    """8 adapters shaped like ``template`` (the merge benchmark's), with random factors."""
    config = json.loads((template / "adapter_config.json").read_text())
    with safe_open(str(template / "adapter_model.safetensors"), framework="pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    out = []
    for i in range(1, N_ADAPTERS + 1):
        folder = work / f"combine-{layers}l-input-{i}"
        out.append(folder)
        if (folder / "adapter_model.safetensors").exists():
            continue
        gen = torch.Generator().manual_seed(i)
        tensors = {
            k: (torch.randn(*shape, generator=gen) * (0.02 if "lora_A" in k else 0.01)).to(torch.bfloat16)
            for k, shape in shapes.items()
        }
        folder.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
        (folder / "adapter_config.json").write_text(json.dumps({**config, "lora_alpha": 2 * RANK * (1 + i % 2)}))
    return out


def exact_updates(adapters: list[Path]) -> dict[str, torch.Tensor]:
    total: dict[str, torch.Tensor] = {}
    for folder in adapters:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        scale = cfg["lora_alpha"] / cfg["r"]
        with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
            for m in CHECKED:
                a = f.get_tensor(f"base_model.model.{m}.lora_A.weight").double()
                b = f.get_tensor(f"base_model.model.{m}.lora_B.weight").double()
                total[m] = total.get(m, 0) + (b @ a) * scale / len(adapters)
    return total


def products(folder: Path) -> dict[str, torch.Tensor]:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    path = folder / "adapter_model.safetensors"
    out = {}
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        for m in CHECKED:
            a_key = next(k for k in keys if k.endswith(f"{m}.lora_A.weight"))
            b_key = next(k for k in keys if k.endswith(f"{m}.lora_B.weight"))
            a, b = f.get_tensor(a_key).double(), f.get_tensor(b_key).double()
            r = a.shape[0]
            alpha = (cfg.get("alpha_pattern") or {}).get(m, cfg["lora_alpha"])
            scale = alpha / (r**0.5 if cfg.get("use_rslora") else r)
            out[m] = (b @ a) * scale
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lorahub-bench-merge"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--only", default="lorahub-ties,lorahub-svd,peft-ties,peft-svd")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before a run is killed")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir, template = make_inputs(args.workdir, args.layers)
    adapters = make_adapters(args.workdir, template, args.layers)
    lorahub = str(Path(PY).parent / "lorahub")
    weights = [f"{a}@{1 / N_ADAPTERS}" for a in adapters]

    def ours(method: str, extra: list[str]) -> Callable[[Path, Path], tuple[list[str], dict[str, str]]]:
        def cmd(out: Path, home: Path) -> tuple[list[str], dict[str, str]]:
            name = f"bench/{method}"
            return [lorahub, "combine", *weights, "--method", method, "--rank", str(OUT_RANK), *extra,
                    "--name", name, "-o", str(out)], {"LORAHUB_HOME": str(home)}  # fmt: skip

        return cmd

    def peft(kind: str) -> Callable[[Path, Path], tuple[list[str], dict[str, str]]]:
        def cmd(out: Path, home: Path) -> tuple[list[str], dict[str, str]]:
            return [PY, "-c", PEFT_SCRIPT, str(model_dir), str(out), kind, *map(str, adapters)], {}

        return cmd

    commands = {
        "lorahub-ties": ours("ties", ["--density", "0.5"]),
        "lorahub-svd": ours("svd", []),
        "peft-ties": peft("ties_svd"),
        "peft-svd": peft("svd"),
    }
    wanted = [k for k in args.only.split(",") if k in commands]
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in wanted}
    errors: dict[str, float] = {}
    timeouts: set[str] = set()
    exact = exact_updates(adapters)
    env = {"HF_HUB_OFFLINE": "1"}
    for run in range(args.runs):
        for key in wanted:
            with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
                out, home = Path(scratch) / "out", Path(scratch) / "home"
                _envinfo.wait_quiet()
                cmd, extra = commands[key](out, home)
                timed = run_timed(cmd, {**env, **extra}, args.timeout)
                if timed is None:
                    timeouts.add(key)
                    print(f"run {run + 1}: {key:13s} killed after {args.timeout:.0f} s", flush=True)
                    continue
                seconds, rss = timed
                results[key].append((seconds, rss))
                print(f"run {run + 1}: {key:13s} {seconds:7.2f} s  peak RSS {rss / 1e9:.2f} GB", flush=True)
                if run == 0 and key.endswith("svd"):
                    folder = out / "combined" if (out / "combined").is_dir() else out
                    got = products(folder)
                    errors[key] = max(
                        float(torch.linalg.matrix_norm(got[m] - exact[m]) / torch.linalg.matrix_norm(exact[m]))
                        for m in CHECKED
                    )
    if args.runs < 1:
        return
    print()
    for line in _envinfo.machine_lines(args.workdir) + _envinfo.version_lines():
        print(line)
    print(f"- command: `python bench/bench_combine.py {' '.join(sys.argv[1:])}`".rstrip())
    print(f"\n{N_ADAPTERS} adapters of rank {RANK} on {args.layers} layers x 7 projections -> rank {OUT_RANK}; "
          f"{args.runs} runs each, whole processes\n")  # fmt: skip
    print("| tool | median s | min s | max s | peak RSS GB | svd: worst rel. error vs exact sum (3 modules) |")
    print("|---|---:|---:|---:|---:|---:|")
    for key, rows in results.items():
        if not rows:
            print(f"| {key} | > {args.timeout:.0f} (killed) | | | | |")
            continue
        secs = [s for s, _ in rows]
        err = f"{errors[key]:.3g}" if key in errors else "-"
        print(f"| {key} | {statistics.median(secs):.2f} | {min(secs):.2f} | {max(secs):.2f} | "
              f"{max(r for _, r in rows) / 1e9:.2f} | {err} |")  # fmt: skip
    (args.workdir / "combine_results.json").write_text(json.dumps({"results": results, "errors": errors}))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
