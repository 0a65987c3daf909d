"""What the numbers were measured on: CPU model, the ISA flags that decide int8 speed, library versions."""
from __future__ import annotations

import importlib.metadata
import platform

# Flags that decide which int8/bf16 kernels an engine can use.
INTERESTING_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2",
)
PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "torchao", "numpy")


def cpu_info() -> dict:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "CPU part") and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return {"model": model, "arch": platform.machine(), "flags": [f for f in INTERESTING_FLAGS if f in flags]}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
