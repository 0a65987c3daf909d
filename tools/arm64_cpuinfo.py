"""Print an arm64 /proc/cpuinfo for the CPU this process runs on. Run it inside the emulated guest.

Why: qemu-user shows the guest the host's x86 /proc/cpuinfo, and ONNX Runtime's CPU detection crashes on it
once /sys is mounted (which OpenVINO needs). tools/arm64_check.sh bind-mounts this file over it instead. The
CPU id is read from the emulated CPU itself (MIDR_EL1, which Linux lets user space read and qemu emulates) and
the features from the auxiliary vector, so the libraries pick kernels the emulated CPU really has.
usage: python3 arm64_cpuinfo.py NUM_CPUS
"""
from __future__ import annotations

import ctypes
import mmap
import struct
import sys

# Bit n of AT_HWCAP / AT_HWCAP2 -> the name Linux prints (arch/arm64 hwcap order).
HWCAP = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop "
         "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg").split()
HWCAP2 = ("dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm svebf16 "
          "i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme smei16i64 smef64f64 smei8i32 smef16f32 smeb16f32 "
          "smef32f32 smefa64 wfxt ebf16 sveebf16 cssc rprfm sve2p1 sme2").split()
AT_HWCAP, AT_HWCAP2 = 16, 26


def read_midr() -> int:
    """Execute `mrs x0, midr_el1; ret` from an executable page."""
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(struct.pack("<2I", 0xD5380000, 0xD65F03C0))
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    return ctypes.CFUNCTYPE(ctypes.c_uint64)(address)()


def features() -> list[str]:
    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    caps = [(libc.getauxval(AT_HWCAP), HWCAP), (libc.getauxval(AT_HWCAP2), HWCAP2)]
    return [name for bits, names in caps for i, name in enumerate(names) if bits >> i & 1]


def main() -> None:
    midr, feats = read_midr(), " ".join(features())
    for cpu in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
        print(f"processor\t: {cpu}\nBogoMIPS\t: 100.00\nFeatures\t: {feats}\n"
              f"CPU implementer\t: 0x{(midr >> 24) & 0xFF:02x}\nCPU architecture: 8\n"
              f"CPU variant\t: 0x{(midr >> 20) & 0xF:x}\nCPU part\t: 0x{(midr >> 4) & 0xFFF:03x}\n"
              f"CPU revision\t: {midr & 0xF}\n")


if __name__ == "__main__":
    main()
