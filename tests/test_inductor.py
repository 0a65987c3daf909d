"""Inductor backend: the q/dq rewrite matches the fake-quant model; freezing turns it into oneDNN int8 GEMMs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqkit.backends.inductor import InductorBackend
from ptqkit.backends.inductor_qdq import QDQLinear, to_qdq_module
from ptqkit.config import QuantConfig, QuantSpec
from ptqkit.errors import UserError
from ptqkit.inputs import INPUT_NAMES
from ptqkit.qmodel import LogitsOnly
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.smoothquant import collect_input_absmax, smooth_runtime


def fakequant(tiny, model, config: QuantConfig | None = None, smooth_alpha: float | None = None) -> torch.nn.Module:
    q = Quantizer("x86", config=config)
    batches = [tiny.batch(8, 16, 100 + i) for i in range(4)]
    graph = q.calib(model)
    if smooth_alpha is not None:  # runtime SmoothQuant: QDQLinear must apply the same per-channel multiply
        smooth_runtime(q, collect_input_absmax(model, batches), smooth_alpha)
    run_calibration(graph, batches)
    q.quantize()
    return q.convert(model)


@pytest.fixture(scope="module")
def models(tiny):
    """The float model and the x86 contract's converted model, runtime smoothing included (as bert_ptq.py makes it)."""
    model = tiny.bert()
    return model, fakequant(tiny, model, smooth_alpha=QuantConfig.for_device("x86").smooth_alpha)


@pytest.mark.parametrize("config, alpha", [
    (None, None),  # x86 default contract: affine uint8 activations, int8 per-channel weights
    (QuantConfig.for_device("x86", activation=QuantSpec()), None),  # int8 symmetric activations
    (QuantConfig.for_device("aarch64", activation=QuantSpec(dtype="uint8", symmetric=False)), None),  # per-tensor w
    (None, 0.95),  # with runtime SmoothQuant
], ids=["uint8affine-perchannel", "int8-perchannel", "uint8affine-pertensor", "smoothed"])
def test_qdq_module_computes_the_fakequant_model(tiny, tiny_onnx, config, alpha):
    plain = config is None and alpha is None  # the x86 contract as such: tiny_onnx's converted model
    fq = tiny_onnx["x86"].converted if plain else fakequant(tiny, tiny.bert(), config, alpha)
    qdq = to_qdq_module(fq)
    assert sum(isinstance(m, QDQLinear) for m in qdq.modules()) == tiny.LINEARS
    assert all(m.qweight.dtype == torch.int8 for m in qdq.modules() if isinstance(m, QDQLinear))
    batch = tiny.batch(4, 12, seed=3)
    np.testing.assert_allclose(tiny.logits(qdq, batch).numpy(), tiny.logits(fq, batch).numpy(), rtol=0, atol=1e-5)


def test_asymmetric_weights_are_refused(tiny):
    fq = fakequant(tiny, tiny.bert(), QuantConfig(weight=QuantSpec(ch_axis=0, symmetric=False)))
    with pytest.raises(UserError, match="symmetric weights"):
        to_qdq_module(fq)


def test_precision_and_model_must_agree(models):
    model, fq = models
    backend = InductorBackend()
    with pytest.raises(UserError, match="converted model"):
        backend.compile(LogitsOnly(model, INPUT_NAMES), 1, "int8")
    with pytest.raises(UserError, match="float model"):
        backend.compile(LogitsOnly(fq, INPUT_NAMES), 1, "fp32")
    with pytest.raises(UserError, match="precisions"):
        backend.compile(LogitsOnly(model, INPUT_NAMES), 1, "bf16")


@pytest.mark.slow  # two Inductor compiles: ~20-60 s on 2 cores
def test_int8_compile_emits_onednn_int8_gemms(tiny, models, capfd):
    model, fq = models
    runner = InductorBackend().compile(LogitsOnly(fq, INPUT_NAMES), 1, "int8")
    batch = tiny.batch(4, 12, seed=7)
    out = runner({k: v.numpy() for k, v in batch.items()})
    ref = tiny.logits(fq, batch).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-2 * np.abs(ref).max())
    assert (out.argmax(1) == ref.argmax(1)).all()

    ev = runner.kernels()
    assert ev.int8 == tiny.LINEARS  # every linear is an onednn.qlinear_pointwise
    assert ev.details["counter:qlinear_weight_prepack_matcher_count"] == tiny.LINEARS
    assert ev.fp32 == ev.details.get("aten.bmm.default", 0) == 4  # only the attention matmuls stay fp32
    assert runner.compile_seconds[((4, 12),) * 3] > 0

    # what oneDNN really ran: its JIT int8 matmul (u8 activations), not the reference one s8 activations get
    capfd.readouterr()
    with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
        runner({k: v.numpy() for k, v in batch.items()})
    matmuls = [line for line in capfd.readouterr().out.splitlines() if ",exec,cpu,matmul," in line]
    assert len(matmuls) == tiny.LINEARS
    assert all("src:u8" in line and "ref_int8" not in line for line in matmuls), matmuls[0]

    fp32 = InductorBackend().compile(LogitsOnly(model, INPUT_NAMES), 1, "fp32")
    out32 = fp32({k: v.numpy() for k, v in batch.items()})
    np.testing.assert_allclose(out32, tiny.logits(model, batch).numpy(), rtol=1e-4, atol=1e-5)
    ev32 = fp32.kernels()
    assert ev32.int8 == 0 and ev32.fp32 == tiny.LINEARS + 4


def test_op_times_split_by_kind(tiny):
    """Inductor's profiling copy books the oneDNN int8 GEMMs, the fp32 attention matmuls and softmax, and the
    fused LayerNorm kernels by kind; the Python glue of the compiled graph is other. One layer has every kind and
    compiles in about half the time of two."""
    fq = fakequant(tiny, tiny.bert(layers=1), smooth_alpha=QuantConfig.for_device("x86").smooth_alpha)
    inputs = {k: v.numpy() for k, v in tiny.batch(2, 16, seed=4).items()}
    between = []
    calls = InductorBackend().op_times(LogitsOnly(fq, INPUT_NAMES), 1, "int8", inputs, 2, lambda: between.append(1))
    assert len(calls) == 2 and len(between) == 2
    for c in calls:
        assert c["gemm"] > 0 and c["attention"] > 0 and c["norm_act"] > 0 and c["other"] > 0, c
