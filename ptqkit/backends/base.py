"""The one interface every engine implements, whatever it compiles (a file artefact or a torch module).

An engine declares the form of our model it `takes` ("onnx": the exported file; "module": the eager torch module
behind qmodel.LogitsOnly), the int8 variants it offers for our quantized model, and whether it compiles one graph
per input shape; `compile` turns that form into a Runner for a precision and an intra-op thread count, and the
Runner shows the kernels the engine really ran. The pipeline reads only these attributes, never an engine's name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol

import numpy as np

Inputs = dict[str, np.ndarray]
ONNX, MODULE = "onnx", "module"  # the forms of our model an engine can take
# What an engine's profiler time is split into (Engine.op_times): the weight GEMMs (with whatever the engine fused
# into them), attention (Q.K^T, softmax, P.V), normalisation/activation/elementwise, everything else.
OP_KINDS = ("gemm", "attention", "norm_act", "other")
# An engine's int8 computes what the fake-quant model computes when their argmax agrees on at least this share of
# sentences: the rule of --backend auto (selection.py) on the host and of predict.py --check on a target.
MIN_AGREEMENT = 0.99


@dataclass
class KernelEvidence:
    """Compute kernels counted in the engine's own runtime graph, by the precision they really ran in."""

    int8: int = 0
    fp32: int = 0
    other: int = 0  # e.g. bf16 kernels
    details: dict[str, int] = field(default_factory=dict)  # kernel/op type -> count


class Runner(Protocol):
    """A compiled model: takes a tokenized batch (int64 arrays), returns logits. A runner may also offer
    `prepare(inputs)`: get ready for calls of that shape (OpenVINO compiles a static-shape copy), which timing
    calls before its warm-up."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: Inputs) -> np.ndarray: ...

    def kernels(self) -> KernelEvidence: ...


@dataclass(frozen=True)
class ModelForms:
    """Our fp32 and int8 model in every form the pipeline produced, so that each engine reads the one it takes.

    onnx: "fp32"/"int8" -> exported file. module: "fp32"/"int8" -> qmodel.LogitsOnly over the float model and
    over the quantizer's converted model (absent where only files exist, e.g. bench.py)."""

    onnx: Mapping[str, Any]
    module: Mapping[str, Any] = field(default_factory=dict)

    def get(self, takes: str, model: str) -> Any:
        forms = self.onnx if takes == ONNX else self.module
        if model not in forms:
            raise KeyError(f"no {model} model in {takes} form here")
        return forms[model]


class Engine:
    """Base of every engine (one file in this package plus one line in backends.ENGINES).

    Subclasses set the class attributes below and implement `compile`."""

    name: str = ""
    requires: str = ""  # the Python package the engine needs
    takes: str = ONNX  # ONNX: compile() gets a file path; MODULE: a qmodel.LogitsOnly module
    int8_variants: tuple[str, ...] = ("int8",)  # precisions our int8 model runs in here; the first is the default
    variant_notes: Mapping[str, str] = MappingProxyType({})  # precision -> note shown in the report
    fixed_shapes: bool = False  # compiles one graph per input shape: evaluation pads batches to one length
    auto: bool = False  # a candidate of --backend auto (it must compile in seconds)
    int8_attention: bool = False  # runs int8 attention matmuls faster than fp32 ones (--int8-attention auto)

    profiled: bool = False  # implements op_times (its own profiler)

    @classmethod
    def runs_here(cls, precision: str) -> bool:
        """Whether this CPU runs `precision` as the host that chose it did (a target may lack the host's bf16)."""
        return True

    def compile(self, model: Any, threads: int, precision: str = "fp32") -> Runner:
        raise NotImplementedError

    def op_times(self, model: Any, threads: int, precision: str, inputs: Inputs, calls: int,
                 between: Callable[[], None] | None = None) -> list[dict[str, float]]:
        """Per call (after a warm-up call), the milliseconds the engine's own profiler counted, by OP_KINDS.

        Compiles its own copy of the model with profiling on (profiling slows calls: never the timed runner).
        `between` runs after each profiled call (profile.profile_cell times the real runner there, so that both
        see the same machine)."""
        raise NotImplementedError

    def profiler(self, model: Any, precision: str) -> Callable[..., list[dict[str, float]]] | None:
        """op_times with the model and precision bound (profile.OpTimes), or None for an engine without one."""
        if not self.profiled:
            return None
        return lambda threads, inputs, calls, between=None: self.op_times(model, threads, precision, inputs, calls, between)
