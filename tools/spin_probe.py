#!/usr/bin/env python
"""Do idle worker threads of one engine slow the engine timed after it? A multi-thread cell, interleaved.

Times PyTorch eager fp32 (--model, default the offline default model), then OpenVINO int8 and ONNX Runtime int8
(the QDQ ONNX of OUTPUT_DIR, from bert_ptq.py or export.py) round-robin in that order, twice with no pause between
calls and twice with bench.SETTLE_S idle before each call, as bert_ptq.py times multi-thread cells. Prints median
ms per engine and pause. README "Where the time goes" quotes it.

    OMP_NUM_THREADS=1 python tools/spin_probe.py OUTPUT_DIR [--threads 2] [--shape 1x128] [--rounds 40]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_dir")
    p.add_argument("--model", default=None, help="hub id or local dir of the fp32 model (default: the offline default)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--shape", default="1x128")
    p.add_argument("--rounds", type=int, default=40)
    args = p.parse_args()

    import numpy as np

    from ptqkit.backends import get_backend
    from ptqkit.backends.pytorch import TorchRunner
    from ptqkit.bench import SETTLE_S, BenchConfig, parse_shapes, synthetic_inputs, time_interleaved
    from ptqkit.config import RunConfig
    from ptqkit.pipeline import load

    ld = load(RunConfig(**({"model": args.model} if args.model else {}), eval_limit=1))
    int8 = Path(args.output_dir) / "model_int8_qdq.onnx"
    runners = {"pytorch-fp32": TorchRunner(ld.model, ld.input_names, args.threads),
               "openvino-int8": get_backend("openvino").compile(int8, args.threads, "int8"),
               "onnxruntime-int8": get_backend("onnxruntime").compile(int8, args.threads, "int8")}
    (shape,) = parse_shapes(args.shape)
    inputs = synthetic_inputs(shape, ld.model.config.vocab_size, ld.input_names)
    print(f"{args.threads} threads, {shape.batch}x{shape.seq_len}, median ms of {args.rounds} interleaved rounds")
    print("| pause before each call | " + " | ".join(runners) + " |")
    print("|---|" + "---|" * len(runners))
    for settle in (0.0, SETTLE_S, 0.0, SETTLE_S):
        samples = time_interleaved(runners, inputs, BenchConfig(rounds=args.rounds, warmup=3), settle)
        print(f"| {settle * 1e3:.0f} ms | " + " | ".join(f"{np.median(samples[n]):.2f}" for n in runners) + " |")


if __name__ == "__main__":
    main()
