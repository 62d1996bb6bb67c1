"""Merge benchmark: `lorahub merge` against PEFT, mergekit and the floor, in one run.

Generates (once, cached in --workdir) a ~1.1B-parameter Llama (TinyLlama's shape) in bfloat16,
saved in 1 GB shards, and a rank-16 LoRA on all 7 linear projections. Then, --runs times each,
as whole processes:

  lorahub   `lorahub merge --base NAME ADAPTER -o OUT --recompute --force`, NAME registered once before the
            runs (`lorahub base add`, not timed: a base is hashed once, when it is registered;
            --recompute, so that the recorded recipe is not served from the catalog)
  lorahub-folder  the same with the model folder as --base and a fresh LORAHUB_HOME each run,
            so the 2.2 GB base is hashed inside every run
  peft      from_pretrained + PeftModel.from_pretrained + merge_and_unload + save_pretrained
  mergekit  `mergekit-yaml` with `model: MODEL+ADAPTER` (only if --mergekit points at its venv)
  floor     safetensors read and write of every tensor (safe_open + save_file), no merge

Runs are interleaved, in an order that rotates every run. Before every run the page cache's
dirty pages are flushed (`sync`) and the inputs are read once, so that each run starts with them
cached (both untimed). Reports the median
(and min/max) wall time, peak RSS, and ratios, as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def run_timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Wall seconds and peak RSS (bytes, the largest of the process tree's members) of ``cmd``."""
    wrapped = ["/usr/bin/time", "-f", "%M", *cmd]
    started = time.perf_counter()
    proc = subprocess.run(wrapped, env={**os.environ, **(env or {})}, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    rss_kb = int(proc.stderr.strip().splitlines()[-1])
    return seconds, rss_kb * 1024


def warm_page_cache(folders: list[Path]) -> None:
    """Read every input file once (untimed), so that every tool starts with its inputs in the page
    cache. This VM runs DAMON with a `pageout` scheme (/sys/kernel/mm/damon/admin): pages it sees
    rarely accessed for about a minute are reclaimed, up to 128 MB a second, so without this a
    run can find part of the model evicted and read it from a disk of about 500 MB/s, and which
    tool pays for that depends on the order."""
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.is_file():
                with path.open("rb", buffering=0) as f:
                    while f.read(16 << 20):
                        pass


def make_inputs(work: Path, layers: int) -> tuple[Path, Path]:
    model_dir, adapter_dir = work / f"llama-{layers}l-bf16", work / f"lora-{layers}l-r16"
    if (model_dir / "config.json").exists() and (adapter_dir / "adapter_config.json").exists():
        return model_dir, adapter_dir
    script = textwrap.dedent(
        f"""
        import torch
        from peft import LoraConfig, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers={layers},
                          num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
                          max_position_embeddings=2048, tie_word_embeddings=False)
        with torch.device("cpu"):
            model = LlamaForCausalLM(cfg).to(torch.bfloat16)
        model.save_pretrained({str(model_dir)!r}, max_shard_size="1GB")
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                                      init_lora_weights=False, task_type="CAUSAL_LM"))
        peft_model.save_pretrained({str(adapter_dir)!r})
        """
    )
    subprocess.run([PY, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return model_dir, adapter_dir


PEFT_SCRIPT = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)
merged = PeftModel.from_pretrained(base, sys.argv[2]).merge_and_unload()
merged.save_pretrained(sys.argv[3], max_shard_size="1GB")
"""

FLOOR_SCRIPT = """
import sys
from pathlib import Path
from safetensors import safe_open
from safetensors.torch import save_file
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir()
for shard in sorted(src.glob("*.safetensors")):
    with safe_open(shard, framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, dst / shard.name, metadata={"format": "pt"})
    del tensors
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/lorahub-bench-merge"))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=22, help="22 gives the 1.1B TinyLlama shape")
    parser.add_argument("--mergekit", type=Path, default=None, help="a venv with mergekit installed")
    parser.add_argument("--only", default="lorahub,lorahub-folder,peft,mergekit,floor")
    parser.add_argument("--threads", type=int, default=0, help="OMP/torch threads (0: torch's default)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.0,
        help="seconds to wait before each run, so that the memory the previous run freed has gone back to the host "
        "(this VM reports free pages to it, 2 s after they are freed): every run then starts as a first merge on "
        "a fresh VM does, and pays for faulting in all the memory it touches",
    )
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model_dir, adapter_dir = make_inputs(args.workdir, args.layers)
    model_bytes = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    env = {"HF_HUB_OFFLINE": "1"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    lorahub = shutil.which("lorahub") or str(Path(PY).parent / "lorahub")

    shared_home = args.workdir / "lorahub-home"
    if "lorahub" in args.only.split(","):
        subprocess.run(
            [lorahub, "base", "add", str(model_dir), "--name", "bench-base"],
            check=True,
            env={**os.environ, "LORAHUB_HOME": str(shared_home)},
            capture_output=True,
        )

    def lorahub_cmd(out: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        cmd = [lorahub, "merge", "--base", "bench-base", str(adapter_dir), "-o", str(out), "--recompute", "--force"]
        return cmd, {"LORAHUB_HOME": str(shared_home)}

    def lorahub_folder_cmd(out: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        return [lorahub, "merge", "--base", str(model_dir), str(adapter_dir), "-o", str(out)], {
            "LORAHUB_HOME": str(home)
        }

    def mergekit_cmd(out: Path, home: Path) -> tuple[list[str], dict[str, str]]:
        cfg = home / "mergekit.yml"
        home.mkdir(parents=True, exist_ok=True)
        cfg.write_text(f"merge_method: passthrough\ndtype: bfloat16\nmodels:\n  - model: {model_dir}+{adapter_dir}\n")
        exe = str(args.mergekit / "bin" / "mergekit-yaml")
        # a fresh --lora-merge-cache per run: mergekit first writes the PEFT-merged model there
        cache = home / "lora-cache"
        return [exe, str(cfg), str(out), "--lazy-unpickle", "--lora-merge-cache", str(cache), "--no-copy-tokenizer",
                "--out-shard-size", "1B"], {}  # fmt: skip

    commands = {
        "lorahub": lorahub_cmd,
        "lorahub-folder": lorahub_folder_cmd,
        "peft": lambda out, home: ([PY, "-c", PEFT_SCRIPT, str(model_dir), str(adapter_dir), str(out)], {}),
        "floor": lambda out, home: ([PY, "-c", FLOOR_SCRIPT, str(model_dir), str(out)], {}),
        "mergekit": mergekit_cmd,
    }
    wanted = [k for k in args.only.split(",") if k in commands and (k != "mergekit" or args.mergekit)]
    results: dict[str, list[tuple[float, int]]] = {k: [] for k in wanted}
    for run in range(args.runs):
        # Interleaved, so that drift on the machine hits every tool alike, and in an order that
        # rotates every run: a run right after PEFT (which frees 2.7 GB, handed back to the host
        # and faulted in anew by whoever allocates next) is slower, and no tool should always be it.
        for key in wanted[run % len(wanted) :] + wanted[: run % len(wanted)]:
            with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
                out, home = Path(scratch) / "out", Path(scratch) / "home"
                cmd, extra = commands[key](out, home)
                # Untimed: the previous run's dirty pages are written back first, so that no run
                # pays for another's writeback.
                subprocess.run(["sync"], check=False)
                if args.settle:
                    time.sleep(args.settle)
                warm_page_cache([model_dir, adapter_dir])
                seconds, rss = run_timed(cmd, {**env, **extra})
                results[key].append((seconds, rss))
                print(f"run {run + 1}: {key:9s} {seconds:7.2f} s  peak RSS {rss / 1e9:.2f} GB", flush=True)

    if args.runs < 1:
        return
    floor = statistics.median(s for s, _ in results["floor"]) if "floor" in results else None
    peft = statistics.median(s for s, _ in results["peft"]) if "peft" in results else None
    settle = f", {args.settle:g} s settle before each run" if args.settle else ""
    print(f"\nmodel: {args.layers} layers, {model_bytes / 1e9:.2f} GB bf16; {args.runs} runs each{settle}\n")
    # "paired": the median over runs of tool / floor within the same run, which the machine's drift
    # between runs (the floor itself ranges over 1.5x in a day here) moves less than a ratio of medians.
    print("| tool | median s | min s | max s | vs floor | vs floor, paired | PEFT / tool | peak RSS GB | RSS / model |")
    print("|---|---|---|---|---|---|---|---|---|")

    def ratio(value: float | None) -> str:
        return f"{value:.2f}x" if value else "-"

    for key, rows in results.items():
        secs = [s for s, _ in rows]
        med = statistics.median(secs)
        rss = max(r for _, r in rows)
        paired = (
            statistics.median(s / f for (s, _), (f, _) in zip(rows, results["floor"], strict=True)) if floor else None
        )
        print(
            f"| {key} | {med:.2f} | {min(secs):.2f} | {max(secs):.2f} | {ratio(floor and med / floor)} | "
            f"{ratio(paired)} | {ratio(peft and peft / med)} | {rss / 1e9:.2f} | {rss / model_bytes:.0%} |"
        )
    (args.workdir / "merge_results.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
