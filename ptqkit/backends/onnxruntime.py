"""ONNX Runtime: QDQ ONNX -> session with full graph optimizations, which rewrites Q/DQ groups into int8 ops."""
from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

from .base import Engine, Inputs, KernelEvidence

INT8_OPS = ("QLinearMatMul", "MatMulInteger", "QGemm", "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "QLinearConv", "ConvInteger", "QOrderedMatMul")
FP32_OPS = ("MatMul", "Gemm", "FusedMatMul", "Attention", "MultiHeadAttention", "FusedGemm", "Conv")


class ORTRunner:
    def __init__(self, session, evidence: KernelEvidence):
        self.session = session
        self.evidence = evidence
        self.input_names = tuple(i.name for i in session.get_inputs())

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.session.run(None, {n: inputs[n] for n in self.input_names})[0]

    def kernels(self) -> KernelEvidence:
        """Op types of the graph as ORT optimized it (read at session creation)."""
        return self.evidence


def _optimized_ops(path: Path) -> KernelEvidence:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    counts = Counter(n.op_type for n in graph.node if n.op_type in INT8_OPS + FP32_OPS)
    return KernelEvidence(
        int8=sum(c for op, c in counts.items() if op in INT8_OPS),
        fp32=sum(c for op, c in counts.items() if op in FP32_OPS),
        details=dict(counts),
    )


class ORTBackend(Engine):
    name = "onnxruntime"
    requires = "onnxruntime"
    auto = True

    def compile(self, model_path: str | Path, threads: int, precision: str = "fp32") -> ORTRunner:
        """The precision is in the graph (QDQ or not); ORT's CPU provider takes no precision hint."""
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        # Idle workers sleep instead of spinning: spinning pools steal cores from the other engines timed beside it.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # The optimized graph is the kernel evidence: ORT writes it at session creation; it is read, then removed.
        with tempfile.TemporaryDirectory(prefix="ptqkit-ort-") as tmp:
            optimized = Path(tmp) / (Path(model_path).stem + ".optimized.onnx")
            so.optimized_model_filepath = str(optimized)
            # CSE merges the identical Q/K/V activation QuantizeLinear nodes (one Q feeding three DQ), and MatMulAdd
            # fusion turns the 2-D pooler/classifier into Gemm, both before the QDQ -> int8 rewrite: with them ORT
            # left linears in fp32 (tests/test_backends.py checks that every linear runs in int8).
            session = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=["CommonSubexpressionElimination", "MatMulAddFusion"])
            evidence = _optimized_ops(optimized)
        return ORTRunner(session, evidence)
