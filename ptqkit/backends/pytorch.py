"""PyTorch eager: the fp32 baseline every speedup is measured against."""
from __future__ import annotations

import numpy as np
import torch

from .base import Inputs, KernelEvidence


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
        linears = sum(isinstance(m, torch.nn.Linear) for m in self.model.modules())
        return KernelEvidence(fp32=linears, details={"aten::linear": linears})
