#!/usr/bin/env python
"""How well each engine's int8 variant agrees with the torch fake-quant model on the held-out train sentences
`--backend auto` checks and on validation, and where its disagreements lie: evidence for the selection rule.

    python tools/agreement_probe.py OUTPUT_DIR     # the --output-dir of a bert_ptq.py run on the default model

Per variant: argmax agreement on the pool (disagreements), how many of them are among the 300 sentences the
fake-quant model is least sure of, the largest fake-quant top-2 margin among them, the mean absolute logit
difference from the fake-quant model, and agreement on validation. The fp32 model is the yardstick: how much
quantization itself moves the logits.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LEAST_CONFIDENT = 300


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    import numpy as np
    import torch

    from ptqkit.backends import get_backend, installed_engines
    from ptqkit.backends.pytorch import TorchRunner
    from ptqkit.data import encode, train_holdout
    from ptqkit.evaluation import predict_logits
    from ptqkit.pipeline import RunConfig, load
    from ptqkit.quantizer import Quantizer
    from ptqkit.selection import POOL_SIZE

    torch.set_num_threads(1)
    ld = load(RunConfig())
    q = Quantizer.load(out / "quant_state", ld.model)
    pool = encode(ld.tokenizer, train_holdout(ld.task, POOL_SIZE), 128)
    fq = TorchRunner(q.quantize(), ld.input_names, 1)
    ref_pool = predict_logits(fq, pool, 32, ld.pad_id, "fake-quant pool")
    ref_val = predict_logits(fq, ld.val_features, 32, ld.pad_id, "fake-quant validation")
    top2 = np.sort(ref_pool, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    unsure = np.zeros(len(margin), dtype=bool)
    unsure[np.argsort(margin, kind="stable")[:LEAST_CONFIDENT]] = True
    variants = {"pytorch-fp32 (yardstick)": TorchRunner(ld.model, ld.input_names, 1)}
    for engine in map(get_backend, installed_engines()):
        for precision in engine.int8_variants:
            variants[f"{engine.name}-{precision}"] = engine.compile(out / "model_int8_qdq.onnx", 1, precision)
    print(f"| variant | agreement on {len(pool)} held-out train (disagreements) | of them among the {LEAST_CONFIDENT} "
          f"least confident | largest fake-quant margin among them | mean logit difference | {len(ref_val)} validation |")
    print("|---|---|---|---|---|---|")
    for name, runner in variants.items():
        logits = predict_logits(runner, pool, 32, ld.pad_id, name)
        differ = logits.argmax(1) != ref_pool.argmax(1)
        val = (predict_logits(runner, ld.val_features, 32, ld.pad_id, name).argmax(1) == ref_val.argmax(1)).mean()
        largest = f"{margin[differ].max():.3f}" if differ.any() else ""
        print(f"| {name} | {1 - differ.mean():.4f} ({differ.sum()}) | {(differ & unsure).sum()} | {largest} | "
              f"{np.abs(logits - ref_pool).mean():.4f} | {val:.4f} |")


if __name__ == "__main__":
    main()
