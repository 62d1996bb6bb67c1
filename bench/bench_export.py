"""Export benchmark: `lorahub export` per format, and the latency of every artifact, in one run.

Generates (once, cached in --workdir) a random-init Llama (``medium``: hidden 1024, 13 layers,
intermediate 2816, 16/4 heads, vocab 32000, untied head, float32, about 212M parameters / 849 MB;
``1b``: TinyLlama's shape, 1.1B, float32), a rank-16 LoRA (alpha 32) on all 7 projections with
``init_lora_weights=False``, and the export source: PEFT's ``merge_and_unload`` of the two, saved.

1. Exports, each a whole process (`lorahub export SRC --format F -o OUT --json`, a fresh
   LORAHUB_HOME, so the 849 MB source is fingerprinted inside every run): wall time, the phases
   the record reports, artifact size, peak RSS (``wait4``), and the parity gate's worst error.
2. Latency, in one process with ``torch.set_num_threads(--threads)`` and ONNX Runtime on the same
   number of threads with spinning off: batch 1, a 128-token prefill (no cache, except for the
   cached programs, which prefill into their cache), and one decode step with a cache (eager
   models: ``DynamicCache`` holding 127 tokens, cropped back after each step; cached programs:
   position 127 of their static cache). Backends: eager base, PEFT unmerged, eager merged, and
   each artifact. Every iteration times each backend once, in a new random order; the table has
   medians, p25-p75 and the median over iterations of the ratio to the eager base.

    .venv/bin/python bench/bench_export.py --workdir /tmp/bench-export
    .venv/bin/python bench/bench_export.py --only latency        # exports already made
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _envinfo import machine_lines, version_lines, version_of

PY = sys.executable
LORAHUB = str(Path(PY).parent / "lorahub")
SHAPES = {
    "medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=13, num_attention_heads=16,
                   num_key_value_heads=4),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),
}  # fmt: skip
# (name in the tables, format, extra options)
EXPORTS = [
    ("torchscript", "torchscript", []),
    ("torch-export", "torch-export", []),
    ("aoti", "aoti", []),
    ("onnx", "onnx", []),
    ("torch-export --with-cache", "torch-export", ["--with-cache", "--max-seq", "256"]),
    ("aoti --with-cache", "aoti", ["--with-cache", "--max-seq", "256"]),
]
PREFILL = 128


def make_inputs(work: Path, size: str) -> tuple[Path, Path, Path]:
    base, adapter, merged = work / f"{size}-base", work / f"{size}-lora-r16", work / f"{size}-merged"
    if (merged / "config.json").exists():
        return base, adapter, merged
    script = textwrap.dedent(
        f"""
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model
        from transformers import LlamaConfig, LlamaForCausalLM
        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False,
                          **{SHAPES[size]!r})
        model = LlamaForCausalLM(cfg)
        model.save_pretrained({str(base)!r})
        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        peft = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=targets,
                                                init_lora_weights=False, task_type="CAUSAL_LM"))
        peft.save_pretrained({str(adapter)!r})
        fresh = LlamaForCausalLM.from_pretrained({str(base)!r}, dtype=torch.float32)
        PeftModel.from_pretrained(fresh, {str(adapter)!r}).merge_and_unload().save_pretrained({str(merged)!r})
        """
    )
    subprocess.run([PY, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return base, adapter, merged


def run_export_measured(src: Path, out: Path, fmt: str, extra: list[str], home: Path) -> dict:
    """One `lorahub export` process: wall time, its own peak RSS (``wait4``), and its record."""
    shutil.rmtree(home, ignore_errors=True)
    env = {**os.environ, "LORAHUB_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("LORAHUB_DATABASE_URL", None)
    cmd = [LORAHUB, "export", str(src), "--format", fmt, "-o", str(out), "--overwrite", "--json", *extra]
    out_file, err_file = home.parent / f"{home.name}.out", home.parent / f"{home.name}.err"
    with out_file.open("w") as o, err_file.open("w") as e:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=o, stderr=e)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        lines = err_file.read_text().strip().splitlines()
        return {"error": lines[-1] if lines else f"status {status}", "wall": wall}
    rec = json.loads(out_file.read_text())["record"]
    return {"wall": wall, "rss": usage.ru_maxrss * 1024, "record": rec}


LATENCY_SCRIPT = r"""
import json, random, statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from peft import PeftModel
from transformers import DynamicCache, LlamaForCausalLM
base_dir, adapter_dir, merged_dir, exports = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
iters_prefill, iters_decode, seed = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
P = 128
gen = torch.Generator().manual_seed(seed)
ids = torch.randint(0, 32000, (1, P), generator=gen)
mask = torch.ones_like(ids)
nxt = ids[:, -1:]

def eager(model):
    model.eval()
    def prefill():
        return model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], past_key_values=cache, use_cache=True)
    def decode():
        out = model(input_ids=nxt, past_key_values=cache, use_cache=True).logits
        cache.crop(-1)  # back to the P - 1 prompt tokens
        return out
    return prefill, decode

backends = {}
backends["eager base"] = eager(LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32))
peft = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
backends["PEFT unmerged"] = eager(peft)
backends["eager merged"] = eager(LlamaForCausalLM.from_pretrained(merged_dir, dtype=torch.float32))
for name, (fmt, folder, cached) in exports.items():
    if fmt == "torchscript":
        m = torch.jit.load(folder + "/model.ts")
    elif fmt == "torch-export":
        m = torch.export.load(folder + "/model.pt2").module()
    elif fmt == "aoti":
        m = torch._inductor.aoti_load_package(folder + "/model.pt2")
    elif fmt == "onnx":
        sys.path.insert(0, sys.argv[9])
        from lora_hub.export.onnx import session
        s = session(folder + "/model.onnx", threads=int(sys.argv[5]))
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        backends[name] = (lambda s=s, feed=feed: s.run(None, feed)[0], None)
        continue
    if cached:
        m(input_ids=ids[:, :-1], cache_position=torch.arange(P - 1))
        pos = torch.tensor([P - 1])
        backends[name] = (lambda m=m: m(input_ids=ids, cache_position=torch.arange(P)),
                          lambda m=m, pos=pos: m(input_ids=nxt, cache_position=pos))
    else:
        backends[name] = (lambda m=m: m(ids, mask), None)

results = {}
rng = random.Random(seed)
with torch.no_grad():
    for phase, idx, n in (("prefill", 0, iters_prefill), ("decode", 1, iters_decode)):
        names = [k for k, v in backends.items() if v[idx] is not None]
        for k in names:  # warm up
            for _ in range(3):
                backends[k][idx]()
        times = {k: [] for k in names}
        for _ in range(n):
            rng.shuffle(names)
            for k in names:
                t = time.perf_counter()
                backends[k][idx]()
                times[k].append(time.perf_counter() - t)
        results[phase] = times
print(json.dumps(results))
"""


def quantiles(xs: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(xs, n=4)
    return q[0], statistics.median(xs), q[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/bench-export"))
    ap.add_argument("--size", choices=sorted(SHAPES), default="medium")
    ap.add_argument("--only", choices=["exports", "latency"], default=None)
    ap.add_argument("--formats", default=",".join(n for n, _, _ in EXPORTS), help="comma-separated table names")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prefill-iters", type=int, default=20)
    ap.add_argument("--decode-iters", type=int, default=60)
    args = ap.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    base, adapter, merged = make_inputs(work, args.size)
    model_bytes = sum(p.stat().st_size for p in merged.glob("*.safetensors"))
    wanted = [e for e in EXPORTS if e[0] in args.formats.split(",")]
    results_file = work / f"{args.size}-exports.json"
    exports: dict[str, dict] = json.loads(results_file.read_text()) if results_file.exists() else {}

    print("## Machine\n")
    print("\n".join(machine_lines(work)))
    libs = ("torch", "transformers", "peft", "onnx", "onnxscript", "onnxruntime", "torch-tensorrt")
    print("\n".join(version_lines({lib: version_of(lib) for lib in libs})))
    print(f"\nsource: {merged} ({model_bytes / 1e6:.0f} MB of weights)\n")

    if args.only != "latency":
        for name, fmt, extra in wanted:
            slug = name.replace(" --", "-").replace(" ", "-")
            print(f"exporting {name} ...", file=sys.stderr, flush=True)
            r = run_export_measured(merged, work / f"{args.size}-{slug}", fmt, extra, work / f"home-{slug}")
            r["folder"] = str(work / f"{args.size}-{slug}")
            r["format"], r["cached"] = fmt, "--with-cache" in extra
            exports[name] = r
            results_file.write_text(json.dumps(exports, indent=1))
        print("## Exports\n")
        print("| format | wall s | export s | compile s | check s | artifact MB | peak RSS GB | RSS / model | "
              "parity worst abs (rel) |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|")
        for name, _, _ in wanted:
            r = exports[name]
            if "error" in r:
                print(f"| {name} | {r['wall']:.1f} | failed: {r['error']} | | | | | | |")
                continue
            rec = r["record"]
            t = rec["timings"]
            size = sum(a["size"] for a in rec["artifacts"]) / 1e6
            par = rec["parity"]
            print(f"| {name} | {r['wall']:.1f} | {t['export_s']:.1f} | {t.get('compile_s', 0):.1f} | "
                  f"{t['check_s']:.1f} | {size:.0f} | {r['rss'] / 1e9:.2f} | {r['rss'] / model_bytes:.2f}x | "
                  f"{par['worst_abs']:.2g} ({par['worst_rel']:.2g}) |")  # fmt: skip

    if args.only == "exports":
        return
    ok = {n: (r["format"], r["folder"], r["cached"]) for n, r in exports.items() if "error" not in r}
    repo = str(Path(__file__).resolve().parent.parent)
    cmd = [PY, "-c", LATENCY_SCRIPT, str(base), str(adapter), str(merged), json.dumps(ok), str(args.threads),
           str(args.prefill_iters), str(args.decode_iters), "0", repo]  # fmt: skip
    print("measuring latency ...", file=sys.stderr, flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(proc.returncode)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    (work / f"{args.size}-latency.json").write_text(json.dumps(res))
    print(f"\n## Latency (batch 1, {args.threads} threads; prefill {PREFILL} tokens, decode = one step at "
          f"position {PREFILL - 1})\n")  # fmt: skip
    print("| backend | prefill median ms | p25-p75 | ratio to base | decode median ms | p25-p75 | ratio to base |")
    print("|---|---|---|---|---|---|---|")
    names = list(res["prefill"])
    eagers = ["eager base", "PEFT unmerged", "eager merged"]
    order = eagers + [n for n in names if n not in eagers]
    for name in order:
        cells = []
        for phase in ("prefill", "decode"):
            xs = res[phase].get(name)
            if not xs:
                cells += ["n/a (no cache)", "", ""]
                continue
            lo, med, hi = quantiles(xs)
            ratio = statistics.median(a / b for a, b in zip(xs, res[phase]["eager base"], strict=True))
            cells += [f"{med * 1e3:.1f}", f"{lo * 1e3:.1f}-{hi * 1e3:.1f}", f"{ratio:.3f}"]
        print(f"| {name} | " + " | ".join(cells) + " |")
    dec = res["decode"]
    peft_med = statistics.median(dec["PEFT unmerged"])
    best = min((n for n in dec if n not in ("eager base", "PEFT unmerged", "eager merged")),
               key=lambda n: statistics.median(dec[n]), default=None)  # fmt: skip
    if best:
        print(f"\nbest decode artifact: {best}, {peft_med / statistics.median(dec[best]):.2f}x faster than eager "
              "PEFT unmerged (goal: 1.5x)")  # fmt: skip


if __name__ == "__main__":
    main()
