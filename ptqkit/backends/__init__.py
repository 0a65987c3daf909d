"""Engines that run a model for real; each file is one engine behind the interface in base.py.

A new engine is one file here (a base.Engine subclass) plus one line in ENGINES (in _FILE_TAKERS when it
compiles the exported ONNX file: those run where torch is absent, so predict.py, evaluate.py and sweeps offer them).
"""
from __future__ import annotations

import importlib
import importlib.util

from ..errors import UserError
from .base import Engine

_FILE_TAKERS = {  # name -> "module:class" of the engines whose `takes` is ONNX (the exported file)
    "openvino": "ptqkit.backends.openvino:OpenVINOBackend",
    "onnxruntime": "ptqkit.backends.onnxruntime:ORTBackend",
}
ENGINES = {**_FILE_TAKERS, "inductor": "ptqkit.backends.inductor:InductorBackend"}
# Named without importing the engines' modules (Inductor's imports torch); the first is the default wherever a
# command compiles exported files.
FILE_ENGINES = tuple(_FILE_TAKERS)


def engine_class(name: str) -> type[Engine]:
    """The engine class registered as `name` (its module imports no engine package until compile)."""
    if name not in ENGINES:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(ENGINES)} (or auto)")
    module, _, cls = ENGINES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


def installed(name: str) -> bool:
    return importlib.util.find_spec(engine_class(name).requires) is not None


def get_backend(name: str) -> Engine:
    """The engine object for `name`; a clear error if unknown or its package is missing."""
    cls = engine_class(name)
    if not installed(name):
        raise UserError(f"backend {name} needs the '{cls.requires}' package: pip install -r requirements.txt")
    return cls()


def installed_engines() -> list[str]:
    """The --backend auto candidates whose package is installed."""
    return [name for name in ENGINES if engine_class(name).auto and installed(name)]


def check_backend_name(backend: str) -> None:
    """Fail early on a bad --backend, before the model is loaded."""
    if backend == "auto":
        if not installed_engines():
            raise UserError("--backend auto needs openvino or onnxruntime: pip install -r requirements.txt")
    else:
        get_backend(backend)
