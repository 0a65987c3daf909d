"""The small interface every engine implements: compile for a precision and thread count, run, show evidence."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

Inputs = dict[str, np.ndarray]


@dataclass
class KernelEvidence:
    """Compute kernels counted in the engine's own runtime graph, by the precision they really ran in."""

    int8: int = 0
    fp32: int = 0
    other: int = 0  # e.g. bf16 kernels
    details: dict[str, int] = field(default_factory=dict)  # kernel/op type -> count


class Runner(Protocol):
    """A compiled model: takes a tokenized batch (int64 arrays), returns logits."""

    input_names: tuple[str, ...]

    def __call__(self, inputs: Inputs) -> np.ndarray: ...

    def kernels(self) -> KernelEvidence: ...


class Backend(Protocol):
    """An engine: compile an ONNX (or engine-native) artefact for a precision and an intra-op thread count."""

    name: str
    int8_variants: tuple[str, ...]  # precisions our int8 model can be compiled with ("int8", "int8-bf16", ...)

    def compile(self, model_path, threads: int, precision: str = "fp32") -> Runner: ...
