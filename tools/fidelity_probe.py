#!/usr/bin/env python
"""Fidelity of the fake-quant model against fp32 per quantization recipe, on the default model and task: what the
per-device defaults in ptqkit/config.py (x86: affine activations, runtime SmoothQuant) were chosen from.

    OMP_NUM_THREADS=1 python tools/fidelity_probe.py [RECIPE ...]     # default: every recipe below

Same 32 calibration batches as bert_ptq.py; each recipe prints one Markdown row: argmax agreement with fp32,
accuracy and mean squared logit error on the 1,000 validation sentences.
"""
from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# name -> (device, isa, activation spec changes, runtime SmoothQuant alpha)
RECIPES = {
    "x86 symmetric int8, entropy (previous default)": ("x86", "avx512_vnni", dict(dtype="int8", symmetric=True, method="entropy"), None),
    "x86 affine uint8, minmax": ("x86", "avx512_vnni", {}, None),
    "x86 affine uint8, minmax, smoothing 0.95 (default)": ("x86", "avx512_vnni", {}, 0.95),
    "x86 avx2 (7-bit weights) uint8 zp 128, entropy (previous default)": ("x86", "avx2", dict(symmetric=True, method="entropy"), None),
    "x86 avx2 (7-bit weights) affine uint8, minmax, smoothing 0.95 (default)": ("x86", "avx2", {}, 0.95),
    "aarch64 symmetric int8, percentile (default)": ("aarch64", "arm_dotprod", {}, None),
    "aarch64 affine uint8, minmax": ("aarch64", "arm_dotprod", dict(dtype="uint8", symmetric=False, method="minmax"), None),
    "aarch64 affine uint8, minmax, smoothing 0.95": ("aarch64", "arm_dotprod", dict(dtype="uint8", symmetric=False, method="minmax"), 0.95),
}


def main() -> None:
    names = sys.argv[1:] or list(RECIPES)
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        raise SystemExit(f"unknown recipe(s) {unknown}; choose from {list(RECIPES)}")
    import numpy as np
    import torch

    from ptqkit.backends.pytorch import TorchRunner
    from ptqkit.config import QuantConfig
    from ptqkit.data import calibration_batches
    from ptqkit.evaluation import argmax_agreement, predict_logits
    from ptqkit.pipeline import RunConfig, load
    from ptqkit.quantizer import Quantizer, run_calibration
    from ptqkit.smoothquant import collect_input_absmax, smooth_runtime

    torch.set_num_threads(1)
    cfg = RunConfig()
    ld = load(cfg)
    calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    labels = np.asarray(ld.val_labels)
    fp32 = predict_logits(TorchRunner(ld.model, ld.input_names, 1), ld.val_features, cfg.batch_size, ld.pad_id, "fp32")
    absmax = collect_input_absmax(ld.model, calib)
    print(f"fp32 accuracy {float((fp32.argmax(-1) == labels).mean()):.3f}\n")
    print("| recipe | agreement with fp32 | accuracy | logit MSE |\n|---|---|---|---|")
    for name in names:
        device, isa, act, alpha = RECIPES[name]
        base = QuantConfig.for_device(device, isa=isa)
        q = Quantizer(config=replace(base, activation=replace(base.activation, **act), smooth_alpha=alpha))
        graph = q.calib(ld.model, ld.input_names)
        if alpha is not None:
            smooth_runtime(q, absmax, alpha)
        run_calibration(graph, calib, len(calib))
        q.quantize()
        logits = predict_logits(TorchRunner(q.convert(ld.model), ld.input_names, 1), ld.val_features, cfg.batch_size,
                                ld.pad_id, name)
        acc = float((logits.argmax(-1) == labels).mean())
        mse = float(((logits - fp32) ** 2).mean())
        print(f"| {name} | {argmax_agreement(logits, fp32):.3f} | {acc:.3f} | {mse:.4f} |", flush=True)


if __name__ == "__main__":
    main()
