#!/usr/bin/env python
"""int8 attention matmuls on and off, on the default model and task: what `--int8-attention auto` was decided from
(ptqkit.backends' Engine.int8_attention, pipeline.AUTO_INT8_ATTENTION; README "int8 attention" has the table).

    OMP_NUM_THREADS=1 python tools/attention_probe.py [--rounds N] [--output-dir DIR]

The default x86 contract is calibrated twice on the same 32 calibration batches (--int8-attention off, then on),
exported as QDQ ONNX and compiled on OpenVINO and ONNX Runtime (int8, one thread). Printed: per setting, argmax
agreement with fp32 and accuracy on the 1,000 validation sentences of the fake-quant model and of each engine
(plus each engine's agreement with the fake-quant model and its int8 kernels), then per shape (1x128, 1x512) the
median ms of the engine models timed interleaved in one run (with ONNX Runtime's float-attention model also run as a
plain session, without the MultiHeadAttention rewrite of backends/ort_attention.py).
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ENGINES = ("openvino", "onnxruntime")
SHAPES = "1x128,1x512"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30, help="timed rounds per shape")
    ap.add_argument("--output-dir", default="/tmp/ptqkit-attention-probe", help="where the two QDQ ONNX files go")
    args = ap.parse_args()
    import numpy as np
    import torch

    from ptqkit import pipeline
    from ptqkit.backends import get_backend
    from ptqkit.backends.onnxruntime import ORTBackend
    from ptqkit.backends.pytorch import TorchRunner
    from ptqkit.bench import BenchConfig, parse_shapes, synthetic_inputs, time_interleaved
    from ptqkit.config import RunConfig
    from ptqkit.data import calibration_batches
    from ptqkit.evaluation import argmax_agreement, predict_logits
    from ptqkit.sysinfo import cpu_info

    torch.set_num_threads(1)
    cfg = RunConfig()
    ld = pipeline.load(cfg)
    calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    labels = np.asarray(ld.val_labels)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def predict(runner, desc: str) -> np.ndarray:
        return predict_logits(runner, ld.val_features, cfg.batch_size, ld.pad_id, desc)

    def accuracy(logits: np.ndarray) -> float:
        return float((logits.argmax(-1) == labels).mean())

    fp32 = predict(TorchRunner(ld.model, ld.input_names, 1), "fp32")
    rows, runners = [], {}
    for setting in ("off", "on"):
        q, _ = pipeline.calibrate(ld, replace(cfg, int8_attention=setting), calib)
        converted = q.convert(ld.model)
        path = pipeline.export_int8(ld.model, q, ld.input_names, out_dir / f"attention-{setting}.onnx")
        fq = predict(TorchRunner(converted, ld.input_names, 1), f"fake-quant, attention {setting}")
        row = [setting, f"{argmax_agreement(fq, fp32):.3f} / {accuracy(fq):.3f}"]
        for name in ENGINES:
            runner = get_backend(name).compile(path, 1, "int8")
            logits = predict(runner, f"{name}, attention {setting}")
            ev = runner.kernels()
            kernels = ", ".join(f"{k} {n}" for k, n in sorted(ev.details.items()))
            row.append(f"{argmax_agreement(logits, fp32):.3f} / {argmax_agreement(logits, fq):.3f} / "
                       f"{accuracy(logits):.3f} | {kernels}")
            runners[f"{name} {setting}"] = runner
        if setting == "off":  # the float attention blocks without ONNX Runtime's MultiHeadAttention rewrite
            runners["onnxruntime off, plain session"] = ORTBackend(fuse_attention=False).compile(path, 1, "int8")
        rows.append(row)
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])}); fp32 accuracy {accuracy(fp32):.3f}; {len(labels)} validation sentences\n")
    print("| int8 attention | fake-quant: agreement with fp32 / accuracy | "
          + " | ".join(f"{e}: agreement with fp32 / with fake-quant / accuracy | {e} kernels" for e in ENGINES)
          + " |\n|---|---|" + "---|---|" * len(ENGINES))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    bench = BenchConfig(rounds=args.rounds)
    print(f"\nmedian ms, one thread, {args.rounds} interleaved rounds:\n")
    print("| shape | " + " | ".join(runners) + " |\n|---|" + "---|" * len(runners))
    for shape in parse_shapes(SHAPES):
        samples = time_interleaved(runners, synthetic_inputs(shape, ld.model.config.vocab_size, ld.input_names), bench)
        print(f"| {shape} | " + " | ".join(f"{np.median(s):.2f}" for s in samples.values()) + " |", flush=True)


if __name__ == "__main__":
    main()
