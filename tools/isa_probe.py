#!/usr/bin/env python
"""Measure the int8 contract's forms on this CPU: activation storage (int8 / uint8 with zero point 128, the same
grid) x weight bits (8 / 7), on OpenVINO and ONNX Runtime, default model, 1x128, one thread, one interleaved run.

Prints per form and engine: median ms, argmax agreement and max |logit| error against the torch fake-quant model
on validation sentences. Run it under ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 to simulate an AVX2 CPU
for OpenVINO and PyTorch (ONNX Runtime's MLAS ignores both and keeps this CPU's kernels).

    OMP_NUM_THREADS=1 python tools/isa_probe.py [--eval-limit 300] [--rounds 20]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--eval-limit", type=int, default=300)
    p.add_argument("--calib-batches", type=int, default=8)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()

    import numpy as np
    import torch

    from ptqkit.backends import get_backend
    from ptqkit.backends.pytorch import TorchRunner
    from ptqkit.bench import BenchConfig, Shape, synthetic_inputs, time_interleaved
    from ptqkit.capture import example_inputs
    from ptqkit.config import QuantConfig
    from ptqkit.data import calibration_batches
    from ptqkit.evaluation import predict_logits
    from ptqkit.export import export_onnx
    from ptqkit.pipeline import RunConfig, load
    from ptqkit.quantizer import Quantizer, run_calibration
    from ptqkit.sysinfo import cpu_info

    torch.set_num_threads(1)
    ld = load(RunConfig(eval_limit=args.eval_limit))
    calib = calibration_batches(ld.task, ld.tokenizer, args.calib_batches, 32, 128)
    example = example_inputs(ld.model, ld.input_names, batch=1, seq_len=128)
    out = Path(tempfile.mkdtemp(prefix="ptqkit-isa-probe-"))
    engines = [get_backend("openvino"), get_backend("onnxruntime")]
    fp32 = export_onnx(ld.model, ld.input_names, example, out / "fp32.onnx")
    runners = {"pytorch-fp32": TorchRunner(ld.model, ld.input_names, 1)}
    runners |= {f"{e.name}-fp32": e.compile(fp32, 1, "fp32") for e in engines}
    fidelity = {}
    for act in ("int8", "uint8"):
        for bits in (8, 7):
            base = QuantConfig.for_device("x86", isa="avx2" if bits == 7 else "avx512_vnni")
            q = Quantizer(config=replace(base, activation=replace(base.activation, dtype=act)))
            run_calibration(q.calib(ld.model), calib)
            q.quantize()
            path = export_onnx(q.convert(ld.model), ld.input_names, example, out / f"{act}-w{bits}.onnx")
            ref = predict_logits(TorchRunner(q.graph, ld.input_names, 1), ld.val_features, 32, ld.pad_id, "fake-quant")
            for e in engines:
                name = f"{e.name}-{act}-w{bits}"
                runner = runners[name] = e.compile(path, 1, "int8")
                logits = predict_logits(runner, ld.val_features, 32, ld.pad_id, name)
                fidelity[name] = (float((logits.argmax(1) == ref.argmax(1)).mean()), float(np.abs(logits - ref).max()))
    inputs = synthetic_inputs(Shape(1, 128), ld.model.config.vocab_size, ld.input_names)
    times = time_interleaved(runners, inputs, BenchConfig(rounds=args.rounds, warmup=3))
    cpu = cpu_info()
    print(f"CPU {cpu['model']} ({' '.join(cpu['flags'])}); int8 ISA {cpu['int8_isa']}; "
          f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', '')} ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', '')}")
    print(f"| variant | 1x128 1t ms | agreement with fake-quant ({args.eval_limit} sentences) | max logit error |")
    print("|---|---|---|---|")
    for name, samples in times.items():
        agree, err = fidelity.get(name, (None, None))
        cells = f"{agree:.4f} | {err:.3f}" if agree is not None else " | "
        print(f"| {name} | {np.median(samples):.2f} | {cells} |")


if __name__ == "__main__":
    main()
