"""OpenVINO: compiles QDQ ONNX into int8 kernels (oneDNN/brgemm on x86, ACL on aarch64)."""
from __future__ import annotations

from collections import Counter
from types import MappingProxyType
from pathlib import Path
from typing import Callable

import numpy as np

from ..sysinfo import onednn_bf16_capped, usable_cores
from .base import OP_KINDS, Engine, Inputs, KernelEvidence

COMPUTE_LAYERS = ("FullyConnected", "MatMul", "Convolution", "ScaledDotProductAttention", "GEMM")
# The CPU plugin fuses a whole attention block (Q*K^T, scale, mask, softmax, P*V) into one `Subgraph` (snippets);
# such a subgraph, told from eltwise subgraphs by the MatMuls among its original layers, counts as one compute
# kernel under this name, int8 when it runs as i8 (jit_avx512_i8: int8 attention matmuls).
ATTENTION_SUBGRAPH = "AttentionSubgraph"


class OpenVINORunner:
    """One infer request on the dynamic-shape model, plus one static-shape copy per shape the caller `prepare`s;
    every call is zero-copy: the request reads the caller's arrays and its output tensor is read in place.

    Static copies: the CPU plugin runs a model compiled for one shape 11-18% faster than the dynamic-shape model at
    that shape (no per-call shape inference and memory planning; docs/performance.md,
    "Static shapes"), what a server that pads its requests to a fixed shape compiles. Calls at any other shape run the
    dynamic model. One mode for every call: a request once fed shared arrays kept their capacity and then refused a
    plain (copying) call at a larger shape."""

    def __init__(self, compiled, input_names: tuple[str, ...], model_path: str | Path, threads: int, precision: str):
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.input_names = input_names
        self._source = (model_path, threads, precision)
        self._static: dict[tuple, object] = {}  # input shapes -> infer request of the static-shape copy

    def prepare(self, inputs: Inputs) -> None:
        """Compile the static-shape copy for calls shaped like `inputs` (seconds; before timing, never inside)."""
        key = tuple(inputs[n].shape for n in self.input_names)
        if key not in self._static:
            model_path, threads, precision = self._source
            compiled, _ = compile_configured(model_path, threads, precision, static=dict(zip(self.input_names, key)))
            self._static[key] = compiled.create_infer_request()

    def __call__(self, inputs: Inputs) -> np.ndarray:
        feed = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}  # no copy when already contiguous
        request = self._static.get(tuple(a.shape for a in feed.values()), self.request)
        out = request.infer(feed, share_inputs=True, share_outputs=True)
        # the shared output is the request's buffer, overwritten by the next call; callers keep logits (a few
        # floats per row), so they get their own copy
        return out[0].copy()

    def kernels(self) -> KernelEvidence:
        """Layer precisions of the dynamic-shape model (what evaluation runs; `evidence` reads a static copy)."""
        return evidence(self.compiled)

    def static_copies(self) -> dict[tuple, object]:
        """Input shapes -> compiled static-shape copy, for the kernels each one runs."""
        return {key: request.get_compiled_model() for key, request in self._static.items()}


def evidence(compiled) -> KernelEvidence:
    """Layer precisions from a compiled model's runtime graph (what the CPU plugin really executes)."""
    ev = KernelEvidence()
    counts: Counter = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        layer = _rt(op, "layerType") or op.get_type_name()
        if layer == "Subgraph" and "MatMul" in _rt(op, "originalLayersNames"):
            layer = ATTENTION_SUBGRAPH
        elif layer not in COMPUTE_LAYERS:
            continue
        prec = _rt(op, "runtimePrecision") or "?"
        counts[f"{layer}:{prec}"] += 1
        if prec in ("i8", "u8"):
            ev.int8 += 1
        elif prec == "f32":
            ev.fp32 += 1
        else:
            ev.other += 1
    ev.details = dict(counts)
    return ev


# Inference-precision hint per variant. fp32 must be fp32 end to end. int8 keeps the ops outside int8 in f32, so
# it computes what the fake-quant model computes; the engine default (bf16 outside int8 on CPUs with bf16) is
# faster but drifts further from it, so that mix is its own variant, "int8-bf16" (both are measured by
# `python bert_ptq.py --backend openvino`: agreement_with_fakequant and latency_ms per variant in report.json).
# bf16 is the fp32 model with the bf16 hint, a peer users would pick instead of int8.
PRECISION_HINTS = {"fp32": "f32", "int8": "f32", "int8-bf16": None, "bf16": "bf16"}


def default_int8_precision() -> str:
    """The int8 variant that computes as a plain `core.compile_model(model, "CPU")` does: "int8-bf16" where the CPU
    plugin's default inference precision is bf16 (x86 with avx512_bf16 or AMX, unless oneDNN is capped below bf16),
    else "int8" (f32 outside int8; on aarch64, whose default is f16, f32 as the ARM check ran). Peers run in it: it
    is what their users get."""
    import openvino as ov

    if onednn_bf16_capped():
        return "int8"
    return "int8-bf16" if ov.Core().get_property("CPU", "INFERENCE_PRECISION_HINT") == ov.Type.bf16 else "int8"


class OpenVINOBackend(Engine):
    name = "openvino"
    requires = "openvino"
    int8_variants = ("int8", "int8-bf16")
    variant_notes = MappingProxyType({"int8-bf16": "our int8 model at the engine's default precision (ops outside "
                                                   "int8 in bf16 where the CPU has bf16)"})
    auto = True
    profiled = True
    int8_attention = True  # its fused attention subgraph runs int8 (docs/attention.md)

    @classmethod
    def runs_here(cls, precision: str) -> bool:
        """int8-bf16 leaves the precision to the plugin: bf16 only where that is its default here."""
        return precision == "int8" or (precision == "int8-bf16" and default_int8_precision() == "int8-bf16")

    def compile(self, model_path: str | Path, threads: int, precision: str = "fp32") -> OpenVINORunner:
        """Compile ONNX or IR for the CPU plugin, latency mode, one stream, `threads` threads.

        Threads are pinned only when they cover every core this process may use. The plugin pins to the first
        cores of the process's mask, so processes that each take a share of a machine (Ray actors and trials with
        one CPU each) would all land on core 0 and share it (openvinotoolkit/openvino#32444)."""
        compiled, inputs = compile_configured(model_path, threads, precision)
        return OpenVINORunner(compiled, inputs, model_path, threads, precision)

    def op_times(self, model_path: str | Path, threads: int, precision: str, inputs: Inputs, calls: int,
                 between: Callable[[], None] | None = None) -> list[dict[str, float]]:
        """From the CPU plugin's performance counters (PERF_COUNT) of a request of its own, per call.

        Weight matmuls run as FullyConnected nodes (bias, activation and requantization fused in); the plugin fuses
        Q.K^T, softmax and P.V into one Subgraph node, so a node whose original layers hold a Softmax is attention."""
        compiled, per_call = perf_counters(model_path, threads, precision, inputs, calls, between)
        attention = {op.get_friendly_name() for op in compiled.get_runtime_model().get_ordered_ops()
                     if "Softmax" in _rt(op, "originalLayersNames")}
        out = []
        for infos in per_call:
            kinds = dict.fromkeys(OP_KINDS, 0.0)
            for info in infos:
                kind = "attention" if info.node_name in attention else op_kind(info.node_type)
                kinds[kind] += info.real_time.total_seconds() * 1e3
            out.append(kinds)
        return out


def perf_counters(model_path: str | Path, threads: int, precision: str, inputs: Inputs, calls: int,
                  between: Callable[[], None] | None = None) -> tuple[object, list[list]]:
    """The model compiled with PERF_COUNT for the shape of `inputs` (as the timed runner's static copy), and per
    call (after one warm-up call, on a request of its own) the CPU plugin's performance counters of the nodes it
    executed; `between` runs after each counted call."""
    compiled, names = compile_configured(model_path, threads, precision, {"PERF_COUNT": True},
                               static={n: inputs[n].shape for n in inputs})
    request = compiled.create_infer_request()
    feed = {n: np.ascontiguousarray(inputs[n]) for n in names}
    request.infer(feed, share_inputs=True, share_outputs=True)  # warm-up
    per_call = []
    for _ in range(calls):
        request.infer(feed, share_inputs=True, share_outputs=True)
        per_call.append([i for i in request.profiling_info if i.status == i.Status.EXECUTED])
        if between:
            between()
    return compiled, per_call


# Performance-counter node type -> op kind (others: "other", e.g. Gather, Transpose, Reshape, FakeQuantize, Convert)
OP_KIND = {"Convolution": "gemm", "GEMM": "gemm", "MatMul": "attention",
           "Softmax": "attention", "ScaledDotProductAttention": "attention", "MVN": "norm_act", "RMS": "norm_act",
           "Eltwise": "norm_act", "Subgraph": "norm_act", "Add": "norm_act", "Multiply": "norm_act",
           "MulAdd": "norm_act", "Gelu": "norm_act"}


def op_kind(node_type: str) -> str:
    """The op kind of a performance-counter node type. Every FullyConnected variant is a weight GEMM: the counters
    name some by their executor (FullyConnectedQuantizedLegacy: some of the linears of NNCF's models) while the
    runtime model calls them all FullyConnected."""
    return "gemm" if node_type.startswith("FullyConnected") else OP_KIND.get(node_type, "other")


def _rt(op, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def compile_configured(model_path: str | Path, threads: int, precision: str, extra: dict | None = None,
                       static: dict[str, tuple[int, ...]] | None = None):
    """The compiled model (see OpenVINOBackend.compile) and its input names; `extra`: more compile properties
    (the batcher's throughput streams, the profiler's counters); `static`: input name -> shape, to compile for that
    one shape."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(model_path))
    if static:
        model.reshape({i.get_any_name(): list(static[i.get_any_name()]) for i in model.inputs})
    config = {"INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
              "ENABLE_CPU_PINNING": threads >= usable_cores(), **(extra or {})}
    # None: the engine's default. Under a oneDNN cap below bf16 (a simulated older CPU) the plugin still reads bf16
    # from CPUID, takes it as its default and then fails to compile (Softmax: "Supported primitive descriptors list
    # is empty"); a CPU of that level has no bf16, so its default is f32.
    hint = PRECISION_HINTS[precision] or ("f32" if onednn_bf16_capped() else None)
    if hint:
        config["INFERENCE_PRECISION_HINT"] = hint
    return core.compile_model(model, "CPU", config), tuple(i.get_any_name() for i in model.inputs)
