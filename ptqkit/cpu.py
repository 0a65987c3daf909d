"""The CPU this process runs on, as /proc/cpuinfo describes it. Torch-free: the deployment runtime describes a
target server with it, and sysinfo adds the int8 level and the libraries' view for the host's reports, so every
report names its CPU with the same keys."""
from __future__ import annotations

import os
import platform

# Flags that decide which int8/bf16 kernels an engine can use.
INTERESTING_FLAGS = (
    "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16",
    "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2", "svei8mm", "sme",
)


def _fields() -> tuple[dict[str, str], set[str]]:
    """The first value of each /proc/cpuinfo key, and every CPU's feature flags."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                fields.setdefault(key, value)
                if key in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return fields, flags


def cpu_flags() -> set[str]:
    return _fields()[1]


def describe() -> dict:
    """model (ARM: the MIDR part number), arch, cpus, the int8-relevant flags; on ARM the MIDR implementer and part,
    under qemu-user the emulated CPU (QEMU_CPU)."""
    fields, flags = _fields()
    model = fields.get("model name") or fields.get("CPU part") or platform.processor() or platform.machine()
    info: dict = {"model": model, "arch": platform.machine(), "cpus": os.cpu_count(),
                  "flags": [f for f in INTERESTING_FLAGS if f in flags]}
    for src, dst in (("CPU implementer", "implementer"), ("CPU part", "part")):
        if src in fields:
            info[dst] = fields[src]
    if os.environ.get("QEMU_CPU"):
        info["qemu_cpu"] = os.environ["QEMU_CPU"]
    return info
