"""Observers: collect statistics on one tensor, turn them into int8/uint8 qparams, fake-quantize with them.

An `Observer` sits on one tensor of the quantized graph (an activation or a weight). An activation observer may
first multiply its input per channel (`channel_mul`, runtime SmoothQuant); everything below sees the product.
It has two switches:
`observing` (update statistics on each forward) and `fake_quant` (return fake-quantized x instead of x). With
fake_quant off the output *is* the input, so a calibrating model matches fp32 exactly.

Range methods (`QuantSpec.method`) are the registry in calibration.py: minmax uses the running min/max
(per-tensor or per-channel); histogram methods (percentile, mse, entropy) clip inside it, per-tensor only.

qparams from a range:
  symmetric:  half = (qmax - qmin) // 2 (= 127), zero_point = qmax - half (0 for int8, 128 for uint8),
              scale = amax / half. int8 therefore uses scale = amax / 127 (the common convention: +amax maps
              to 127 exactly and -128 stays reachable) rather than amax / 127.5.
  affine:     lo = min(min, 0), hi = max(max, 0) so that 0 is exact, scale = (hi - lo) / (qmax - qmin),
              zero_point = clamp(qmin - round(lo / scale), qmin, qmax).
  scale is floored at float32 eps so an all-zero tensor still gives a valid grid.

For QAT an lsq.LSQQuantizer replaces a frozen observer.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .calibration import METHODS
from .config import QuantSpec
from .qmodel import channel_multiply, fake_quantize, plain_inference

EPS = torch.finfo(torch.float32).eps


def _check_spec(spec: QuantSpec) -> None:
    """Reject combinations the observer cannot honour, at construction rather than at freeze time."""
    if spec.dtype not in ("int8", "uint8"):
        raise ValueError(f"unknown quantization dtype {spec.dtype!r}; choose int8 or uint8")
    if spec.bits not in (7, 8):
        raise ValueError(f"unsupported bit width {spec.bits}; choose 8, or 7 (weights on x86 without VNNI)")
    if spec.method not in METHODS:
        raise ValueError(f"unknown calibration method {spec.method!r}; choose one of {', '.join(METHODS)}")
    method = METHODS[spec.method]
    if method.histogram:
        if spec.ch_axis is not None:
            raise ValueError(f"method {spec.method!r} is per-tensor only (histogram); use minmax with ch_axis")
        if spec.bins < 1:
            raise ValueError(f"histogram bins must be positive, got {spec.bins}")
    method.check(spec)


class NonFiniteInput(ValueError):
    """An observed tensor held NaN or inf: the layer (named in the message) is broken, not the observer."""


class Observer(nn.Module):
    """Statistics and qparams of one tensor; identity while calibrating, fake-quant once frozen.

    Buffers (all in state_dict, so save/load reproduces the frozen qparams):
      has_stats      bool []: at least one tensor was observed.
      min_val/max_val float32 [] or [C]: running min/max ([0] until the first observation).
      hist           float64 [bins] counts of |x| (symmetric) or x (affine) over [hist_min, hist_max];
                     [0] for minmax.
      hist_min/hist_max float64 []: histogram range.
      scale/zero_point float32 / int32, [] or [C]: the qparams fake-quant uses (placeholders until frozen).
      qparams_valid  bool []: scale/zero_point were computed from the current statistics (or set by LSQ).
      channel_mul    float32 [0] or [C]: multiplier applied to x along its last axis before anything else:
                     runtime SmoothQuant (smoothquant.smooth_runtime); [0] means none.
    Shapes depend on the data (per-channel C), so loading resizes buffers to the saved shapes.
    """

    def __init__(self, spec: QuantSpec):
        super().__init__()
        _check_spec(spec)
        self.spec = spec
        self.name = ""
        self.observing = True
        self.fake_quant = False
        uses_hist = METHODS[spec.method].histogram
        self.register_buffer("has_stats", torch.tensor(False))
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))
        self.register_buffer("hist", torch.zeros(spec.bins if uses_hist else 0, dtype=torch.float64))
        self.register_buffer("hist_min", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("hist_max", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("qparams_valid", torch.tensor(False))
        self.register_buffer("channel_mul", torch.empty(0))
        self.channel_range: tuple[Tensor, Tensor] | None = None  # see track_channels (not saved: calibration only)
        self._frozen_weight: tuple[tuple, Tensor] | None = None  # see _fake_quantize_parameter (not saved)

    def extra_repr(self) -> str:
        s = self.spec
        axis = "per-tensor" if s.ch_axis is None else f"ch_axis={s.ch_axis}"
        kind = "symmetric" if s.symmetric else "affine"
        return f"name={self.name!r}, {s.dtype}, {kind}, {axis}, method={s.method}"

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        x = channel_multiply(x, self.channel_mul)
        if self.observing:
            self.observe(x)
        if not self.fake_quant:
            return x
        if not bool(self.qparams_valid):
            self._store_qparams()  # statistics changed since the last freeze: fake-quant with current ones
        if type(x) is nn.Parameter and plain_inference():
            return self._fake_quantize_parameter(x)
        return self._fake_quantize(x)

    def _fake_quantize_parameter(self, w: nn.Parameter) -> Tensor:
        """A weight's fake-quant values, computed once and reused while neither the weight nor the qparams change
        (each in-place change bumps a tensor's version): the eager fake-quant reference (auto check, evaluation)
        otherwise re-quantizes every weight on every batch, 13% of its time on the default model (issue #31).
        Costs one float copy of the quantized weights while the graph is used."""
        key = (w.data_ptr(), w._version, self.scale.data_ptr(), self.scale._version, self.zero_point.data_ptr(),
               self.zero_point._version)
        if self._frozen_weight is None or self._frozen_weight[0] != key:
            self._frozen_weight = (key, self._fake_quantize(w))
        return self._frozen_weight[1]

    def _fake_quantize(self, x: Tensor) -> Tensor:
        s = self.spec
        return fake_quantize(x, self.scale, self.zero_point, s.ch_axis, s.qmin, s.qmax)

    def freeze(self) -> None:
        """Fix qparams (kept if already computed from the current statistics), stop observing, start fake-quant."""
        if not bool(self.qparams_valid):
            self._store_qparams()
        self.observing = False
        self.fake_quant = True

    def _store_qparams(self) -> None:
        self.scale, self.zero_point = self.compute_qparams()
        self.qparams_valid.fill_(True)

    # --- statistics --------------------------------------------------------------------------------------
    @torch.no_grad()
    def observe(self, x: Tensor) -> None:
        """Fold one tensor into the running statistics; never part of autograd."""
        if x.numel() == 0:
            return
        x = x.detach().float()
        axis = self.spec.ch_axis
        if self.channel_range is not None:  # per-channel min/max first: the tensor's are theirs (one pass, not two)
            rows = x.reshape(-1, x.shape[-1])  # amin + amax: 9x faster than aminmax(dim=0) on torch 2.13's CPU
            c_lo, c_hi = rows.amin(0), rows.amax(0)
            lo, hi = c_lo.amin(), c_hi.amax()
        elif axis is None:
            lo, hi = torch.aminmax(x)
        else:
            lo, hi = torch.aminmax(x.movedim(axis % x.dim(), 0).reshape(x.shape[axis], -1), dim=1)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):  # min/max propagate NaN and show inf
            raise NonFiniteInput(f"observer {self.name!r}: input contained NaN/inf")
        batch_lo, batch_hi = lo, hi
        if bool(self.has_stats):
            if lo.shape != self.min_val.shape:
                raise ValueError(f"observer {self.name!r}: {lo.numel()} channels, previously {self.min_val.numel()}")
            lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        self.min_val, self.max_val = lo, hi
        if self.channel_range is not None:
            if self.channel_range[0].numel():
                c_lo, c_hi = torch.minimum(c_lo, self.channel_range[0]), torch.maximum(c_hi, self.channel_range[1])
            self.channel_range = (c_lo, c_hi)
        if self.hist.numel():
            self._update_hist(x, float(batch_lo), float(batch_hi))
        self.has_stats.fill_(True)
        self.qparams_valid.fill_(False)

    def _update_hist(self, x: Tensor, x_min: float, x_max: float) -> None:
        """Add x (|x| if symmetric) to the histogram; when x falls outside the range, re-bin onto the wider one.

        The range is always exactly [min, max] of everything seen (starting at 0 for |x|, containing 0 for
        affine), so it - and with it the candidate thresholds of mse/entropy - does not depend on batch order.
        Re-binning assumes counts spread evenly inside each old bin (see `_rebin`); that smears old counts by
        at most about one new bin per growth, which is the only order effect left.
        """
        v = x.abs() if self.spec.symmetric else x
        if self.spec.symmetric:  # max |x| = max(|min x|, |max x|): x's min/max are already known
            b_lo, b_hi = 0.0, max(abs(x_min), abs(x_max))
        else:
            b_lo, b_hi = min(x_min, 0.0), max(x_max, 0.0)
        lo, hi = float(self.hist_min), float(self.hist_max)
        if not bool(self.has_stats):
            lo, hi = b_lo, b_hi
        elif b_lo < lo or b_hi > hi:
            new_lo, new_hi = min(lo, b_lo), max(hi, b_hi)
            self.hist.copy_(_rebin(self.hist, lo, hi, new_lo, new_hi))
            lo, hi = new_lo, new_hi
        if hi > lo:
            self.hist += histogram(v, self.hist.numel(), lo, hi)
        else:  # every value so far is the single point lo (histc would pick its own range here)
            self.hist[0] += v.numel()
        self.hist_min.fill_(lo)
        self.hist_max.fill_(hi)

    def track_channels(self) -> None:
        """Also keep min/max per channel of the last axis from now on: runtime smoothing's statistics, gathered in
        the calibration pass itself so that `set_channel_mul` can then give the range its multiply would have seen."""
        if self.hist.numel() or self.spec.ch_axis is not None:
            raise ValueError(f"observer {self.name!r}: channel tracking needs a per-tensor minmax spec")
        self.channel_range = (torch.empty(0), torch.empty(0))

    def set_channel_mul(self, mul: Tensor) -> None:
        """Multiply inputs by `mul` (> 0) along the last axis from now on. Statistics already gathered must be
        tracked per channel: the range becomes min/max over channels of their min/max times `mul`, exactly the
        running min/max of the multiplied inputs (a positive multiply keeps order, also after float rounding)."""
        if bool(self.has_stats):
            if self.channel_range is None or not self.channel_range[0].numel():
                raise RuntimeError(f"observer {self.name!r}: observed without per-channel tracking; set the "
                                   "multiply before calibration")
            self.min_val = (self.channel_range[0] * mul).amin()
            self.max_val = (self.channel_range[1] * mul).amax()
            self.qparams_valid.fill_(False)
        self.channel_mul = mul
        self.channel_range = None

    # --- qparams -----------------------------------------------------------------------------------------
    def compute_qparams(self) -> tuple[Tensor, Tensor]:
        """(scale float32, zero_point int32), shape [] per-tensor or [C] per-channel; formulas in the module doc."""
        if not bool(self.has_stats):
            raise RuntimeError(f"observer {self.name!r} has no statistics: feed calibration data before computing qparams")
        lo, hi = self._range()
        s = self.spec
        if s.symmetric:
            half = (s.qmax - s.qmin) // 2
            scale = (torch.maximum(lo.abs(), hi.abs()) / half).clamp_min(EPS)
            zero_point = torch.full_like(scale, s.qmax - half, dtype=torch.int32)
            return scale.float(), zero_point
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
        scale = ((hi - lo) / (s.qmax - s.qmin)).clamp_min(EPS).float()
        zero_point = (s.qmin - torch.round(lo / scale)).clamp(s.qmin, s.qmax).to(torch.int32)
        return scale, zero_point

    def _range(self) -> tuple[Tensor, Tensor]:
        """The (lo, hi) to quantize: observed min/max, or the method's clipping thresholds inside them."""
        lo, hi = self.min_val, self.max_val
        method = METHODS[self.spec.method]
        if not method.histogram or float(self.hist.sum()) == 0.0:
            return lo, hi
        h, h_lo, h_hi = self.hist, float(self.hist_min), float(self.hist_max)
        if self.spec.symmetric:
            amax = float(torch.maximum(lo.abs(), hi.abs()))
            t = min(method.threshold(h, h_lo, h_hi, self.spec), amax)  # beyond the data only coarsens the grid
            return torch.tensor(-t), torch.tensor(t)
        t_lo, t_hi = method.clip(h, h_lo, h_hi, self.spec)
        return torch.tensor(max(t_lo, float(lo))), torch.tensor(min(t_hi, float(hi)))

    # --- state -------------------------------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args, **kwargs) -> None:
        """Resize buffers to the saved shapes first: min/max/scale are [C] per-channel, [] per-tensor, [0] unset."""
        for name, buf in self._buffers.items():
            saved = state_dict.get(prefix + name)
            if buf is not None and saved is not None and saved.shape != buf.shape:
                self._buffers[name] = torch.empty(saved.shape, dtype=buf.dtype, device=buf.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


# --- histogram range methods (pure functions on counts) -----------------------------------------------------
def histogram(v: Tensor, bins: int, lo: float, hi: float) -> Tensor:
    """torch.histc(v, bins, lo, hi) as float64 counts, for v inside [lo, hi] (the observer's range always holds
    the batch): the same float32 bin arithmetic as histc's kernel, (v - lo) * bins / (hi - lo) truncated, the top
    edge in the last bin, but counted by bincount, 2x faster on attention-sized tensors (issue #31; tests compare
    with histc exactly)."""
    lo_t, hi_t = torch.tensor(lo, dtype=v.dtype), torch.tensor(hi, dtype=v.dtype)
    index = ((v.reshape(-1) - lo_t) * bins / (hi_t - lo_t)).long().clamp_(0, bins - 1)
    return torch.bincount(index, minlength=bins).double()


def _rebin(hist: Tensor, lo: float, hi: float, new_lo: float, new_hi: float) -> Tensor:
    """Counts of `hist` (over [lo, hi]) on the same number of bins over [new_lo, new_hi], which contains it.

    With counts uniform inside each old bin the cumulative count F is piecewise linear between old edges;
    the new bin counts are F(new edge j+1) - F(new edge j). A zero-width old range is a point mass at lo.
    """
    n = hist.numel()
    new_edges = new_lo + torch.arange(n + 1, dtype=torch.float64) * ((new_hi - new_lo) / n)
    if hi <= lo:
        out = torch.zeros_like(hist)
        out[min(int((lo - new_lo) / (new_hi - new_lo) * n), n - 1)] = hist.sum()
        return out
    pos = ((new_edges - lo) * (n / (hi - lo))).clamp(0, n)  # new edges in units of old bins
    k = pos.floor().long().clamp(max=n - 1)
    cdf = torch.cat([hist.new_zeros(1), hist.cumsum(0)])
    return torch.diff(cdf[k] + (pos - k) * hist[k])
