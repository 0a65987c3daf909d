"""GPTQ-style adaptive weight rounding (--weight-rounding gptq): on the weight grid, qparams untouched, a lower
layer output error than rounding to nearest, and the same integers in the graph, the converted model and ONNX."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqkit.config import QuantConfig
from ptqkit.export import export_onnx
from ptqkit.inputs import INPUT_NAMES
from ptqkit.passes import linear_weight, observer_key
from ptqkit.qmodel import fake_quantize
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.rounding import gptq_round, input_second_moments, round_weights


def _layer_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """Summed squared output error of the layer over the inputs whose X^T X is h: tr((W - Q) H (W - Q)^T)."""
    d = (w - q).double()
    return float(torch.einsum("oi,ij,oj->", d, h.double(), d))


def test_gptq_round_is_on_the_grid_and_beats_nearest_on_correlated_inputs():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(24, 48, generator=g)
    x = torch.randn(400, 12, generator=g) @ torch.randn(12, 48, generator=g) + 0.1 * torch.randn(400, 48, generator=g)
    h = x.T @ x
    scale = w.abs().amax(1) / 127
    zp = torch.zeros(24, dtype=torch.int32)
    got = gptq_round(w, h, scale, zp, -127, 127)
    ints = got / scale[:, None]
    assert torch.equal(ints.round(), torch.round(ints)) and (ints - ints.round()).abs().max() < 1e-4
    assert ints.round().abs().max() <= 127
    assert torch.equal(fake_quantize(got, scale, zp, 0, -127, 127), got)  # re-quantizing gives it back
    nearest = fake_quantize(w, scale, zp, 0, -127, 127)
    assert not torch.equal(got, nearest)
    assert _layer_error(w, got, h) < 0.7 * _layer_error(w, nearest, h)


@pytest.mark.parametrize("contract", ["x86", "aarch64", "avx2"])
def test_round_weights_keeps_qparams_and_the_same_integers_through_export(contract, tiny, other_shape,
                                                                          export_example, tmp_path):
    import onnxruntime as ort

    config = QuantConfig.for_device("x86", isa="avx2") if contract == "avx2" else QuantConfig.for_device(contract)
    model = tiny.bert()
    batches = [tiny.batch(8, 16, 100 + i) for i in range(4)]
    q = Quantizer(config=config)
    run_calibration(q.calib(model), batches)
    q.quantize()
    obs = q.observers()
    linears = [p for p in q.quantized_points() if p.kind == "linear"]
    before = {p.name: (linear_weight(q.graph, p).detach().clone(), *q.qparams(p.name, "weight")) for p in linears}
    moments = input_second_moments(q, batches)

    assert round_weights(q, batches) == tiny.LINEARS
    assert q.carries_weights  # the saved state must carry the rounded weights
    changed, err_nearest, err_gptq = 0, 0.0, 0.0
    for p in linears:
        w0, scale, zp = before[p.name]
        o = obs[observer_key(p.name, "weight")]
        assert torch.equal(o.scale, scale) and torch.equal(o.zero_point, zp)  # qparams untouched
        w1 = linear_weight(q.graph, p).detach()
        axis, lo, hi = o.spec.ch_axis, o.spec.qmin, o.spec.qmax
        assert torch.equal(fake_quantize(w1, scale, zp, axis, lo, hi), w1)  # on the grid
        changed += int(not torch.equal(w1, fake_quantize(w0, scale, zp, axis, lo, hi)))
        err_nearest += _layer_error(w0, fake_quantize(w0, scale, zp, axis, lo, hi), moments[p.name])
        err_gptq += _layer_error(w0, w1, moments[p.name])
    assert changed > tiny.LINEARS // 2
    assert err_gptq < err_nearest

    converted = q.convert(model)
    assert torch.equal(tiny.logits(converted, other_shape), tiny.logits(q.graph, other_shape))
    path = export_onnx(converted, INPUT_NAMES, export_example, tmp_path / "int8.onnx")
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {k: v.numpy() for k, v in other_shape.items()})[0]
    ref = tiny.logits(q.graph, other_shape).numpy()
    assert np.abs(out - ref).max() < 1e-4 and (out.argmax(1) == ref.argmax(1)).all()


def test_second_moments_count_real_tokens_only(tiny):
    model = tiny.bert()
    q = Quantizer("x86")
    full = tiny.batch(2, 16, 3)
    run_calibration(q.calib(model), [full])
    q.quantize()
    padded = {k: v.clone() for k, v in full.items()}
    padded["attention_mask"][1, 8:] = 0  # row 1 padded over its second half
    short = {k: v[1:, :8] for k, v in padded.items()}  # the same real tokens of row 1, without the padding
    row0 = {k: v[:1] for k, v in padded.items()}
    both = input_second_moments(q, [padded])
    apart = [input_second_moments(q, [b]) for b in (row0, short)]
    for name, m in both.items():
        torch.testing.assert_close(m, apart[0][name] + apart[1][name], rtol=1e-4, atol=1e-3)
