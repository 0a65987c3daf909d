"""What the numbers were measured on: CPU model, the ISA flags that decide int8 speed, library versions.

`int8_isa` names the instruction set the int8 kernels use, which decides the quantization contract: x86 CPUs
without VNNI multiply u8 x s8 with VPMADDUBSW, whose pairwise sums saturate at 16 bits (see config.py).
"""
from __future__ import annotations

import functools
import importlib.metadata
import os
import platform

from .cpu import cpu_flags, describe
PACKAGES = ("torch", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "torchao", "numpy")

# x86 int8 ISA levels, lowest first. Levels without VNNI accumulate u8 x s8 pairs in saturating 16-bit sums.
X86_INT8_ISAS = ("sse", "avx2", "avx512", "avx_vnni", "avx512_vnni", "amx")
SATURATING_ISAS = frozenset({"sse", "avx2", "avx512"})
ARM_INT8_ISAS = ("arm_neon", "arm_dotprod", "arm_i8mm")
# oneDNN's ONEDNN_MAX_CPU_ISA values (also honoured by OpenVINO's CPU plugin and Inductor) -> our level.
ONEDNN_ISA_CAPS = {
    "SSE41": "sse", "AVX": "sse", "AVX2": "avx2", "AVX2_VNNI": "avx_vnni", "AVX2_VNNI_2": "avx_vnni",
    "AVX512_CORE": "avx512", "AVX512_CORE_VNNI": "avx512_vnni", "AVX512_CORE_BF16": "avx512_vnni",
    "AVX512_CORE_FP16": "avx512_vnni", "AVX10_1_512": "avx512_vnni", "AVX512_CORE_AMX": "amx",
    "AVX512_CORE_AMX_FP16": "amx", "AVX10_1_512_AMX": "amx", "AVX10_1_512_AMX_FP16": "amx", "DEFAULT": None, "ALL": None,
}


# Caps that leave out oneDNN's bf16 kernels (AVX512_CORE_BF16 and above keep them).
NO_BF16_CAPS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI")


def onednn_bf16_capped() -> bool:
    """ONEDNN_MAX_CPU_ISA caps oneDNN below its bf16 kernels: a simulated CPU without bf16."""
    return os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in NO_BF16_CAPS


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a container's or a Ray actor's share)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cpu_info() -> dict:
    """The CPU for a report: cpu.describe() plus the int8 level and what each library says about it."""
    return {**describe(), **int8_isa_info()}


def cpu_label(cpu: dict) -> str:
    """The CPU a figure came from, for its title: model and int8 level."""
    return f"{cpu['model']} ({cpu['arch']}, int8 ISA {cpu.get('int8_isa', '?')})"


def classify_int8_isa(arch: str, flags: set[str], onednn_cap: str | None = None) -> str:
    """The int8 level from CPU flags, capped by ONEDNN_MAX_CPU_ISA (engines built on oneDNN honour it)."""
    if arch in ("aarch64", "arm64"):
        return "arm_i8mm" if "i8mm" in flags else "arm_dotprod" if "asimddp" in flags else "arm_neon"
    if "amx_int8" in flags:
        level = "amx"
    elif "avx512_vnni" in flags:
        level = "avx512_vnni"
    elif "avx_vnni" in flags:
        level = "avx_vnni"
    elif "avx512bw" in flags:
        level = "avx512"
    else:
        level = "avx2" if "avx2" in flags else "sse"
    cap = ONEDNN_ISA_CAPS.get((onednn_cap or "").upper())
    if cap and X86_INT8_ISAS.index(cap) < X86_INT8_ISAS.index(level):
        level = cap
    return level


def int8_isa_info(flags: set[str] | None = None) -> dict:
    """`int8_isa` plus what each library says about the CPU, so a reader can check the classification."""
    if flags is None:
        flags = cpu_flags()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    sources: dict = {"cpu_flags": classify_int8_isa(platform.machine(), flags)}
    if cap:
        sources["onednn_max_cpu_isa"] = cap
    try:
        import torch

        sources["torch_capability"] = torch.backends.cpu.get_cpu_capability()
        sources["torch_vnni"] = bool(torch.cpu._is_vnni_supported())
        sources["torch_amx"] = bool(torch.cpu._is_amx_tile_supported())
    except (ImportError, AttributeError):
        pass
    try:
        import openvino as ov

        sources["openvino_capabilities"] = list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - optional evidence; OpenVINO may be absent or fail to start
        pass
    return {"int8_isa": classify_int8_isa(platform.machine(), flags, cap), "int8_isa_sources": sources}


@functools.lru_cache(maxsize=1)
def host_int8_isa() -> str:
    """The int8 level of this host, read once: every quantizer in the process follows the same contract."""
    return classify_int8_isa(platform.machine(), cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA"))


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out
