"""ONNX Runtime: QDQ ONNX -> session with full graph optimizations, which rewrites Q/DQ groups into int8 ops."""
from __future__ import annotations

import json
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

import numpy as np

from ..artifacts import atomic_path
from .base import OP_KINDS, Engine, Inputs, KernelEvidence
from .ort_attention import to_multihead_attention

INT8_OPS = ("QLinearMatMul", "MatMulInteger", "QGemm", "QAttention", "MatMulIntegerToFloat", "DynamicQuantizeMatMul",
            "QLinearConv", "ConvInteger", "QOrderedMatMul")
FP32_OPS = ("MatMul", "Gemm", "FusedMatMul", "Attention", "MultiHeadAttention", "FusedGemm", "Conv")


class ORTRunner:
    """session.run on the caller's arrays; it returns a fresh output array per call, which callers may keep. An
    I/O binding (bound CPU inputs, an output preallocated per batch size) measured no faster in three interleaved
    runs (docs/performance.md), so the plain call stays."""

    def __init__(self, session, evidence: KernelEvidence):
        self.session = session
        self.evidence = evidence
        self.input_names = tuple(i.name for i in session.get_inputs())

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.session.run(None, {n: inputs[n] for n in self.input_names})[0]

    def kernels(self) -> KernelEvidence:
        """Op types of the graph as ORT optimized it (read at session creation)."""
        return self.evidence


def quantize_dynamic_file(fp32_onnx: Path, path: Path) -> Path:
    """ONNX Runtime's dynamic int8 (quantize_dynamic: int8 weights, activations quantized per call) of an fp32 ONNX,
    written atomically to `path`: the peer users reach for without calibration (bert_ptq.py's and the corpus
    benchmark's)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(str(fp32_onnx), str(tmp), weight_type=QuantType.QInt8)
    return path

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
    """`fuse_attention`: rewrite each float attention block into one MultiHeadAttention node before ORT loads the
    model (ort_attention.py; 10% off our int8 model at 1x512 on an AVX2 CPU, docs/attention.md). Our
    exported models get it; peers run the file as their users' plain session would (fuse_attention=False)."""

    name = "onnxruntime"
    requires = "onnxruntime"
    auto = True
    profiled = True

    def __init__(self, fuse_attention: bool = True):
        self.fuse_attention = fuse_attention

    def compile(self, model_path: str | Path, threads: int, precision: str = "fp32") -> ORTRunner:
        """The precision is in the graph (QDQ or not); ORT's CPU provider takes no precision hint."""
        # The optimized graph is the kernel evidence: ORT writes it at session creation; it is read, then removed.
        with tempfile.TemporaryDirectory(prefix="ptqkit-ort-") as tmp:
            optimized = Path(tmp) / (Path(model_path).stem + ".optimized.onnx")
            session = _session(model_path, threads, self.fuse_attention, optimized_model_filepath=str(optimized))
            evidence = _optimized_ops(optimized)
        return ORTRunner(session, evidence)

    def op_times(self, model_path: str | Path, threads: int, precision: str, inputs: Inputs, calls: int,
                 between: Callable[[], None] | None = None) -> list[dict[str, float]]:
        """From ONNX Runtime's profiler (its node kernel events) on a session of its own, per call.

        A float MatMul of two (batch, heads, ., .) activations is attention, any other a weight GEMM (fp32 models).
        The int8 GEMM op takes the dequantization (and bias) with it; the activation QuantizeLinear is "other"."""
        with tempfile.TemporaryDirectory(prefix="ptqkit-ort-profile-") as tmp:
            session = _session(model_path, threads, self.fuse_attention, enable_profiling=True,
                               profile_file_prefix=str(Path(tmp) / "p"))
            feed = {i.name: np.ascontiguousarray(inputs[i.name]) for i in session.get_inputs()}
            for i in range(calls + 1):
                session.run(None, feed)
                if i and between:
                    between()
            events = json.loads(Path(session.end_profiling()).read_text())
        runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[1:]  # 1st: warm-up
        out = [dict.fromkeys(OP_KINDS, 0.0) for _ in runs]
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            index = next((i for i, (t0, t1) in enumerate(runs) if t0 <= e["ts"] <= t1), None)
            if index is not None:
                out[index][_op_kind(e.get("args", {}))] += e["dur"] / 1e3
        return out


# ORT op type -> op kind (others: "other", e.g. Gather, Reshape, Transpose, QuantizeLinear, Cast)
OP_KIND = {op: "gemm" for op in INT8_OPS + ("Gemm", "FusedGemm", "Conv")} | {
    op: "attention" for op in ("Softmax", "Attention", "QAttention", "MultiHeadAttention")} | {
    op: "norm_act" for op in ("LayerNormalization", "SkipLayerNormalization", "EmbedLayerNormalization", "Gelu",
                              "BiasGelu", "FastGelu", "Add", "Mul", "Erf", "Div", "Sqrt", "Pow", "Sub", "Tanh",
                              "ReduceMean", "Where")}


def _op_kind(args: dict) -> str:
    op = args.get("op_name", "")
    if op in ("MatMul", "FusedMatMul"):  # the profiler lists activations only, not initializers (weights)
        shapes = [next(iter(s.values())) for s in args.get("input_type_shape", [])]
        return "attention" if len(shapes) >= 2 and all(len(s) == 4 for s in shapes[:2]) else "gemm"
    return OP_KIND.get(op, "other")


def _session(model_path: str | Path, threads: int, fuse_attention: bool, **options):
    """A CPU session with full graph optimizations on `threads` intra-op threads, after the attention rewrite
    when `fuse_attention` and it finds a block; `options`: SessionOptions fields."""
    import onnx
    import onnxruntime as ort

    model: str | bytes = str(model_path)
    if fuse_attention:
        proto = onnx.load(str(model_path))
        if to_multihead_attention(proto):
            model = proto.SerializeToString()

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    # Idle workers sleep instead of spinning: spinning pools steal cores from the other engines timed beside it.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in options.items():
        setattr(so, key, value)
    # CSE merges the identical Q/K/V activation QuantizeLinear nodes (one Q feeding three DQ), and MatMulAdd
    # fusion turns the 2-D pooler/classifier into Gemm, both before the QDQ -> int8 rewrite: with them ORT
    # left linears in fp32 (tests/test_backends.py checks that every linear runs in int8).
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"],
                                disabled_optimizers=["CommonSubexpressionElimination", "MatMulAddFusion"])
