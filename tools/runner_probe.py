#!/usr/bin/env python
"""Does the way a runner hands data to the engine cost time? One interleaved run per shape, one thread.

Times, on the exported fp32 and int8 ONNX of an output directory (bert_ptq.py or export.py): OpenVINO's runner
(its static-shape copy for the timed shape, shared inputs and outputs) against the dynamic-shape model called the
same way and with a copying infer, and ONNX Runtime's runner (session.run) against an I/O binding with bound CPU
inputs and an output preallocated per batch size. Prints median ms per way, the largest logit difference from
the runner's, and the kernels of each OpenVINO static copy beside the dynamic model's. README "Where the time
goes" quotes it.

    OMP_NUM_THREADS=1 python tools/runner_probe.py OUTPUT_DIR [--shapes 1x128,1x512] [--rounds 40]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def ov_dynamic(runner):
    """The runner's dynamic-shape model, zero-copy as the runner calls it (a plain function: nothing to prepare)."""
    return lambda inputs: runner(inputs)


def ov_copying(runner):
    """OpenVINO's plain infer on the dynamic-shape model: copies the inputs into the request's tensors, the
    output out of it."""
    def call(inputs):
        runner.request.infer({n: inputs[n] for n in runner.input_names})
        return runner.request.get_output_tensor(0).data.copy()
    return call


def ort_bound(runner):
    """ONNX Runtime through an I/O binding: inputs bound in place, logits written into a preallocated array."""
    import numpy as np

    binding, output, buffers = runner.session.io_binding(), runner.session.get_outputs()[0], {}

    def call(inputs):
        for n in runner.input_names:
            binding.bind_cpu_input(n, inputs[n])
        batch = inputs[runner.input_names[0]].shape[0]
        out = buffers.setdefault(batch, np.empty((batch, output.shape[1]), dtype=np.float32))
        binding.bind_output(output.name, "cpu", 0, np.float32, out.shape, out.ctypes.data)
        runner.session.run_with_iobinding(binding)
        return out.copy()
    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_dir")
    p.add_argument("--shapes", default="1x128,1x512")
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--vocab-size", type=int, default=30522, help="token ids are drawn below it (default model's)")
    args = p.parse_args()

    import numpy as np

    from ptqkit.backends import get_backend
    from ptqkit.backends.openvino import evidence
    from ptqkit.bench import BenchConfig, parse_shapes, synthetic_inputs, time_interleaved

    out = Path(args.output_dir)
    ov, ort = get_backend("openvino"), get_backend("onnxruntime")
    runners = {}
    for precision, name in (("fp32", "model_fp32.onnx"), ("int8", "model_int8_qdq.onnx")):
        path = out / name
        runners[f"openvino-{precision} runner (static shape, shared)"] = ov.compile(path, 1, precision)
        runners[f"openvino-{precision} dynamic shape, shared"] = ov_dynamic(ov.compile(path, 1, precision))
        runners[f"openvino-{precision} dynamic shape, copying infer"] = ov_copying(ov.compile(path, 1, precision))
        runners[f"onnxruntime-{precision} runner (session.run)"] = ort.compile(path, 1, precision)
        runners[f"onnxruntime-{precision} I/O binding"] = ort_bound(ort.compile(path, 1, precision))
    names = runners[next(iter(runners))].input_names
    for shape in parse_shapes(args.shapes):
        inputs = synthetic_inputs(shape, args.vocab_size, names)
        samples = time_interleaved(runners, inputs, BenchConfig(rounds=args.rounds, warmup=3))  # prepares first
        outputs = {n: r(inputs) for n, r in runners.items()}
        print(f"\n{shape}, 1 thread, {args.rounds} interleaved rounds, median ms")
        for n, s in samples.items():
            ref = outputs[next(k for k in outputs if k.split()[0] == n.split()[0])]  # the engine's runner
            print(f"  {n:50s} {np.median(s):9.3f}   max logit difference from its runner: "
                  f"{float(np.abs(outputs[n] - ref).max()):.2g}")
        for precision in ("fp32", "int8"):
            runner = runners[f"openvino-{precision} runner (static shape, shared)"]
            compiled = runner.static_copies()[tuple(inputs[n].shape for n in names)]
            print(f"  openvino-{precision} kernels: dynamic model {runner.kernels().details}, "
                  f"static copy {shape} {evidence(compiled).details}")


if __name__ == "__main__":
    main()
