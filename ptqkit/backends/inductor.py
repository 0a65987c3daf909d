"""PyTorch Inductor: torch.compile with freezing; int8 through oneDNN qlinear kernels, no torchao.

int8 path. The converted model is first rewritten into the q/dq form PT2E's convert step produces
(inductor_qdq.to_qdq_module: quantized_decomposed q/dq around each linear, uint8 activations). With
`torch._inductor.config.freezing` the weights become constants and Inductor's freezing patterns
(torch/_inductor/fx_passes/quantization.py) replace dequant -> addmm/mm <- t <- dequant_per_channel with
onednn.qlinear_prepack + onednn.qlinear_pointwise (counter qlinear_weight_prepack_matcher_count), then fuse a
following quantize (and GELU) into the kernel's 8-bit output (qlinear_unary_matcher_count) and a following
residual add into the kernel (qlinear_binary_matcher_count).

The rewrite emits uint8 activations: oneDNN runs int8 ones on its reference matmul (inductor_qdq.py).

Inductor specialises on shapes: the runner exports the module once with dynamic batch/seq and compiles one
frozen graph per input shape (dynamic=False), lazily on first use, cached by shape. Evidence comes from the
compiled graph itself (a post-grad pass counts onednn int8 GEMMs and the remaining fp32 matmuls) and from
Inductor's pattern counters, recorded as deltas around each compile.
"""
from __future__ import annotations

import functools
import time
import warnings
from collections import Counter
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..qmodel import LogitsOnly, QuantLinear
from .base import MODULE, Engine, Inputs, KernelEvidence
from .inductor_qdq import QDQLinear, to_qdq_module
from .pytorch import profile_calls

PRECISIONS = ("fp32", "int8")
# Inductor counters that show the int8 rewrite happened (deltas per compile go into KernelEvidence.details)
PATTERN_COUNTERS = (
    "qlinear_weight_prepack_matcher_count",  # dequant -> mm <- dequant_per_channel became onednn.qlinear_pointwise
    "qlinear_unary_matcher_count",  # a following (GELU ->) quantize fused into the qlinear's 8-bit output
    "qlinear_binary_matcher_count",  # a following add fused into the qlinear
    "qlinear_unary_lower_count",
    "qlinear_binary_lower_count",
    "dequant_promotion_matcher_count",
)
FP32_OPS = ("aten.mm.", "aten.addmm.", "aten.bmm.", "aten.baddbmm.", "aten.linear.", "mkldnn._linear_pointwise",
            "mkl._mkl_linear", "aten._scaled_dot_product")




def _int8_gemm(node: torch.fx.Node) -> str | None:
    """'onednn.qlinear_pointwise[...]' if the node is an int8 GEMM, else None.

    After freezing the node targets onednn.qlinear_pointwise; by the post-grad pass Inductor's lowering patterns
    have usually replaced that target with functools.partial(qlinear | qlinear_binary, match).
    """
    target = node.target
    if isinstance(target, functools.partial):
        if getattr(target.func, "__name__", "") not in ("qlinear", "qlinear_binary"):
            return None
        kw = getattr(target.args[0], "kwargs", {}) if target.args else {}
        post = kw.get("binary_op_name") or kw.get("postop_name") or "none"
        if "binary_op_name" in kw and kw.get("unary_op_name", "none") != "none":
            post += "+" + kw["unary_op_name"]
        out = str(kw.get("output_dtype", "?")).replace("torch.", "")
        return f"onednn.qlinear_pointwise({post}->{out})"
    name = str(target)
    return name if name.startswith("onednn.qlinear_pointwise") else None


def _count_ops(graph: torch.fx.Graph, into: Counter) -> None:
    """int8 GEMMs and fp32 matmuls of a post-grad graph, by kind."""
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        int8 = _int8_gemm(node)
        if int8:
            into[int8] += 1
        elif str(node.target).startswith(FP32_OPS):
            into[str(node.target)] += 1


class InductorRunner:
    """One frozen Inductor graph per input shape, compiled on first use."""

    def __init__(self, wrapper: LogitsOnly, threads: int, precision: str):
        self.input_names = wrapper.input_names
        self.threads = threads
        self.precision = precision
        self.kernel_profile = False  # set on Engine.op_times' copy: its generated kernels record profiler events
        self.wrapper = wrapper.eval()
        self._program = None  # torch.export program with dynamic batch/seq, exported on first compile
        self._compiled: dict[tuple, object] = {}
        self.compile_seconds: dict[tuple, float] = {}
        self._ops: dict[tuple, Counter] = {}
        self._counters: dict[tuple, dict[str, int]] = {}

    # --- compile -----------------------------------------------------------------------------------------
    def _export(self):
        """The module as a torch.export program with dynamic batch/seq (traced at 2x16: size 1 would specialise)."""
        if self._program is None:
            max_len = int(getattr(getattr(self.wrapper.model, "config", None), "max_position_embeddings", 512) or 512)
            batch = torch.export.Dim("batch", min=1, max=4096)
            seq = torch.export.Dim("seq_len", min=2, max=max_len)
            args = tuple(torch.ones(2, 16, dtype=torch.long) if n == "attention_mask" else
                         torch.zeros(2, 16, dtype=torch.long) for n in self.input_names)
            dims = tuple({0: batch, 1: seq} for _ in self.input_names)  # one entry: forward(*inputs)
            with torch.no_grad():
                self._program = torch.export.export(self.wrapper, args, dynamic_shapes=(dims,), strict=False)
        return self._program

    def _compile(self, key: tuple, args: tuple[torch.Tensor, ...]):
        import torch._inductor.config as inductor_config
        from torch._dynamo.utils import counters

        program = self._export()
        ops: Counter = Counter()
        before = {k: counters["inductor"][k] for k in PATTERN_COUNTERS}
        start = time.perf_counter()
        # a fresh GraphModule per shape: its own code object, so shapes never share (or exhaust) dynamo's cache
        compiled = torch.compile(program.module(), dynamic=False, fullgraph=True)
        # freezing makes weights constants (needed for the int8 weight-prepack patterns); the FX graph cache is
        # off so the passes, and hence the evidence, run on every compile
        with inductor_config.patch({"freezing": True, "fx_graph_cache": False,
                                    "cpp.enable_kernel_profile": self.kernel_profile,
                                    "post_grad_custom_post_pass": lambda g: _count_ops(g, ops)}), \
                torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")  # Inductor's own w_zp copy
            out = compiled(*args)
        self.compile_seconds[key] = time.perf_counter() - start
        self._counters[key] = {k: counters["inductor"][k] - before[k] for k in PATTERN_COUNTERS}
        self._ops[key] = ops
        self._compiled[key] = compiled
        return out

    # --- run -----------------------------------------------------------------------------------------------
    def __call__(self, inputs: Inputs) -> np.ndarray:
        torch.set_num_threads(self.threads)  # also fixes the OpenMP width Inductor bakes into its C++ kernels
        args = tuple(torch.from_numpy(np.ascontiguousarray(inputs[n])) for n in self.input_names)
        key = tuple(tuple(a.shape) for a in args)
        if key not in self._compiled:
            out = self._compile(key, args)
        else:
            with torch.no_grad():
                out = self._compiled[key](*args)
        return out.float().numpy()

    def compile_for(self, batch: int, seq_len: int) -> float:
        """Compile for one shape ahead of time (dummy tokens); seconds it took (0 if already compiled)."""
        inputs = {n: np.zeros((batch, seq_len), dtype=np.int64) for n in self.input_names}
        if "attention_mask" in inputs:
            inputs["attention_mask"][:] = 1
        key = tuple((batch, seq_len) for _ in self.input_names)
        if key in self._compiled:
            return 0.0
        self(inputs)
        return self.compile_seconds[key]

    def kernels(self) -> KernelEvidence:
        """GEMMs in the last compiled graph: onednn.qlinear_pointwise is int8, aten/mkldnn matmuls are fp32.

        details: op counts plus Inductor's pattern-counter deltas for that compile. Compiles 1x16 if nothing was
        compiled yet.
        """
        if not self._compiled:
            self.compile_for(1, 16)
        key = next(reversed(self._compiled))
        ops = self._ops[key]
        ev = KernelEvidence()
        for target, n in ops.items():
            if target.startswith("onednn.qlinear_pointwise"):
                ev.int8 += n
            else:
                ev.fp32 += n
        ev.details = dict(ops) | {f"counter:{k}": v for k, v in self._counters[key].items() if v}
        return ev


class InductorBackend(Engine):
    name = "inductor"
    requires = "torch"
    takes = MODULE
    fixed_shapes = True  # compiles one graph per input shape (slow): not an --backend auto candidate
    profiled = True

    def compile(self, model: LogitsOnly, threads: int, precision: str = "fp32") -> InductorRunner:
        """fp32: the float HF model. int8: the converted model (rewritten with to_qdq_module) or its QDQ form;
        `model` wraps either in qmodel.LogitsOnly.

        Nothing is compiled here: each input shape compiles on its first call, which takes seconds to tens of
        seconds (InductorRunner.compile_seconds records each).
        """
        if precision not in PRECISIONS:
            raise UserError(f"inductor supports precisions {', '.join(PRECISIONS)}, not {precision!r}")
        inner = model.model.eval()
        if precision == "int8":
            if any(isinstance(m, QuantLinear) for m in inner.modules()):
                inner = to_qdq_module(inner)
            if not any(isinstance(m, QDQLinear) for m in inner.modules()):
                raise UserError("inductor int8 needs a converted model (Quantizer.convert) or its to_qdq_module form")
        elif any(isinstance(m, (QuantLinear, QDQLinear)) for m in inner.modules()):
            raise UserError("inductor fp32 takes the float model, not a quantized one")
        return InductorRunner(LogitsOnly(inner, model.input_names), threads, precision)

    def op_times(self, model: LogitsOnly, threads: int, precision: str, inputs: Inputs, calls: int,
                 between: Callable[[], None] | None = None) -> list[dict[str, float]]:
        """From torch.profiler on a copy compiled with cpp.enable_kernel_profile (each generated kernel records an
        event; pytorch.EVENT_KINDS names their kinds). The warm-up call compiles it: tens of seconds per shape."""
        runner = self.compile(model, threads, precision)
        runner.kernel_profile = True
        return profile_calls(lambda: runner(inputs), calls, between)
