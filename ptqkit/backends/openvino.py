"""OpenVINO: compiles QDQ ONNX into int8 kernels (oneDNN/brgemm on x86, ACL on aarch64)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .base import Inputs, KernelEvidence

COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "ScaledDotProductAttention", "GEMM")


class OpenVINORunner:
    def __init__(self, compiled, input_names: tuple[str, ...]):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = input_names

    def __call__(self, inputs: Inputs) -> np.ndarray:
        self.request.infer({n: inputs[n] for n in self.input_names})
        return self.request.get_output_tensor(0).data.copy()

    def kernels(self) -> KernelEvidence:
        """Layer precisions from the compiled model's runtime graph (what the CPU plugin really executes)."""
        ev = KernelEvidence()
        counts: Counter = Counter()
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            layer = info["layerType"].astype(str) if "layerType" in info else op.get_type_name()
            if layer not in COMPUTE_LAYERS:
                continue
            prec = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else "?"
            counts[f"{layer}:{prec}"] += 1
            if prec in ("i8", "u8"):
                ev.int8 += 1
            elif prec == "f32":
                ev.fp32 += 1
            else:
                ev.other += 1
        ev.details = dict(counts)
        return ev


class OpenVINOBackend:
    """`precision_hint`: 'f32' keeps non-int8 ops in fp32; None is the engine default (bf16 on AMX/avx512_bf16 CPUs)."""

    name = "openvino"

    def __init__(self, precision_hint: str | None = "f32"):
        self.precision_hint = precision_hint

    def compile(self, model_path: str | Path, threads: int) -> OpenVINORunner:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(model_path))
        config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        if self.precision_hint:
            config["INFERENCE_PRECISION_HINT"] = self.precision_hint
        compiled = core.compile_model(model, "CPU", config)
        return OpenVINORunner(compiled, tuple(i.get_any_name() for i in model.inputs))
