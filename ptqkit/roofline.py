"""The limit, measured: the int8 GEMM rate an engine reaches on this CPU, and how close the model's GEMMs come.

The ceiling is not a spec sheet: it is the best rate of the engine's own int8 GEMM on a few large single-GEMM
models in our export's QDQ form, timed by the engine's profiler with the model's thread count. The model's GEMM
work comes from its config; divided by the GEMM time the profiler counted in the model, it gives the share of that
ceiling the model's GEMMs reach.
"""
from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import numpy as np

from .backends.base import Engine

# Large enough that per-call overheads are a few percent; K and N like a BERT FFN. Each runs with a float output
# and with its output requantized to 8 bits (which OpenVINO fuses into the GEMM: fewer bytes written, measured
# faster there), as the model's linears do.
PEAK_SHAPES = ((512, 1024, 4096), (512, 4096, 1024), (2048, 1024, 1024))
PEAK_CALLS = 10


def gemm_macs(config, batch: int, seq_len: int) -> dict[str, int] | None:
    """Multiply-accumulates of one forward pass of a BERT-style encoder classifier, from its config; None for a
    config this formula does not describe (e.g. MobileBERT's bottlenecks).

    gemm: the weight matmuls (Q, K, V, attention output, FFN in and out per layer; an embedding projection where
    the embeddings are narrower, as in ALBERT and ELECTRA; the pooler or pre-classifier and the classifier), which
    the engines run as int8 GEMMs. attention: Q.K^T and P.V (activation x activation)."""
    h, layers = getattr(config, "hidden_size", None), getattr(config, "num_hidden_layers", None)
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "hidden_dim", None)  # DistilBERT: hidden_dim
    if not (h and layers and ffn) or hasattr(config, "true_hidden_size"):
        return None
    tokens = batch * seq_len
    embedding = getattr(config, "embedding_size", h) or h
    projection = tokens * embedding * h if embedding != h else 0
    return {"gemm": layers * tokens * (4 * h * h + 2 * h * ffn) + projection + batch * (h * h + h * config.num_labels),
            "attention": layers * 2 * batch * seq_len * seq_len * h}


def activation_dtype(onnx_path: str | Path) -> str:
    """'uint8' or 'int8': the integer type of the model's activation QuantizeLinear (the contract it was built
    with), so that the micro-benchmark runs the same kernels."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3 and node.input[0] not in inits:
            zp = inits.get(node.input[2])
            if zp is not None:
                return "uint8" if zp.data_type == onnx.TensorProto.UINT8 else "int8"
    return "uint8"


def qdq_gemm_onnx(m: int, k: int, n: int, act_dtype: str, requantize: bool, path: Path, seed: int = 0) -> Path:
    """One int8 GEMM as our export writes a linear: Q/DQ on the activation, per-channel DQ of (K, N) int8
    weights, MatMul, bias Add; `requantize`: then Q/DQ of the output with the activation's type."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    zp = np.array(128, np.uint8) if act_dtype == "uint8" else np.array(0, np.int8)
    inits = [numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"), numpy_helper.from_array(zp, "x_zp"),
             numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "w_q"),
             numpy_helper.from_array(np.full(n, 0.01, np.float32), "w_scale"),
             numpy_helper.from_array(np.zeros(n, np.int8), "w_zp"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "bias")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zp"], ["x_dq"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w_dq"], axis=1),
             helper.make_node("MatMul", ["x_dq", "w_dq"], ["mm"]),
             helper.make_node("Add", ["mm", "bias"], ["y_f" if requantize else "y"])]
    if requantize:
        nodes += [helper.make_node("QuantizeLinear", ["y_f", "x_scale", "x_zp"], ["y_q"]),
                  helper.make_node("DequantizeLinear", ["y_q", "x_scale", "x_zp"], ["y"])]
    graph = helper.make_graph(nodes, "int8_gemm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def int8_peak(engine: Engine, threads: int, act_dtype: str = "uint8") -> dict:
    """The best GMAC/s of the engine's int8 GEMM over PEAK_SHAPES with float and requantized outputs, timed by
    its profiler (median GEMM-kind ms of PEAK_CALLS calls), with the int8 kernels each model ran as evidence."""
    cells = []
    x_rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory(prefix="ptqkit-gemm-") as tmp:
        for (m, k, n), requantize in itertools.product(PEAK_SHAPES, (False, True)):
            path = qdq_gemm_onnx(m, k, n, act_dtype, requantize, Path(tmp) / f"gemm_{m}x{k}x{n}_{requantize}.onnx")
            inputs = {"x": x_rng.standard_normal((m, k)).astype(np.float32)}
            gemm_ms = float(np.median([c["gemm"] for c in engine.op_times(path, threads, "int8", inputs, PEAK_CALLS)]))
            int8 = engine.compile(path, threads, "int8").kernels().int8
            cells.append({"m": m, "k": k, "n": n, "output": "requantized" if requantize else "float",
                          "gemm_ms": round(gemm_ms, 3),
                          "gmac_s": round(m * k * n / gemm_ms / 1e6, 1), "int8_kernels": int8})
    if not all(c["int8_kernels"] for c in cells):
        raise RuntimeError(f"{engine.name} ran the int8 GEMM micro-benchmark without int8 kernels")
    return {"engine": engine.name, "threads": threads, "activations": act_dtype,
            "peak_gmac_s": max(c["gmac_s"] for c in cells), "shapes": cells}


def limit_row(macs: dict[str, int], profile: dict, peak_gmac_s: float) -> dict:
    """One cell of the limit table: the model's GEMM MACs over the profiler's GEMM time (and over the end-to-end
    time) as GMAC/s and as a share of the measured peak."""
    gemm_rate = macs["gemm"] / profile["gemm"] / 1e6
    wall_rate = macs["gemm"] / profile["end_to_end"] / 1e6
    return {"gemm_macs": macs["gemm"], "attention_macs": macs["attention"], "gemm_ms": profile["gemm"],
            "gemm_gmac_s": round(gemm_rate, 1), "gemm_share_of_peak": round(gemm_rate / peak_gmac_s, 3),
            "end_to_end_ms": profile["end_to_end"], "end_to_end_gmac_s": round(wall_rate, 1),
            "end_to_end_share_of_peak": round(wall_rate / peak_gmac_s, 3)}
