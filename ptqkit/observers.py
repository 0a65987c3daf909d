"""Observers: collect statistics on one tensor, turn them into int8/uint8 qparams, fake-quantize with them.

An `Observer` sits on one tensor of the quantized graph (an activation or a weight). It has two switches:
`observing` (update statistics on each forward) and `fake_quant` (return fake-quantized x instead of x). With
fake_quant off the output *is* the input, so a calibrating model matches fp32 exactly.

Range methods (`QuantSpec.method`):
  minmax      running min/max, per-tensor or per-channel.
  percentile  the `spec.percentile`-th percentile of |x| (symmetric) or both tails of x (affine).
  mse         the clipping threshold minimising expected squared quantization error (rounding + clipping).
  entropy     TensorRT-style KL-divergence calibration (symmetric only).
The last three read a histogram, so they are per-tensor only (activations).

qparams from a range:
  symmetric:  half = (qmax - qmin) // 2 (= 127), zero_point = qmax - half (0 for int8, 128 for uint8),
              scale = amax / half. int8 therefore uses scale = amax / 127 (the common convention: +amax maps
              to 127 exactly and -128 stays reachable) rather than amax / 127.5.
  affine:     lo = min(min, 0), hi = max(max, 0) so that 0 is exact, scale = (hi - lo) / (qmax - qmin),
              zero_point = clamp(qmin - round(lo / scale), qmin, qmax).
  scale is floored at float32 eps so an all-zero tensor still gives a valid grid.

`LSQQuantizer` replaces a frozen observer for QAT: the scale becomes a learnable parameter (Esser et al. 2020,
"Learned Step Size Quantization") and `to_observer()` writes the learned scale back for export.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .config import CALIB_METHODS, QuantSpec
from .qmodel import fake_quantize

EPS = torch.finfo(torch.float32).eps
HIST_METHODS = ("percentile", "mse", "entropy")
ENTROPY_LEVELS = 128  # TensorRT quantizes the reference distribution to 128 levels (one sign of int8)
ENTROPY_FLOOR = 1e-4  # probability given to Q where P > 0 but Q == 0, so clipping costs a finite amount
ENTROPY_CHUNK = 256  # candidate thresholds evaluated per matrix


def _check_spec(spec: QuantSpec) -> None:
    """Reject combinations the observer cannot honour, at construction rather than at freeze time."""
    if spec.dtype not in ("int8", "uint8"):
        raise ValueError(f"unknown quantization dtype {spec.dtype!r}; choose int8 or uint8")
    if spec.bits not in (7, 8):
        raise ValueError(f"unsupported bit width {spec.bits}; choose 8, or 7 (weights on x86 without VNNI)")
    if spec.method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {spec.method!r}; choose one of {', '.join(CALIB_METHODS)}")
    if spec.method in HIST_METHODS:
        if spec.ch_axis is not None:
            raise ValueError(f"method {spec.method!r} is per-tensor only (histogram); use minmax with ch_axis")
        if spec.bins < 1:
            raise ValueError(f"histogram bins must be positive, got {spec.bins}")
    if spec.method == "percentile" and not 0.0 < spec.percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {spec.percentile}")
    if spec.method == "entropy":
        if not spec.symmetric:
            raise ValueError("entropy calibration is symmetric only (KL on the |x| histogram)")
        if spec.bins < ENTROPY_LEVELS:
            raise ValueError(f"entropy calibration needs bins >= {ENTROPY_LEVELS}, got {spec.bins}")


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
    Shapes depend on the data (per-channel C), so loading resizes buffers to the saved shapes.
    """

    def __init__(self, spec: QuantSpec):
        super().__init__()
        _check_spec(spec)
        self.spec = spec
        self.name = ""
        self.observing = True
        self.fake_quant = False
        uses_hist = spec.method in HIST_METHODS
        self.register_buffer("has_stats", torch.tensor(False))
        self.register_buffer("min_val", torch.empty(0))
        self.register_buffer("max_val", torch.empty(0))
        self.register_buffer("hist", torch.zeros(spec.bins if uses_hist else 0, dtype=torch.float64))
        self.register_buffer("hist_min", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("hist_max", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.register_buffer("qparams_valid", torch.tensor(False))

    def extra_repr(self) -> str:
        s = self.spec
        axis = "per-tensor" if s.ch_axis is None else f"ch_axis={s.ch_axis}"
        kind = "symmetric" if s.symmetric else "affine"
        return f"name={self.name!r}, {s.dtype}, {kind}, {axis}, method={s.method}"

    # --- forward -----------------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> Tensor:
        if self.observing:
            self.observe(x)
        if not self.fake_quant:
            return x
        if not bool(self.qparams_valid):
            self._store_qparams()  # statistics changed since the last freeze: fake-quant with current ones
        return self._fake_quantize(x)

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
        if axis is None:
            lo, hi = torch.aminmax(x)
        else:
            lo, hi = torch.aminmax(x.movedim(axis % x.dim(), 0).reshape(x.shape[axis], -1), dim=1)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):  # min/max propagate NaN and show inf
            raise NonFiniteInput(f"observer {self.name!r}: input contained NaN/inf")
        if bool(self.has_stats):
            if lo.shape != self.min_val.shape:
                raise ValueError(f"observer {self.name!r}: {lo.numel()} channels, previously {self.min_val.numel()}")
            lo, hi = torch.minimum(lo, self.min_val), torch.maximum(hi, self.max_val)
        self.min_val, self.max_val = lo, hi
        if self.hist.numel():
            self._update_hist(x)
        self.has_stats.fill_(True)
        self.qparams_valid.fill_(False)

    def _update_hist(self, x: Tensor) -> None:
        """Add x (|x| if symmetric) to the histogram; when x falls outside the range, re-bin onto the wider one.

        The range is always exactly [min, max] of everything seen (starting at 0 for |x|, containing 0 for
        affine), so it - and with it the candidate thresholds of mse/entropy - does not depend on batch order.
        Re-binning assumes counts spread evenly inside each old bin (see `_rebin`); that smears old counts by
        at most about one new bin per growth, which is the only order effect left.
        """
        v = x.abs() if self.spec.symmetric else x
        if self.spec.symmetric:
            b_lo, b_hi = 0.0, float(v.max())
        else:
            b_lo, b_hi = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
        lo, hi = float(self.hist_min), float(self.hist_max)
        if not bool(self.has_stats):
            lo, hi = b_lo, b_hi
        elif b_lo < lo or b_hi > hi:
            new_lo, new_hi = min(lo, b_lo), max(hi, b_hi)
            self.hist.copy_(_rebin(self.hist, lo, hi, new_lo, new_hi))
            lo, hi = new_lo, new_hi
        if hi > lo:
            self.hist += torch.histc(v, bins=self.hist.numel(), min=lo, max=hi).double()
        else:  # every value so far is the single point lo (histc would pick its own range here)
            self.hist[0] += v.numel()
        self.hist_min.fill_(lo)
        self.hist_max.fill_(hi)

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
        method = self.spec.method
        if method == "minmax" or float(self.hist.sum()) == 0.0:
            return lo, hi
        h, h_lo, h_hi = self.hist, float(self.hist_min), float(self.hist_max)
        if self.spec.symmetric:
            amax = float(torch.maximum(lo.abs(), hi.abs()))
            if method == "percentile":
                t = _hist_quantile(h, h_lo, h_hi, self.spec.percentile / 100.0)
            elif method == "mse":
                t = _mse_threshold(h, h_hi, self.spec.qmax - self.spec.qmin)
            else:
                t = _entropy_threshold(h, h_hi)
            t = min(t, amax)  # a threshold beyond the data only coarsens the grid
            return torch.tensor(-t), torch.tensor(t)
        if method == "percentile":
            q = self.spec.percentile / 100.0
            t_lo, t_hi = _hist_quantile(h, h_lo, h_hi, 1.0 - q), _hist_quantile(h, h_lo, h_hi, q)
        else:  # mse (entropy is rejected for affine at construction)
            t_lo, t_hi = _mse_range(h, h_lo, h_hi, self.spec.qmax - self.spec.qmin)
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


def _hist_quantile(hist: Tensor, lo: float, hi: float, q: float) -> float:
    """Value below which a fraction q of the mass lies, interpolating linearly inside the bin that crosses q."""
    cdf = hist.cumsum(0)
    target = q * float(cdf[-1])
    k = min(int(torch.searchsorted(cdf, torch.tensor([target], dtype=cdf.dtype))), hist.numel() - 1)
    below = float(cdf[k - 1]) if k else 0.0
    frac = (target - below) / float(hist[k]) if float(hist[k]) else 0.0
    return lo + (k + min(max(frac, 0.0), 1.0)) * (hi - lo) / hist.numel()


def _prefix_moments(hist: Tensor, centers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """P_j[k] = sum_{i<k} n_i c_i^j for j = 0, 1, 2 (length bins+1): squared errors of any tail in O(1)."""
    zero = hist.new_zeros(1)
    return tuple(torch.cat([zero, (hist * centers**j).cumsum(0)]) for j in range(3))  # type: ignore[return-value]


def _mse_threshold(hist: Tensor, hi: float, levels: int) -> float:
    """Symmetric: argmin over bin edges T of E(T) = N_in(T) * s^2 / 12 + sum_{c_i > T} n_i (c_i - T)^2.

    The histogram is of |x| over [0, hi]; s = T / (levels // 2) is the step, s^2 / 12 the mean squared rounding
    error of values spread evenly inside a step, and clipped values lose their distance to T.
    """
    n = hist.numel()
    width = hi / n
    centers = (torch.arange(n, dtype=torch.float64) + 0.5) * width
    edges = torch.arange(n + 1, dtype=torch.float64) * width
    p0, p1, p2 = _prefix_moments(hist, centers)
    tail = (p2[-1] - p2) - 2 * edges * (p1[-1] - p1) + edges**2 * (p0[-1] - p0)
    error = p0 * (edges / (levels // 2)) ** 2 / 12 + tail
    error[0] = math.inf  # T = 0 is not a grid
    return float(edges[int(torch.argmin(error))])


def _mse_range(hist: Tensor, lo: float, hi: float, levels: int) -> tuple[float, float]:
    """Affine: argmin over edge pairs (a <= 0 <= b) of E = N_in s^2 / 12 + left and right clipping errors.

    s = (b - a) / levels; left error sum_{c_i < a} n_i (a - c_i)^2, right sum_{c_i > b} n_i (c_i - b)^2, both
    from prefix moments so the whole (a, b) grid is one broadcast.
    """
    n = hist.numel()
    width = (hi - lo) / n
    centers = lo + (torch.arange(n, dtype=torch.float64) + 0.5) * width
    edges = lo + torch.arange(n + 1, dtype=torch.float64) * width
    p0, p1, p2 = _prefix_moments(hist, centers)
    ia = torch.nonzero(edges <= 0).flatten()
    ib = torch.nonzero(edges >= 0).flatten()
    a, b = edges[ia], edges[ib]
    left = a**2 * p0[ia] - 2 * a * p1[ia] + p2[ia]
    right = (p2[-1] - p2[ib]) - 2 * b * (p1[-1] - p1[ib]) + b**2 * (p0[-1] - p0[ib])
    inside = p0[ib][None, :] - p0[ia][:, None]
    step = (b[None, :] - a[:, None]) / levels
    error = inside * step**2 / 12 + left[:, None] + right[None, :]
    error[step <= 0] = math.inf
    k = int(torch.argmin(error))
    return float(a[k // b.numel()]), float(b[k % b.numel()])


def _entropy_threshold(hist: Tensor, hi: float) -> float:
    """TensorRT-style: the |x| threshold whose 128-level quantization loses least information, as KL(P || Q).

    For each candidate i = 128..bins (threshold = upper edge of bin i-1):
      P = hist[:i] with all mass beyond the threshold folded into its last bin (clipping);
      Q = hist[:i] merged into 128 equal groups of bins (bin b -> group floor(b * 128 / i)), each group's count
          spread evenly over the bins where P is non-zero (quantizing the unclipped distribution);
      both normalised; where P > 0 but Q = 0 (clipped mass with no data nearby) Q gets ENTROPY_FLOOR.
    Returns the candidate with minimal KL(P || Q) = sum P log(P / Q). Candidates are rows of a matrix,
    ENTROPY_CHUNK at a time, so all of them cost a few tensor ops.
    """
    n, levels = hist.numel(), ENTROPY_LEVELS
    tail = torch.cat([hist.flip(0).cumsum(0).flip(0), hist.new_zeros(1)])  # tail[i] = sum(hist[i:])
    bins = torch.arange(n)
    best_kl, best_i = math.inf, n
    for chunk in torch.arange(levels, n + 1).split(ENTROPY_CHUNK):
        rows = torch.arange(chunk.numel())
        inside = bins[None, :] < chunk[:, None]
        h = hist[None, :] * inside  # the unclipped slice hist[:i], zero beyond
        p = h.clone()
        p[rows, chunk - 1] += tail[chunk]
        groups = (bins[None, :] * levels // chunk[:, None]).clamp(max=levels - 1)
        flat = (rows[:, None] * levels + groups).flatten()
        nonzero = (p > 0).double()
        group_sum = hist.new_zeros(chunk.numel() * levels).index_add_(0, flat, h.flatten()).view(-1, levels)
        group_nz = hist.new_zeros(chunk.numel() * levels).index_add_(0, flat, nonzero.flatten()).view(-1, levels)
        q = nonzero * group_sum.gather(1, groups) / group_nz.gather(1, groups).clamp_min(1.0)
        q = q / q.sum(1, keepdim=True).clamp_min(1e-300)
        q = torch.where((p > 0) & (q == 0), ENTROPY_FLOOR, q)
        q = q / q.sum(1, keepdim=True)
        pn = p / p.sum(1, keepdim=True)
        kl = torch.where(pn > 0, pn * torch.log(pn / q), 0.0).sum(1)
        k = int(torch.argmin(kl))
        if float(kl[k]) < best_kl:
            best_kl, best_i = float(kl[k]), int(chunk[k])
    return best_i * hi / n


# --- LSQ ---------------------------------------------------------------------------------------------------
class LSQQuantizer(nn.Module):
    """Fake-quant with a learnable scale (LSQ, Esser et al. 2020) for QAT, initialised from a frozen Observer.

    forward: qmodel.fake_quantize with the LSQ gradient: x's passes straight through rounding inside the grid,
    s's is LSQ's ((q - z) - x / s inside, the clamped level outside) multiplied by g = 1 / sqrt(N * Q_P) with
    N = x.numel() / scale.numel() (elements sharing one scale, batch included, so the step does not grow with
    batch size) and Q_P = qmax - z (127). Symmetric only: z is fixed. Per-channel scales broadcast along ch_axis.
    """

    def __init__(self, observer: Observer):
        super().__init__()
        spec = observer.spec
        if not spec.symmetric:
            raise ValueError(f"LSQ needs a symmetric spec (observer {observer.name!r} is affine)")
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

    @classmethod
    def from_observer(cls, observer: Observer) -> "LSQQuantizer":
        """The QAT quantizer for a frozen observer (same as the constructor; reads well at call sites)."""
        return cls(observer)

    def forward(self, x: Tensor) -> Tensor:
        if not self.fake_quant:
            return x
        q_pos = self.spec.qmax - float(self.zero_point.flatten()[0])
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
