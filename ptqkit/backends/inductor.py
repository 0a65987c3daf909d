"""PyTorch Inductor: torch.compile with freezing; int8 through oneDNN qlinear kernels, no torchao.

int8 path. `to_qdq_module` rewrites every QuantLinear of the converted model (Quantizer.convert, qmodel.py)
into the form PT2E's convert step produces, with the same qparams (and int8 attention's QuantAttention into
QDQAttention, which stays fp32 math here):

    x -> quantized_decomposed.quantize_per_tensor -> dequantize_per_tensor --+
    int8 weight buffer -> dequantize_per_channel(axis 0) -> (t) ------------ addmm/mm (+ bias)

With `torch._inductor.config.freezing` the weights become constants and Inductor's freezing patterns
(torch/_inductor/fx_passes/quantization.py) replace dequant -> addmm/mm <- t <- dequant_per_channel with
onednn.qlinear_prepack + onednn.qlinear_pointwise (counter qlinear_weight_prepack_matcher_count), then fuse a
following quantize (and GELU) into the kernel's 8-bit output (qlinear_unary_matcher_count) and a following
residual add into the kernel (qlinear_binary_matcher_count).

Activations are emitted as uint8 whatever the observer's dtype: the pattern matches int8 activations too, but
oneDNN (v3.12 in torch 2.13) then runs the matmul on its reference implementation (ONEDNN_VERBOSE shows
`matmul,ref_int8:any` for src s8 against the prepacked weight, `brg_matmul:avx512_core_vnni` for src u8, each
with its time: `ONEDNN_VERBOSE=1 python bert_ptq.py --backend inductor` shows them), orders of magnitude slower
than the JIT kernel. An int8 grid is
exactly the uint8 grid shifted by 128 (zero point + 128), so nothing changes numerically. Weights must be int8
with zero point 0 (uint8 symmetric weights, zero point 128, are shifted onto that grid the same way); asymmetric
weights are refused.

Inductor specialises on shapes: the runner exports the module once with dynamic batch/seq and compiles one
frozen graph per input shape (dynamic=False), lazily on first use, cached by shape. Evidence comes from the
compiled graph itself (a post-grad pass counts onednn int8 GEMMs and the remaining fp32 matmuls) and from
Inductor's pattern counters, recorded as deltas around each compile.
"""
from __future__ import annotations

import copy
import functools
import time
import warnings
from collections import Counter
from typing import Callable

import numpy as np
import torch

from ..errors import UserError
from ..qmodel import LogitsOnly, QuantAttention, QuantLinear, channel_multiply
from .base import MODULE, Engine, Inputs, KernelEvidence
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


def _qd():
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


class QDQLinear(torch.nn.Module):
    """A QuantLinear as quantized_decomposed q/dq ops around F.linear, with the int8 weight as a buffer.

    Computes what QuantLinear computes (up to float rounding order): dq(q(x * m)) @ dq(q(W))^T + b, m the
    runtime SmoothQuant multiplier (QuantLinear.channel_mul; none by default).
    """

    def __init__(self, ql: QuantLinear):
        super().__init__()
        qd = _qd()
        a_qmin, a_qmax = ql.act_range
        # always uint8: oneDNN runs u8 x s8 on its JIT brgemm/VNNI kernels but s8 x s8 on the reference
        # (ref_int8) matmul, far slower (module docstring). int8 q in [-128, 127] with zero point z is exactly
        # the uint8 grid q + 128 with zero point z + 128 (same dequantized values).
        shift = 128 if a_qmin < 0 else 0
        self.x_scale, self.x_zp = float(ql.act_scale), int(ql.act_zero_point) + shift
        self.x_qmin, self.x_qmax = a_qmin + shift, a_qmax + shift
        self.x_dtype = torch.uint8

        w, (w_qmin, w_qmax) = ql.weight.detach(), ql.weight_range
        w_scale, w_zp = ql.weight_scale.float(), ql.weight_zero_point
        out_features = w.shape[0]
        if not ql.per_channel:  # per-tensor weights: the per-channel form with one repeated scale
            w_scale, w_zp = w_scale.reshape(1).expand(out_features), w_zp.reshape(1).expand(out_features)
        w_zp = w_zp.to(torch.int64)
        shift = 0 if w_qmin < 0 else 128  # uint8 grid q in [0, 255] -> int8 q - 128
        if bool((w_zp != shift).any()):
            raise UserError("inductor int8 needs symmetric weights (oneDNN int8 GEMM takes weight zero point 0)")
        q = qd.quantize_per_channel(w, w_scale.contiguous(), w_zp.contiguous(), 0, w_qmin, w_qmax, torch.int32)
        self.register_buffer("qweight", (q - shift).to(torch.int8))
        self.register_buffer("w_scale", w_scale.contiguous().clone())
        self.register_buffer("w_zp", torch.zeros(out_features, dtype=torch.int64))
        self.bias = ql.bias
        self.register_buffer("channel_mul", ql.channel_mul)  # runtime SmoothQuant, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        x = channel_multiply(x, self.channel_mul)
        args = (self.x_scale, self.x_zp, self.x_qmin, self.x_qmax, self.x_dtype)
        xd = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *args), *args)
        grid = torch.iinfo(self.qweight.dtype)  # the int8 buffer's own range
        w = qd.dequantize_per_channel(self.qweight, self.w_scale, self.w_zp, 0, grid.min, grid.max, self.qweight.dtype)
        return torch.nn.functional.linear(xd, w, self.bias)


class QDQAttention(QuantAttention):
    """A QuantAttention whose operands go through quantized_decomposed q/dq with Python-number qparams, which
    torch.export can trace (torch's fake-quant ops with tensor qparams have no meta kernel). Inductor has no int8
    attention kernel: it runs these as fp32 math around fp32 batched matmuls (Engine.int8_attention is False)."""

    def __init__(self, qa: QuantAttention):
        super().__init__({})
        self.qparams = {}
        for name, (qmin, qmax) in qa.ranges.items():
            # uint8 like QDQLinear's activations (the same values; Inductor fuses a linear's following quantize into
            # its u8 output and expects u8 there)
            shift = 128 if qmin < 0 else 0
            zero_point = int(getattr(qa, f"{name}_zero_point")) + shift
            self.qparams[name] = (float(getattr(qa, f"{name}_scale")), zero_point, qmin + shift, qmax + shift, torch.uint8)

    def operand(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.qparams:
            return x
        qd = _qd()
        args = self.qparams[name]
        return qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *args), *args)


def to_qdq_module(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a converted model with every QuantLinear replaced by a QDQLinear and every QuantAttention by a
    QDQAttention (same qparams)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(getattr(m, "quant_attention", None), QuantAttention):
            m.quant_attention = QDQAttention(m.quant_attention)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, QDQLinear(m))
    return model.eval()


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
