"""Dataclass configs, including the per-device quantization contract of the reference compiler."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .bench import BenchConfig
from .calibration import METHODS
from .sysinfo import ARM_INT8_ISAS, SATURATING_ISAS, X86_INT8_ISAS, host_int8_isa

DEVICES = ("x86", "aarch64")
INT8_ATTENTION = ("auto", "on", "off")  # RunConfig.int8_attention / --int8-attention
WEIGHT_ROUNDINGS = ("nearest", "gptq")  # --weight-rounding; gptq: rounding.py
ISAS = {"x86": X86_INT8_ISAS, "aarch64": ARM_INT8_ISAS}
CALIB_METHODS = tuple(METHODS)  # the registry in calibration.py

# Activations per device, chosen by measurement on the default model and task: each recipe's fake-quant agreement
# with fp32, accuracy and logit MSE are in docs/fidelity.md.
# x86: affine uint8 (a zero point: GELU outputs are nearly all >= -0.17, so a symmetric grid wastes half its levels
# there), min/max ranges, after runtime SmoothQuant on every linear input. aarch64 keeps symmetric int8 with
# percentile ranges and no smoothing: affine agreed better with fp32 there, but OpenVINO's int8 of it disagreed
# with the fake-quant model on the host, while the symmetric contract passed the emulated arm64 check; smoothing
# with one weight scale per tensor cannot absorb the outliers. A symmetric-only method (entropy) switches an affine
# grid back to symmetric (with_calib_method).
DEFAULT_CALIB_METHOD = {"x86": "minmax", "aarch64": "percentile"}
DEFAULT_SMOOTH_ALPHA: dict[str, float | None] = {"x86": 0.95, "aarch64": None}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: int8 grid, symmetric or affine, per-tensor or per-channel.

    `ch_axis` is None for per-tensor; for a linear weight [out, in] per-channel uses axis 0.
    `method` picks how the observer turns statistics into a range (see observers.py).
    """

    dtype: str = "int8"  # storage type: "int8" (-128..127) or "uint8" (0..255)
    bits: int = 8  # levels used inside the storage type: 7 keeps int8 weights in -64..63 (see for_device)
    symmetric: bool = True
    ch_axis: int | None = None
    method: str = "minmax"
    percentile: float = 99.99  # for method == "percentile"
    bins: int = 2048  # histogram bins for percentile/mse/entropy

    @property
    def qmin(self) -> int:
        return -(1 << (self.bits - 1)) if self.dtype == "int8" else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.dtype == "int8" else (1 << self.bits) - 1

    @property
    def storage_range(self) -> tuple[int, int]:
        """The full range of the storage type: what QuantizeLinear/DequantizeLinear in ONNX are declared with."""
        return (-128, 127) if self.dtype == "int8" else (0, 255)


# The attention matmul operands (QuantConfig.attention_matmuls) on every device: q, K^T and V symmetric int8 with
# percentile ranges, the softmax output P an unsigned grid (it lies in [0, 1]: zero point 0 keeps all 256 levels)
# with its range by MSE. On the default model these kept more agreement with fp32 than min/max ranges (the
# figures are in docs/attention.md). s8 x s8 and u8 x s8 are what
# OpenVINO's int8 attention subgraph and ONNX Runtime's MatMulIntegerToFloat take.
ATTENTION_OPERAND_SPEC = QuantSpec(method="percentile")
ATTENTION_PROBS_SPEC = QuantSpec(dtype="uint8", symmetric=False, method="mse")


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how; `for_device` gives the reference contract for a target CPU."""

    device: str = "x86"
    activation: QuantSpec = field(default_factory=QuantSpec)
    weight: QuantSpec = field(default_factory=lambda: QuantSpec(ch_axis=0))
    exclude: tuple[str, ...] = ()  # fnmatch patterns on quantization-point names, e.g. "*.pooler.*"
    attention_matmuls: bool = False  # also quantize Q*K^T and P*V (operand grids: ATTENTION_OPERAND_SPEC, ..._PROBS_SPEC)
    isa: str | None = None  # the int8 instruction set the contract was made for (sysinfo.classify_int8_isa)
    # runtime SmoothQuant strength on every linear input; recipe.calibrate applies it (library users call
    # smoothquant.smooth_runtime between Quantizer.calib and the calibration batches)
    smooth_alpha: float | None = None

    @staticmethod
    def for_device(device: str, isa: str | None = None, **overrides: Any) -> "QuantConfig":
        """The contract for a target CPU.

        x86: per-channel weights (oneDNN). On x86 ISAs without VNNI (avx2, avx512) the engines multiply u8 x s8
        with VPMADDUBSW, whose pairwise sums saturate at 16 bits: 255 * 127 * 2 does not fit, 255 * 64 * 2 does.
        So there the weights use 7 bits (-64..63, stored as int8) and the integer results stay exact.
        x86 activations are affine uint8 (0..255 with a zero point) on every ISA: the operand VNNI and ONNX
        Runtime's AVX2 kernels take natively (docs/isa.md has each form measured per engine), and a
        pair sum of u8 x 7-bit products fits 16 bits whatever the zero point. Every linear input is smoothed at
        runtime (`smooth_alpha`, see DEFAULT_SMOOTH_ALPHA).
        aarch64: per-tensor weights (ACL overflowed per-channel), symmetric int8 activations, no smoothing (see
        DEFAULT_CALIB_METHOD); ARM dot products accumulate in 32 bits.
        `isa` defaults to this host's when the host is the target's architecture.
        """
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        isa = isa or _default_isa(device)
        if isa not in ISAS[device]:
            raise ValueError(f"int8 ISA {isa!r} is not one of --device {device}; choose one of {', '.join(ISAS[device])}")
        narrow = device == "x86" and isa in SATURATING_ISAS
        weight = QuantSpec(ch_axis=0 if device == "x86" else None, bits=7 if narrow else 8)
        if device == "x86":
            activation = QuantSpec(method=DEFAULT_CALIB_METHOD[device], dtype="uint8", symmetric=False)
        else:
            activation = QuantSpec(method=DEFAULT_CALIB_METHOD[device])
        config = QuantConfig(device=device, activation=activation, weight=weight, isa=isa,
                             smooth_alpha=DEFAULT_SMOOTH_ALPHA[device])
        return replace(config, **overrides)

    def with_calib_method(self, method: str, percentile: float | None = None) -> "QuantConfig":
        if method not in CALIB_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
        act = replace(self.activation, method=method, symmetric=self.activation.symmetric or METHODS[method].symmetric_only)
        if percentile is not None:
            act = replace(act, percentile=percentile)
        return replace(self, activation=act)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exclude"] = list(self.exclude)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "QuantConfig":
        return QuantConfig(
            device=d["device"],
            activation=QuantSpec(**d["activation"]),
            weight=QuantSpec(**d["weight"]),
            exclude=tuple(d.get("exclude", ())),
            attention_matmuls=bool(d.get("attention_matmuls", False)),
            isa=d.get("isa"),
            smooth_alpha=d.get("smooth_alpha"),
        )


def _default_isa(device: str) -> str:
    """This host's int8 ISA when it is of the target's architecture; otherwise the target's safe baseline."""
    host = host_int8_isa()
    return host if host in ISAS[device] else ISAS[device][1]


@dataclass
class RunConfig:
    """One run of the pipeline. Every default is declared here (and in BenchConfig); the CLIs read them."""

    device: str = "x86"
    model: str = "default"
    task: str = "rotten_tomatoes"
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    encoding: str = "utf-8"  # of the user's files
    output_dir: str = "artifacts"
    cache_dir: str | None = None
    eval_limit: int | None = None
    batch_size: int = 32
    max_seq_len: int = 128
    backend: str = "auto"  # or an engine name from backends.ENGINES
    isa: str | None = None  # target int8 ISA (sysinfo); None: this host's
    calib_batches: int = 32
    calib_method: str | None = None  # None: the device's measured default (config.DEFAULT_CALIB_METHOD)
    skip_peers: bool = False
    bench_only: bool = False  # skip evaluation: build, check kernels and time only
    max_accuracy_drop: float | None = None  # points of the task metric; enables auto-fallback
    fallback_holdout: int = 1000  # size of the train holdout that auto-fallback and the frontier score on
    max_slowdown: float | None = None  # percent of int8 latency; enables the per-layer precision frontier
    qat_epochs: float = 0.0
    weight_rounding: str = "nearest"  # or "gptq": adaptive rounding of the int8 weights (rounding.py)
    # int8 attention matmuls (QuantConfig.attention_matmuls): on, off, or auto = the forced engine's preference
    # (Engine.int8_attention), on under --backend auto; off on aarch64 and without VNNI (recipe.int8_attention)
    int8_attention: str = "auto"
    smoothquant: float | None = None  # SmoothQuant alpha; None = off (measured: no reliable gain on MiniLM)
    layer_report: bool = False  # calib.py: print and save per-layer output error against fp32
    allow_no_int8: bool = False  # report an int8 model that ran without int8 kernels instead of failing
    bench: BenchConfig = field(default_factory=BenchConfig)
