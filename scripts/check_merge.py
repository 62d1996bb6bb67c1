"""Check a merged model against PEFT's unmerged adapter: the logits must agree (demo step)."""

from __future__ import annotations

import argparse
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402
from transformers.utils import logging  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("base")
    parser.add_argument("adapter")
    parser.add_argument("merged")
    args = parser.parse_args()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(args.base), args.adapter)(tokens)
        merged = AutoModelForCausalLM.from_pretrained(args.merged)(tokens)
    diff = (reference.logits - merged.logits).abs().max().item()
    print(f"max |logits(merged) - logits(base + adapter, unmerged in PEFT)| = {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("the merged model does not reproduce the adapter")


if __name__ == "__main__":
    main()
