"""PyTorch eager: the fp32 baseline every speedup is measured against, and torch.profiler's op-kind split that
eager and Inductor share."""
from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from .base import OP_KINDS, Inputs, KernelEvidence

# torch.profiler event name -> op kind: the first group with a substring of the lower-cased name wins. Eager
# records aten ops (aten::linear, aten::scaled_dot_product_attention, ...); Inductor records its extern kernels
# (mkl::_mkl_linear, onednn::qlinear_pointwise, aten::bmm) and, with cpp.enable_kernel_profile, each generated
# kernel under a name built from the aten ops it fused (cpp_fused__softmax_..., cpp_fused_addmm_gelu_...).
EVENT_KINDS = (
    ("attention", ("softmax", "bmm", "scaled_dot_product", "aten::matmul")),
    ("norm_act", ("layer_norm", "gelu", "tanh", "erf")),
    ("gemm", ("linear", "addmm", "aten::mm", "qlinear")),
    ("norm_act", ("aten::add", "aten::mul", "aten::div", "aten::sub", "aten::rsub")),
)


def event_kind(name: str) -> str | None:
    """The op kind of a profiler event name, or None (then its children are booked, or it is other)."""
    lower = name.lower()
    return next((kind for kind, marks in EVENT_KINDS if any(m in lower for m in marks)), None)


def _book(event, into: dict[str, float]) -> None:
    """Book an event's total time under its kind; an event of no kind (Inductor's compiled region) books its own
    time as other and its children by theirs."""
    kind = event_kind(event.name)
    if kind or not event.cpu_children:
        into[kind or "other"] += event.cpu_time_total / 1e3
        return
    into["other"] += event.self_cpu_time_total / 1e3
    for child in event.cpu_children:
        _book(child, into)


def profile_calls(call: Callable[[], object], calls: int, between: Callable[[], None] | None = None) -> list[dict[str, float]]:
    """Per call (after a warm-up call), the ms torch.profiler counted in the call's top-level events, by OP_KINDS:
    what Engine.op_times returns. Time between those events (Python between aten ops) is left to `outside`."""
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # kineto prints every profiler start and stop above ERROR
    call()
    out = []
    for _ in range(calls):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            call()
        kinds = dict.fromkeys(OP_KINDS, 0.0)
        for event in prof.events():
            if event.cpu_parent is None:
                _book(event, kinds)
        out.append(kinds)
        if between:
            between()
    return out


class TorchRunner:
    """Runs an nn.Module under inference_mode with a fixed intra-op thread count."""

    def __init__(self, model: torch.nn.Module, input_names: tuple[str, ...], threads: int):
        self.model = model  # callers pass eval-mode models (exported graphs refuse .eval())
        self.input_names = input_names
        self.threads = threads

    def __call__(self, inputs: Inputs) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            out = self.model(**{k: torch.from_numpy(inputs[k]) for k in self.input_names})
        logits = out.logits if hasattr(out, "logits") else out[0] if isinstance(out, (tuple, list)) else out
        return logits.float().numpy()

    def kernels(self) -> KernelEvidence:
        """Module count by type: float nn.Linear vs torch.ao dynamic int8 Linear (quantized::linear_dynamic)."""
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

        modules = list(self.model.modules())
        int8 = sum(isinstance(m, DynamicQuantLinear) for m in modules)
        fp32 = sum(type(m) is torch.nn.Linear for m in modules)
        details = {k: n for k, n in (("aten::linear", fp32), ("quantized::linear_dynamic", int8)) if n}
        return KernelEvidence(int8=int8, fp32=fp32, details=details)


def eager_profiler(model: torch.nn.Module, input_names: tuple[str, ...]):
    """profile.OpTimes of a module run eagerly (stateless: the timed model itself is profiled)."""
    def op_times(threads: int, inputs: Inputs, calls: int, between: Callable[[], None] | None = None):
        runner = TorchRunner(model, input_names, threads)
        return profile_calls(lambda: runner(inputs), calls, between)

    return op_times
