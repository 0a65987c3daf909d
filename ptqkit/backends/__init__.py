"""Engines that run a model for real; each file is one engine behind the interface in base.py."""
from __future__ import annotations

import importlib.util

from ..errors import UserError

BACKENDS = ("openvino", "onnxruntime", "inductor")
_PACKAGES = {"openvino": "openvino", "onnxruntime": "onnxruntime", "inductor": "torch"}


def get_backend(name: str):
    """The engine object for `name`; a clear error if unknown or its package is missing."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} (or auto)")
    if importlib.util.find_spec(_PACKAGES[name]) is None:
        raise UserError(f"backend {name} needs the '{_PACKAGES[name]}' package: pip install -r requirements.txt")
    if name == "openvino":
        from .openvino import OpenVINOBackend

        return OpenVINOBackend()
    if name == "inductor":
        from .inductor import InductorBackend

        return InductorBackend()
    from .onnxruntime import ORTBackend

    return ORTBackend()
