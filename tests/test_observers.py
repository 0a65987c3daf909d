"""Observers: hand-computed qparams, histogram methods, modes, state round trip, LSQ."""
from __future__ import annotations

import io
import warnings

import pytest
import safetensors.torch as safetensors
import torch

from ptqkit.config import QuantSpec
from ptqkit.lsq import LSQQuantizer
from ptqkit.observers import EPS, Observer, histogram
from ptqkit.qmodel import fake_quantize


def observed(spec: QuantSpec, *batches: torch.Tensor) -> Observer:
    obs = Observer(spec)
    for b in batches:
        obs(b)
    return obs


def threshold(obs: Observer) -> float:
    """The symmetric clipping threshold behind the observer's scale (scale = amax / 127)."""
    scale, _ = obs.compute_qparams()
    return float(scale) * 127


def gaussian_with_outlier(n: int = 100_000, outlier: float = 100.0) -> torch.Tensor:
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    x[0] = outlier
    return x


# --- hand-computed qparams ------------------------------------------------------------------------------------
def test_symmetric_minmax_per_tensor():
    scale, zp = observed(QuantSpec(), torch.tensor([-2.0, 0.5, 1.0])).compute_qparams()
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.shape == () and zp.shape == ()
    assert float(scale) == pytest.approx(2 / 127)
    assert int(zp) == 0


def test_affine_uint8():
    scale, zp = observed(QuantSpec(dtype="uint8", symmetric=False), torch.tensor([-1.0, 0.2, 3.0])).compute_qparams()
    assert float(scale) == pytest.approx(4 / 255)
    assert int(zp) == round(255 / 4) == 64  # qmin - round(min / scale) = round(63.75)


def test_affine_range_includes_zero():
    scale, zp = observed(QuantSpec(dtype="uint8", symmetric=False), torch.tensor([1.0, 2.55])).compute_qparams()
    assert float(scale) == pytest.approx(2.55 / 255)
    assert int(zp) == 0


def test_symmetric_uint8_centres_zero_point():
    scale, zp = observed(QuantSpec(dtype="uint8"), torch.tensor([-2.0, 1.0])).compute_qparams()
    assert float(scale) == pytest.approx(2 / 127)
    assert int(zp) == 128


def test_per_channel_axis0():
    w = torch.tensor([[1.0, -3.0, 0.5], [0.25, 0.1, -0.2], [0.0, 0.0, 0.0]])
    scale, zp = observed(QuantSpec(ch_axis=0), w).compute_qparams()
    assert scale.shape == (3,) and zp.shape == (3,)
    torch.testing.assert_close(scale, torch.tensor([3 / 127, 0.25 / 127, EPS]))
    assert torch.equal(zp, torch.zeros(3, dtype=torch.int32))


def test_per_channel_running_max_across_batches():
    obs = observed(QuantSpec(ch_axis=1), torch.tensor([[1.0, -2.0]]), torch.tensor([[-4.0, 0.5]]))
    torch.testing.assert_close(obs.compute_qparams()[0], torch.tensor([4 / 127, 2 / 127]))


def test_all_zero_tensor_gets_eps_scale():
    for method in ("minmax", "percentile", "mse", "entropy"):
        scale, _ = observed(QuantSpec(method=method), torch.zeros(10)).compute_qparams()
        assert float(scale) == pytest.approx(EPS), method


# --- histogram methods -------------------------------------------------------------------------------------
def test_percentile_clips_outlier_close_to_true_percentile():
    x = gaussian_with_outlier()
    t = threshold(observed(QuantSpec(method="percentile", percentile=99.9), x))
    true = float(torch.quantile(x.abs(), 0.999))
    assert t < threshold(observed(QuantSpec(), x))
    assert t == pytest.approx(true, rel=0.02)


def test_affine_percentile_clips_both_tails():
    x = gaussian_with_outlier()
    x[1] = -50.0
    scale, zp = observed(QuantSpec(dtype="uint8", symmetric=False, method="percentile", percentile=99.9), x).compute_qparams()
    lo, hi = float(torch.quantile(x, 0.001)), float(torch.quantile(x, 0.999))
    assert float(scale) == pytest.approx((hi - lo) / 255, rel=0.03)
    assert abs(int(zp) - round(-lo / ((hi - lo) / 255))) <= 2


@pytest.mark.parametrize("method", ["mse", "entropy"])
def test_mse_entropy_threshold_between_bulk_and_outlier(method):
    x = gaussian_with_outlier()
    bulk = float(x[1:].abs().max())
    t = threshold(observed(QuantSpec(method=method), x))
    assert bulk < t < 100.0


def test_mse_without_outliers_clips_gaussian_tail():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    t = threshold(observed(QuantSpec(method="mse"), x))
    assert 2.5 < t < float(x.abs().max())


def test_affine_mse_between_bulk_and_outlier():
    x = gaussian_with_outlier()
    scale, zp = observed(QuantSpec(dtype="uint8", symmetric=False, method="mse"), x).compute_qparams()
    hi = float(scale) * (255 - int(zp))
    assert float(x[1:].max()) < hi < 100.0
    assert 0 < int(zp) < 255


@pytest.mark.parametrize("method,rel", [("percentile", 0.01), ("mse", 0.01), ("entropy", 0.05)])
def test_histogram_growth_close_to_single_batch(method, rel):
    x = torch.randn(60_000, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.2, 3.0, 60_000)
    spec = QuantSpec(method=method, percentile=99.9)
    one = threshold(observed(spec, x))
    for batches in (x.split(6_000), x.split(600), x.flip(0).split(6_000)):  # growing spread: many re-bins
        assert threshold(observed(spec, *batches)) == pytest.approx(one, rel=rel)


def test_histogram_growth_from_zero_batch_keeps_counts():
    obs = observed(QuantSpec(method="percentile"), torch.zeros(100), torch.tensor([1.0, -2.0]))
    assert float(obs.hist.sum()) == 102
    assert float(obs.hist[0]) == 100
    obs = observed(QuantSpec(method="mse", symmetric=False, dtype="uint8"), torch.tensor([1.0, 2.0]), torch.tensor([-5.0, 9.0]))
    assert float(obs.hist.sum()) == 4
    assert float(obs.hist_min) <= -5.0 and float(obs.hist_max) >= 9.0


@pytest.mark.parametrize("symmetric", [True, False])
def test_single_batch_histogram_is_histc_over_its_range(symmetric):
    # the histogram's range comes from the batch's min/max (no separate pass): it must be exactly torch's
    x = torch.randn(4, 7, 33, generator=torch.Generator().manual_seed(1)) * 3 + 0.5
    spec = QuantSpec(method="percentile", dtype="int8" if symmetric else "uint8", symmetric=symmetric, bins=64)
    obs = observed(spec, x)
    v, lo, hi = (x.abs(), 0.0, float(x.abs().max())) if symmetric else (x, min(float(x.min()), 0.0), float(x.max()))
    assert (float(obs.hist_min), float(obs.hist_max)) == (lo, hi)
    assert torch.equal(obs.hist, torch.histc(v, bins=64, min=lo, max=hi).double())


def test_tracked_channels_give_the_tensor_range_and_each_channel_range():
    batches = [torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(k)) * (k + 1) for k in range(3)]
    obs = Observer(QuantSpec())
    obs.track_channels()
    for b in batches:
        obs(b)
    rows = torch.cat([b.reshape(-1, 8) for b in batches])
    assert float(obs.min_val) == float(rows.min()) and float(obs.max_val) == float(rows.max())
    assert torch.equal(obs.channel_range[0], rows.amin(0)) and torch.equal(obs.channel_range[1], rows.amax(0))


@pytest.mark.parametrize(
    "spec",
    [
        QuantSpec(method="mse", ch_axis=0),
        QuantSpec(method="entropy", symmetric=False, dtype="uint8"),
        QuantSpec(method="entropy", bins=64),
        QuantSpec(method="percentile", bins=0),
        QuantSpec(method="percentile", percentile=0.0),
        QuantSpec(dtype="int4"),
        QuantSpec(method="nope"),
    ],
)
def test_invalid_specs_rejected(spec):
    with pytest.raises(ValueError):
        Observer(spec)


# --- modes ----------------------------------------------------------------------------------------------
def test_observing_returns_input_unchanged():
    x = torch.randn(4, 8)
    obs = Observer(QuantSpec())
    assert obs.observing and not obs.fake_quant
    assert torch.equal(obs(x), x)
    assert bool(obs.has_stats)


def test_observing_does_not_touch_autograd():
    x = torch.randn(4, 8, requires_grad=True)
    obs = Observer(QuantSpec())
    obs(x).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert not obs.min_val.requires_grad


def test_fake_quant_matches_manual_formula():
    x = torch.randn(64, 16, generator=torch.Generator().manual_seed(3)) * 2
    for spec in (QuantSpec(), QuantSpec(dtype="uint8", symmetric=False), QuantSpec(ch_axis=1)):
        obs = observed(spec, x)
        obs.freeze()
        assert obs.fake_quant and not obs.observing
        s, z = obs.scale, obs.zero_point.float()
        if spec.ch_axis is not None:
            s, z = s.view(1, -1), z.view(1, -1)
        manual = (torch.clamp(torch.round(x * (1 / s)) + z, spec.qmin, spec.qmax) - z) * s
        torch.testing.assert_close(obs(x), manual, rtol=0, atol=1e-6)


def test_frozen_observer_ignores_new_data():
    obs = observed(QuantSpec(), torch.tensor([-1.0, 1.0]))
    obs.freeze()
    obs(torch.tensor([50.0]))
    assert float(obs.scale) == pytest.approx(1 / 127)


def test_observing_and_fake_quant_uses_current_statistics():
    obs = observed(QuantSpec(), torch.tensor([1.0]))
    obs.freeze()
    obs.observing = True
    obs(torch.tensor([2.0]))
    assert float(obs.scale) == pytest.approx(2 / 127)


def test_nan_and_inf_raise_with_name():
    obs = Observer(QuantSpec())
    obs.name = "bert.layer.0.query:input"
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"bert\.layer\.0\.query:input.*NaN/inf"):
            obs(torch.tensor([1.0, bad]))
    assert not bool(obs.has_stats)


def test_compute_before_observe_raises_with_name():
    obs = Observer(QuantSpec())
    obs.name = "cls:weight"
    with pytest.raises(RuntimeError, match="cls:weight"):
        obs.compute_qparams()
    with pytest.raises(RuntimeError, match="cls:weight"):
        obs.freeze()


# --- state ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [QuantSpec(), QuantSpec(ch_axis=0), QuantSpec(dtype="uint8", symmetric=False), QuantSpec(method="entropy")],
)
def test_state_dict_round_trip(spec):
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(4))
    src = observed(spec, x, x * 1.5)
    src.freeze()
    state = safetensors.load(safetensors.save({k: v.contiguous() for k, v in src.state_dict().items()}))
    dst = Observer(spec)
    dst.load_state_dict(state)
    dst.freeze()
    assert torch.equal(dst.scale, src.scale) and torch.equal(dst.zero_point, src.zero_point)
    assert torch.equal(dst(x), src(x))


def test_state_dict_round_trip_before_freeze_recomputes_same_qparams():
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(5))
    src = observed(QuantSpec(method="percentile", percentile=99.0), x)
    dst = Observer(src.spec)
    dst.load_state_dict(src.state_dict())
    src.freeze()
    dst.freeze()
    assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("axis", [None, 0, 1])
@pytest.mark.parametrize("qmin,qmax", [(0, 255), (-128, 127), (-64, 63)])
def test_inference_fake_quant_equals_torch_op_bit_for_bit(axis, qmin, qmax):
    """Without grad fake_quantize takes its in-place path; it must give torch's kernel's values exactly, ties
    (x exactly half a step from a grid point) and clamped values included."""
    g = torch.Generator().manual_seed(qmax + (axis or 0))
    x = torch.randn(64, 48, generator=g) * 5
    size = () if axis is None else (x.shape[axis],)
    scale = torch.rand(size, generator=g) * 0.05 + 1e-3
    zero_point = torch.randint(qmin, qmax + 1, size, dtype=torch.int32, generator=g)
    if axis is None:
        x[0, :20] = (torch.arange(20) - 10 + 0.5) * scale
    with torch.no_grad():
        fast = fake_quantize(x, scale, zero_point, axis, qmin, qmax)
    with torch.enable_grad():
        op = fake_quantize(x, scale, zero_point, axis, qmin, qmax)
    assert torch.equal(fast, op)


def test_onnx_export_emits_qdq():
    import onnx

    linear = torch.nn.Linear(8, 4)
    act, weight = observed(QuantSpec(), torch.randn(2, 8)), observed(QuantSpec(ch_axis=0), linear.weight)
    act.freeze()
    weight.freeze()

    class FQLinear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.act, self.weight, self.linear = act, weight, linear

        def forward(self, x):
            return torch.nn.functional.linear(self.act(x), self.weight(self.linear.weight), self.linear.bias)

    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():  # no grad: the tracer must still see torch's fake-quant op
        warnings.simplefilter("ignore")
        torch.onnx.export(FQLinear(), (torch.randn(2, 8),), buf, dynamo=False, opset_version=17)
    ops = [n.op_type for n in onnx.load_from_string(buf.getvalue()).graph.node]
    assert ops.count("QuantizeLinear") == 2 and ops.count("DequantizeLinear") == 2


# --- LSQ ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", [QuantSpec(), QuantSpec(ch_axis=0), QuantSpec(dtype="uint8", symmetric=False)])
def test_lsq_matches_observer_and_learns(spec):
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(6)) * 3
    obs = observed(spec, x)
    obs.freeze()
    lsq = LSQQuantizer.from_observer(obs)
    xin = x.clone().requires_grad_(True)
    y = lsq(xin)
    torch.testing.assert_close(y, obs(x), rtol=0, atol=1e-6)
    (y * torch.linspace(-1, 1, x.numel()).view_as(x)).sum().backward()
    assert lsq.scale.grad is not None and bool((lsq.scale.grad != 0).all())
    assert xin.grad is not None and bool((xin.grad != 0).any())  # straight-through: in-range gradient is 1


def test_lsq_gradient_scale_and_ste():
    obs = observed(QuantSpec(), torch.tensor([-1.27, 1.27]))
    obs.freeze()  # scale 0.01
    lsq = LSQQuantizer.from_observer(obs)
    x = torch.tensor([0.004, 5.0], requires_grad=True)  # in range (rounds to 0), clipped to 127
    lsq(x).sum().backward()
    assert x.grad.tolist() == [1.0, 0.0]
    # d/ds: round(x/s) - x/s = -0.4 in range, qmax = 127 when clipped; times g = 1 / sqrt(2 * 127)
    assert float(lsq.scale.grad) == pytest.approx((-0.4 + 127) / (2 * 127) ** 0.5, rel=1e-4)


def test_lsq_write_back_for_export():
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(7))
    obs = observed(QuantSpec(ch_axis=0), x)
    obs.name = "w"
    obs.freeze()
    lsq = LSQQuantizer.from_observer(obs)
    with torch.no_grad():
        lsq.scale.mul_(1.1)
    back = lsq.to_observer()
    assert back.fake_quant and not back.observing and back.name == "w"
    torch.testing.assert_close(back.scale, obs.scale * 1.1)  # the learned scale, not the calibrated one
    torch.testing.assert_close(back(x), lsq(x).detach(), rtol=0, atol=1e-6)
    fresh = Observer(back.spec)
    fresh.load_state_dict(back.state_dict())
    fresh.freeze()  # the learned scale survives a save/load and a re-freeze
    assert torch.equal(fresh.scale, back.scale)


def test_lsq_rejects_unfrozen():
    with pytest.raises(RuntimeError):
        LSQQuantizer.from_observer(observed(QuantSpec(), torch.randn(4)))


def test_affine_grid_halves_the_error_of_one_sided_activations():
    """GELU outputs are >= -0.17: a symmetric grid spends half its levels on negatives that never come."""
    x = torch.nn.functional.gelu(torch.randn(4096, generator=torch.Generator().manual_seed(8)) * 3)
    errors = {}
    for name, spec in (("symmetric", QuantSpec()), ("affine", QuantSpec(dtype="uint8", symmetric=False))):
        obs = observed(spec, x)
        obs.freeze()
        errors[name] = float((obs(x) - x).pow(2).mean())
    assert errors["affine"] < 0.5 * errors["symmetric"]  # step (max - min) / 255 vs max / 127: ~1/4 the MSE


@pytest.mark.parametrize("bins", [64, 2048])
def test_histogram_counts_equal_histc(bins):
    # bincount with histc's own float32 bin arithmetic: equal counts, also for values on the bin edges and the
    # range ends (softmax probabilities in [0, 1], symmetric |x|, affine ranges around 0)
    g = torch.Generator().manual_seed(3)
    for lo, hi in [(0.0, 1.0), (0.0, 7.31), (-2.5, 3.75), (-0.013, 0.0171), (-40.0, 0.0)]:
        x = torch.rand(50_000, generator=g) * (hi - lo) + lo
        edges = torch.linspace(lo, hi, bins + 1)  # every edge and both ends of the range
        x = torch.cat([x, edges, edges[1:-1] - 1e-7, edges[1:-1] + 1e-7]).clamp(lo, hi)
        assert torch.equal(histogram(x, bins, lo, hi), torch.histc(x, bins=bins, min=lo, max=hi).double()), (lo, hi)


def test_frozen_weight_fake_quant_is_reused_until_weight_or_qparams_change():
    w = torch.nn.Parameter(torch.randn(6, 5, generator=torch.Generator().manual_seed(4)))
    obs = Observer(QuantSpec(ch_axis=0))
    obs(w.detach())
    obs.freeze()
    expected = torch.fake_quantize_per_channel_affine(w.detach(), obs.scale, obs.zero_point, 0, -128, 127)
    with torch.no_grad():
        first = obs(w)
        assert torch.equal(first, expected) and obs(w) is first  # computed once, reused
        w.mul_(2)  # an in-place change of the weight (e.g. smoothing) is seen
        assert torch.equal(obs(w), torch.fake_quantize_per_channel_affine(w.detach(), obs.scale, obs.zero_point, 0, -128, 127))
        obs.scale.mul_(2)  # and of the qparams (e.g. load_state_dict)
        assert torch.equal(obs(w), torch.fake_quantize_per_channel_affine(w.detach(), obs.scale, obs.zero_point, 0, -128, 127))
    assert obs(w) is not obs(w)  # with gradients (QAT) nothing is cached
