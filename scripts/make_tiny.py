"""Build a tiny random Llama and a PEFT LoRA adapter for it, for the demo (no downloads)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=256, max_position_embeddings=128,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    model.save_pretrained(args.out / "tiny-llama")
    for name, seed, targets in (
        ("sql-adapter", 1, ["q_proj", "v_proj"]),
        ("chat-adapter", 2, ["q_proj", "k_proj", "o_proj"]),
    ):
        torch.manual_seed(seed)
        peft_model = get_peft_model(
            LlamaForCausalLM.from_pretrained(args.out / "tiny-llama"),
            LoraConfig(r=8, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM", init_lora_weights=False),
        )
        peft_model.save_pretrained(args.out / name)
    print(f"wrote {args.out}/tiny-llama, {args.out}/sql-adapter, {args.out}/chat-adapter")


if __name__ == "__main__":
    main()
