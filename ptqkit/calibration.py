"""Calibration methods: how an observer's statistics become the range it quantizes (QuantSpec.method).

Each method is one class in METHODS, the registry the observers, the config and the CLI read; adding a method
is adding one class here. A method that reads the histogram (|x| for symmetric specs, x for affine ones, kept by
observers.Observer over exactly [min, max] of everything seen) is per-tensor only and returns thresholds inside
the observed range; minmax returns the observed range itself.
  minmax      running min/max, per-tensor or per-channel.
  percentile  the `spec.percentile`-th percentile of |x| (symmetric) or both tails of x (affine).
  mse         the clipping threshold minimising expected squared quantization error (rounding + clipping).
  entropy     TensorRT-style KL-divergence calibration (symmetric only: `symmetric_only`, so
              QuantConfig.with_calib_method puts an affine activation grid back to symmetric for it).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor
# torch is imported inside the range functions: the registry is read by every CLI (config, --calib-method), and
# predict.py runs on targets without torch.

ENTROPY_LEVELS = 128  # TensorRT quantizes the reference distribution to 128 levels (one sign of int8)
ENTROPY_FLOOR = 1e-4  # probability given to Q where P > 0 but Q == 0, so clipping costs a finite amount
ENTROPY_CHUNK = 256  # candidate thresholds evaluated per matrix


class RangeMethod:
    """A calibration method. `threshold` (symmetric: clip |x| at t) and `clip` (affine: (lo, hi)) get the
    histogram counts, the range they cover and the spec; `check` rejects specs the method cannot honour."""

    histogram = True
    symmetric_only = False  # defined on |x| only: an affine grid is switched to symmetric for it

    def check(self, spec) -> None:
        """Raise ValueError for a spec this method cannot honour."""

    def threshold(self, hist: Tensor, lo: float, hi: float, spec) -> float:
        raise NotImplementedError

    def clip(self, hist: Tensor, lo: float, hi: float, spec) -> tuple[float, float]:
        raise NotImplementedError


class MinMax(RangeMethod):
    histogram = False  # the observer's running min/max is the range


class Percentile(RangeMethod):
    def check(self, spec) -> None:
        if not 0.0 < spec.percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {spec.percentile}")

    def threshold(self, hist, lo, hi, spec) -> float:
        return _hist_quantile(hist, lo, hi, spec.percentile / 100.0)

    def clip(self, hist, lo, hi, spec) -> tuple[float, float]:
        q = spec.percentile / 100.0
        return _hist_quantile(hist, lo, hi, 1.0 - q), _hist_quantile(hist, lo, hi, q)


class MSE(RangeMethod):
    def threshold(self, hist, lo, hi, spec) -> float:
        return _mse_threshold(hist, hi, spec.qmax - spec.qmin)

    def clip(self, hist, lo, hi, spec) -> tuple[float, float]:
        return _mse_range(hist, lo, hi, spec.qmax - spec.qmin)


class Entropy(RangeMethod):
    symmetric_only = True

    def check(self, spec) -> None:
        if not spec.symmetric:
            raise ValueError("entropy calibration is symmetric only (KL on the |x| histogram)")
        if spec.bins < ENTROPY_LEVELS:
            raise ValueError(f"entropy calibration needs bins >= {ENTROPY_LEVELS}, got {spec.bins}")

    def threshold(self, hist, lo, hi, spec) -> float:
        return _entropy_threshold(hist, hi)


METHODS: dict[str, RangeMethod] = {"minmax": MinMax(), "percentile": Percentile(), "mse": MSE(), "entropy": Entropy()}


# --- histogram range functions (pure functions on counts) ---------------------------------------------------
def _hist_quantile(hist: Tensor, lo: float, hi: float, q: float) -> float:
    """Value below which a fraction q of the mass lies, interpolating linearly inside the bin that crosses q."""
    import torch

    cdf = hist.cumsum(0)
    target = q * float(cdf[-1])
    k = min(int(torch.searchsorted(cdf, torch.tensor([target], dtype=cdf.dtype))), hist.numel() - 1)
    below = float(cdf[k - 1]) if k else 0.0
    frac = (target - below) / float(hist[k]) if float(hist[k]) else 0.0
    return lo + (k + min(max(frac, 0.0), 1.0)) * (hi - lo) / hist.numel()


def _prefix_moments(hist: Tensor, centers: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """P_j[k] = sum_{i<k} n_i c_i^j for j = 0, 1, 2 (length bins+1): squared errors of any tail in O(1)."""
    import torch

    zero = hist.new_zeros(1)
    return tuple(torch.cat([zero, (hist * centers**j).cumsum(0)]) for j in range(3))  # type: ignore[return-value]


def _mse_threshold(hist: Tensor, hi: float, levels: int) -> float:
    """Symmetric: argmin over bin edges T of E(T) = N_in(T) * s^2 / 12 + sum_{c_i > T} n_i (c_i - T)^2.

    The histogram is of |x| over [0, hi]; s = T / (levels // 2) is the step, s^2 / 12 the mean squared rounding
    error of values spread evenly inside a step, and clipped values lose their distance to T.
    """
    import torch

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
    import torch

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
    import torch

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


