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
        """Module count by type: float nn.Linear vs torch.ao dynamic int8 Linear (quantized::linear_dynamic)."""
        from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

        modules = list(self.model.modules())
        int8 = sum(isinstance(m, DynamicQuantLinear) for m in modules)
        fp32 = sum(type(m) is torch.nn.Linear for m in modules)
        details = {k: n for k, n in (("aten::linear", fp32), ("quantized::linear_dynamic", int8)) if n}
        return KernelEvidence(int8=int8, fp32=fp32, details=details)
