#!/usr/bin/env python
"""How well each engine's int8 variant agrees with the torch fake-quant model, on held-out train sentences (all of a
pool, and its least confident part, which `--backend auto` uses) and on validation: evidence for the selection rule.

    python tools/agreement_probe.py OUTPUT_DIR     # the --output-dir of a bert_ptq.py run on the default model
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    import torch

    from ptqkit.backends import get_backend, installed_engines
    from ptqkit.backends.pytorch import TorchRunner
    from ptqkit.data import encode, train_holdout
    from ptqkit.evaluation import predict_logits
    from ptqkit.pipeline import RunConfig, load
    from ptqkit.quantizer import Quantizer
    from ptqkit.selection import POOL_SIZE, SELECTION_SIZE, least_confident

    torch.set_num_threads(1)
    ld = load(RunConfig())
    q = Quantizer.load(out / "quant_state", ld.model)
    pool = encode(ld.tokenizer, train_holdout(ld.task, POOL_SIZE), 128)
    fq = TorchRunner(q.quantize(), ld.input_names, 1)
    ref_pool = predict_logits(fq, pool, 32, ld.pad_id, "fake-quant pool")
    ref_val = predict_logits(fq, ld.val_features, 32, ld.pad_id, "fake-quant validation")
    low = least_confident(ref_pool, SELECTION_SIZE)
    print(f"| int8 variant | {POOL_SIZE} held-out train | their {SELECTION_SIZE} least confident | {len(ref_val)} validation |")
    print("|---|---|---|---|")
    for name in installed_engines():
        engine = get_backend(name)
        for precision in engine.int8_variants:
            runner = engine.compile(out / "model_int8_qdq.onnx", 1, precision)
            same = predict_logits(runner, pool, 32, ld.pad_id, name).argmax(1) == ref_pool.argmax(1)
            val = (predict_logits(runner, ld.val_features, 32, ld.pad_id, name).argmax(1) == ref_val.argmax(1)).mean()
            print(f"| {name}-{precision} | {same.mean():.4f} | {same[low].mean():.4f} | {val:.4f} |")


if __name__ == "__main__":
    main()
