"""Extract benchmark: `lorahub extract` against mergekit's `mergekit-extract-lora`, in one run.

Generates once, into --workdir, a random Llama of about 250M parameters (hidden 1024, 16 layers,
intermediate 2816, 16 heads and 8 KV heads, vocabulary 32000, untied head) in bfloat16, and a
"fine-tune" of it: on every one of the 7 linear projections of every layer,
``W_tuned = bf16(W + U diag(sigma) V^T + eps * N)`` with a rank-32 part whose singular values decay
as ``0.8^j`` (its Frobenius norm 5% of ``||W||_F``), Gaussian noise of 0.5% of ``||W||_F``, and
bfloat16 rounding on top. Embeddings, norms and the head are unchanged.

Then, --runs times each, interleaved, as whole processes, at the same rank (--rank, default 16):

  lorahub            `lorahub extract --base BASE --tuned TUNED --rank K --name ...` with both given
                     as model folders and a fresh LORAHUB_HOME every run (so both models, 1 GB, are
                     hashed inside every run); float32 factors (the default)
  lorahub-registered the same with both registered once before the runs (`lorahub base add`, not
                     timed), as a user who extracts from registered models does
  lorahub-bf16       `lorahub` with `--dtype bfloat16`: factors in the models' dtype, as mergekit stores them
  mergekit           `mergekit-extract-lora --base-model BASE --model TUNED --max-rank K
                     --skip-undecomposable -e '(embed_tokens|lm_head)'` (only with --mergekit VENV): the
                     same job, the linear projections only (by default it would also save the
                     embeddings, head and norms whole)

Before every run, dirty pages are flushed and both models are read once (untimed), and the script
waits for the CPUs to be quiet. Reports the median (min, max) wall time and peak RSS, and, from the
first run of each tool, the relative error ``||D - s B A||_F / ||D||_F`` of every module
(``D = W_tuned - W_base`` in float64), max and mean, against the Eckart-Young optimum at rank K
(exact SVD of each ``D``, computed once and kept in the workdir).

Example:  python bench/bench_rank.py --runs 3 --mergekit /tmp/mk
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _envinfo
from bench_merge import PY, run_timed, warm_page_cache

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PLANTED_RANK = 32


def make_models(work: Path) -> tuple[Path, Path]:
    base_dir, tuned_dir = work / "llama-250m-bf16", work / "llama-250m-tuned-bf16"
    if (base_dir / "config.json").exists() and (tuned_dir / "config.json").exists():
        return base_dir, tuned_dir
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16,
                      num_key_value_heads=8, vocab_size=32000, max_position_embeddings=2048,
                      tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(base_dir)
    gen = torch.Generator().manual_seed(1)
    decay = torch.tensor([0.8**j for j in range(PLANTED_RANK)], dtype=torch.float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim != 2 or name.rsplit(".", 2)[-2] not in TARGETS:
                continue
            w = p.double()
            out_f, in_f = w.shape
            norm = float(w.norm())
            u, _ = torch.linalg.qr(torch.randn(out_f, PLANTED_RANK, generator=gen, dtype=torch.float64))
            v, _ = torch.linalg.qr(torch.randn(in_f, PLANTED_RANK, generator=gen, dtype=torch.float64))
            sigma = decay * (0.05 * norm / float(decay.norm()))
            noise = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
            noise *= 0.005 * norm / float(noise.norm())
            p.copy_((w + (u * sigma) @ v.t() + noise).to(torch.bfloat16))
    model.save_pretrained(tuned_dir)
    return base_dir, tuned_dir


def module_deltas(base_dir: Path, tuned_dir: Path) -> dict[str, torch.Tensor]:
    """``W_tuned - W_base`` in float64 for every target module, by module path."""
    out = {}
    with (
        safe_open(str(base_dir / "model.safetensors"), framework="pt") as fb,
        safe_open(str(tuned_dir / "model.safetensors"), framework="pt") as ft,
    ):
        for key in fb.keys():  # noqa: SIM118
            if key.endswith(".weight") and key.rsplit(".", 2)[-2] in TARGETS:
                out[key.removesuffix(".weight")] = ft.get_tensor(key).double() - fb.get_tensor(key).double()
    return out


def optimal_errors(work: Path, deltas: dict[str, torch.Tensor], rank: int) -> dict[str, float]:
    """The Eckart-Young error at ``rank`` of every module (exact SVD, float64), cached in ``work``."""
    cache = work / f"optimal-r{rank}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    result = {}
    for path, d in deltas.items():
        s = torch.linalg.svdvals(d)
        result[path] = math.sqrt(float((s[rank:] ** 2).sum() / (s**2).sum()))
    cache.write_text(json.dumps(result))
    return result


def adapter_errors(folder: Path, deltas: dict[str, torch.Tensor]) -> dict[str, float]:
    """``||D - s B A||_F / ||D||_F`` per module, with ``s`` from the adapter's config (patterns honoured)."""
    cfg = json.loads((folder / "adapter_config.json").read_text())
    errors = {}
    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as f:
        for path, d in deltas.items():
            a = f.get_tensor(f"base_model.model.{path}.lora_A.weight").double()
            b = f.get_tensor(f"base_model.model.{path}.lora_B.weight").double()
            r = (cfg.get("rank_pattern") or {}).get(path, cfg["r"])
            alpha = (cfg.get("alpha_pattern") or {}).get(path, cfg["lora_alpha"])
            assert a.shape[0] == r, (path, a.shape, r)
            scale = alpha / (math.sqrt(r) if cfg.get("use_rslora") else r)
            errors[path] = float(torch.linalg.matrix_norm(d - scale * (b @ a)) / torch.linalg.matrix_norm(d))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lorahub-bench-rank"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--mergekit", type=Path, default=None, help="a venv with mergekit installed")
    parser.add_argument("--only", default="lorahub,lorahub-registered,lorahub-bf16,mergekit")
    parser.add_argument("--mergekit-runs", type=int, default=None, help="run mergekit in the first N runs only")
    parser.add_argument("--max-wait", type=float, default=120.0, help="seconds to wait for quiet CPUs before a run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    base_dir, tuned_dir = make_models(args.workdir)
    lorahub = str(Path(PY).parent / "lorahub")
    env = {"HF_HUB_OFFLINE": "1"}
    shared_home = args.workdir / "lorahub-home"
    wanted = [k for k in args.only.split(",") if k != "mergekit" or args.mergekit]
    if "lorahub-registered" in wanted:
        for folder, name in ((base_dir, "bench-base"), (tuned_dir, "bench-tuned")):
            subprocess.run([lorahub, "base", "add", str(folder), "--name", name], check=True, capture_output=True,
                           env={**os.environ, "LORAHUB_HOME": str(shared_home)})  # fmt: skip
    rank = str(args.rank)

    def command(key: str, out: Path, home: Path, run: int) -> tuple[list[str], dict[str, str]]:
        if key == "mergekit":
            exe = str(args.mergekit / "bin" / "mergekit-extract-lora")
            return [
                exe,
                "--base-model",
                str(base_dir),
                "--model",
                str(tuned_dir),
                "--out-path",
                str(out),
                "--max-rank",
                rank,
                "--skip-undecomposable",
                "-e",
                "(embed_tokens|lm_head)",
                "--quiet",
            ], {}
        name = ["--name", f"bench/extract-{key}-{run}", "-o", str(out)]
        if key == "lorahub-registered":
            return [lorahub, "extract", "--base", "bench-base", "--tuned", "bench-tuned", "--rank", rank, *name], {
                "LORAHUB_HOME": str(shared_home)
            }
        extra = ["--dtype", "bfloat16"] if key == "lorahub-bf16" else []
        return [lorahub, "extract", "--base", str(base_dir), "--tuned", str(tuned_dir), "--rank", rank, *name,
                *extra], {"LORAHUB_HOME": str(home)}  # fmt: skip

    results: dict[str, list[tuple[float, int]]] = {k: [] for k in wanted}
    errors: dict[str, dict[str, float]] = {}
    deltas = module_deltas(base_dir, tuned_dir)
    optimum = optimal_errors(args.workdir, deltas, args.rank)
    for run in range(args.runs):
        for key in wanted[run % len(wanted) :] + wanted[: run % len(wanted)]:
            if key == "mergekit" and args.mergekit_runs is not None and run >= args.mergekit_runs:
                continue
            with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
                out, home = Path(scratch) / "out", Path(scratch) / "home"
                cmd, extra = command(key, out, home, run)
                subprocess.run(["sync"], check=False)
                warm_page_cache([base_dir, tuned_dir])
                busy = _envinfo.wait_quiet(max_wait=args.max_wait)
                seconds, rss = run_timed(cmd, {**env, **extra})
                results[key].append((seconds, rss))
                print(f"run {run + 1}: {key:18s} {seconds:7.2f} s  peak RSS {rss / 1e9:.2f} GB  (CPU busy before: "
                      f"{busy:.0%})", flush=True)  # fmt: skip
                if key not in errors:
                    errors[key] = adapter_errors(out, deltas)
    if args.runs < 1:
        return
    print()
    for line in _envinfo.machine_lines(args.workdir) + _envinfo.version_lines(
        {"torch": torch.__version__, "mergekit": _mergekit_version(args.mergekit)}
    ):
        print(line)
    print(f"- command: `python bench/bench_rank.py {' '.join(sys.argv[1:])}`".rstrip())
    model_bytes = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    opt = list(optimum.values())
    print(
        f"\n{len(deltas)} modules, rank {args.rank}; models {model_bytes / 1e9:.2f} GB each (bf16); {args.runs} "
        f"runs each, whole processes; Eckart-Young optimum: max {max(opt):.5f}, mean {statistics.mean(opt):.5f}\n"
    )
    mk = statistics.median(s for s, _ in results["mergekit"]) if results.get("mergekit") else None
    print("| tool | median s | min s | max s | mergekit / tool | peak RSS GB | max error | mean error | "
          "mean excess over optimum |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, rows in results.items():
        secs = [s for s, _ in rows]
        med = statistics.median(secs)
        err = errors[key]
        excess = statistics.mean(err[p] - optimum[p] for p in err)
        ratio = f"{mk / med:.1f}x" if mk else "-"
        print(f"| {key} | {med:.2f} | {min(secs):.2f} | {max(secs):.2f} | {ratio} | "
              f"{max(r for _, r in rows) / 1e9:.2f} | {max(err.values()):.5f} | {statistics.mean(err.values()):.5f} | "
              f"{excess:.2e} |")  # fmt: skip
    (args.workdir / "rank_results.json").write_text(json.dumps({"results": results, "errors": errors}))


def _mergekit_version(venv: Path | None) -> str:
    if venv is None:
        return "not used"
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('mergekit'))"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.stdout.strip() or "unknown"


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
