"""Build the inputs of the README's CLI tour in a folder (no downloads): the demo's tiny Llama and
its two adapters (scripts/make_tiny.py), a GPT-2 adapter, an adapter of a 4-layer Llama, a broken
adapter, and a folder holding a user's file. `scripts/readme_tour.sh` runs the tour on them."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    out: Path = args.out
    subprocess.run([sys.executable, str(HERE / "make_tiny.py"), str(out)], check=True, capture_output=True)

    torch.manual_seed(3)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=256, n_positions=128))
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM",
                      init_lora_weights=False)  # fmt: skip
    get_peft_model(gpt2, lora).save_pretrained(out / "gpt2-adapter")

    torch.manual_seed(4)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)  # fmt: skip
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj"], task_type="CAUSAL_LM", init_lora_weights=False)
    get_peft_model(LlamaForCausalLM(config), lora).save_pretrained(out / "four-layer-adapter")

    # broken: one module loses its lora_B, another gets a rank that its rank_pattern contradicts
    broken = out / "broken"
    shutil.copytree(out / "sql-adapter", broken, dirs_exist_ok=True)
    tensors = load_file(broken / "adapter_model.safetensors")
    del tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"]
    save_file(tensors, broken / "adapter_model.safetensors")
    cfg = json.loads((broken / "adapter_config.json").read_text())
    cfg["rank_pattern"] = {"layers.1.self_attn.v_proj": 4}
    (broken / "adapter_config.json").write_text(json.dumps(cfg, indent=2))

    (out / "thesis").mkdir(exist_ok=True)
    (out / "thesis" / "thesis.tex").write_text("\\documentclass{article}\n")
    print(f"tour inputs in {out}")


if __name__ == "__main__":
    main()
