"""ptqkit: post-training int8 quantization of HF BERT-family classifiers for CPU servers.

The public API (ptqkit.api: quantize, QuantizedModel, compile, evaluate, Evaluation, benchmark) is loaded on first
use, so `import ptqkit` imports nothing: the torch-free runtime (predict.py) lives in this package too."""
from __future__ import annotations

API = ("quantize", "QuantizedModel", "compile", "evaluate", "Evaluation", "benchmark")
__all__ = list(API)


def __getattr__(name: str):
    if name in API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'ptqkit' has no attribute {name!r}")
