"""LSQ (Esser et al. 2020, "Learned Step Size Quantization"): QAT's fake-quant with a learnable scale. It replaces a
frozen observers.Observer during QAT; `to_observer()` writes the learned scale back for export."""
from __future__ import annotations

import math

from torch import Tensor, nn

from .observers import EPS, Observer
from .qmodel import channel_multiply, fake_quantize


class LSQQuantizer(nn.Module):
    """Fake-quant with a learnable scale (LSQ, Esser et al. 2020) for QAT, initialised from a frozen Observer.

    forward: qmodel.fake_quantize with the LSQ gradient: x's passes straight through rounding inside the grid,
    s's is LSQ's ((q - z) - x / s inside, the clamped level outside) multiplied by g = 1 / sqrt(N * Q_P) with
    N = x.numel() / scale.numel() (elements sharing one scale, batch included, so the step does not grow with
    batch size) and Q_P = (qmax - qmin) // 2 (127). z stays the calibrated zero point (0 or 128 on symmetric
    grids, the affine one otherwise): only the step is learned. Per-channel scales broadcast along ch_axis.
    The observer's channel_mul (runtime SmoothQuant) is applied first, as the observer did.
    """

    def __init__(self, observer: Observer):
        super().__init__()
        spec = observer.spec
        if not bool(observer.qparams_valid):
            raise RuntimeError(f"observer {observer.name!r} is not frozen: call freeze() before LSQQuantizer.from_observer")
        self.spec = spec
        self.name = observer.name
        self.fake_quant = True
        # calibration statistics for to_observer(); a plain dict, not a child Observer, so module scans and
        # state_dict() see only the LSQ parameters
        self.calib_state = {k: v.detach().clone() for k, v in observer.state_dict().items()}
        self.scale = nn.Parameter(observer.scale.detach().clone().float())
        self.register_buffer("zero_point", observer.zero_point.detach().clone())
        self.register_buffer("channel_mul", observer.channel_mul.detach().clone())

    @classmethod
    def from_observer(cls, observer: Observer) -> "LSQQuantizer":
        """The QAT quantizer for a frozen observer (same as the constructor; reads well at call sites)."""
        return cls(observer)

    def forward(self, x: Tensor) -> Tensor:
        x = channel_multiply(x, self.channel_mul)
        if not self.fake_quant:
            return x
        q_pos = (self.spec.qmax - self.spec.qmin) // 2
        g = 1.0 / math.sqrt(x.numel() / self.scale.numel() * q_pos)
        return fake_quantize(x, self.scale.clamp_min(EPS), self.zero_point, self.spec.ch_axis, self.spec.qmin,
                             self.spec.qmax, grad_factor=g)

    def export_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale float32, zero_point int32) as learned, in the Observer's format."""
        return self.scale.detach().clamp_min(EPS).clone(), self.zero_point.clone()

    def to_observer(self) -> Observer:
        """A frozen Observer (calibration statistics kept) carrying the learned scale, for export and saving."""
        obs = Observer(self.spec)
        obs.name = self.name
        obs.load_state_dict(self.calib_state)
        obs.scale, obs.zero_point = self.export_qparams()
        obs.qparams_valid.fill_(True)
        obs.freeze()
        obs.fake_quant = self.fake_quant
        return obs
