"""Dataclass configs, including the per-device quantization contract of the reference compiler."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

DEVICES = ("x86", "aarch64")
CALIB_METHODS = ("minmax", "percentile", "mse", "entropy")

# Activation calibration chosen per device by measurement on the default model and task (OpenVINO int8, f32 hint,
# 1,000 validation sentences, fp32 accuracy 0.836; accuracy / argmax agreement with the fake-quant model):
#   x86 (per-channel weights):    minmax 0.835/0.991, percentile 0.833/0.993, mse 0.836/0.982, entropy 0.836/0.993
#   aarch64 (per-tensor weights): minmax 0.832/0.983, percentile 0.837/0.994, mse 0.830/0.986, entropy 0.831/0.988
# Differences are a few sentences; ties broken by agreement.
DEFAULT_CALIB_METHOD = {"x86": "entropy", "aarch64": "percentile"}


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: int8 grid, symmetric or affine, per-tensor or per-channel.

    `ch_axis` is None for per-tensor; for a linear weight [out, in] per-channel uses axis 0.
    `method` picks how the observer turns statistics into a range (see observers.py).
    """

    dtype: str = "int8"  # "int8" (qmin=-128, qmax=127) or "uint8" (0..255)
    symmetric: bool = True
    ch_axis: int | None = None
    method: str = "minmax"
    percentile: float = 99.99  # for method == "percentile"
    bins: int = 2048  # histogram bins for percentile/mse/entropy

    @property
    def qmin(self) -> int:
        return -128 if self.dtype == "int8" else 0

    @property
    def qmax(self) -> int:
        return 127 if self.dtype == "int8" else 255


@dataclass(frozen=True)
class QuantConfig:
    """What to quantize and how; `for_device` gives the reference contract for a target CPU."""

    device: str = "x86"
    activation: QuantSpec = field(default_factory=QuantSpec)
    weight: QuantSpec = field(default_factory=lambda: QuantSpec(ch_axis=0))
    exclude: tuple[str, ...] = ()  # fnmatch patterns on quantization-point names, e.g. "*.pooler.*"
    attention_matmuls: bool = False  # also quantize Q*K^T and P*V

    @staticmethod
    def for_device(device: str, **overrides: Any) -> "QuantConfig":
        """x86: per-channel weights (oneDNN); aarch64: per-tensor weights (ACL overflowed per-channel)."""
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        weight = QuantSpec(ch_axis=0) if device == "x86" else QuantSpec(ch_axis=None)
        activation = QuantSpec(method=DEFAULT_CALIB_METHOD[device])
        return replace(QuantConfig(device=device, activation=activation, weight=weight), **overrides)

    def with_calib_method(self, method: str, percentile: float | None = None) -> "QuantConfig":
        if method not in CALIB_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
        act = replace(self.activation, method=method)
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
        )
