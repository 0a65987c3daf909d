"""ONNX Runtime's attention rewrite (backends/ort_attention.py): every float attention block of the exported model
becomes one MultiHeadAttention node computing the same logits, on every listed model type; int8 attention and
the peers are left alone."""
from __future__ import annotations

import numpy as np
import onnx
import pytest

from ptqkit.backends.onnxruntime import ORTBackend
from ptqkit.backends.ort_attention import to_multihead_attention
from ptqkit.capture import example_inputs, model_input_names
from ptqkit.config import QuantConfig
from ptqkit.export import export_onnx
from ptqkit.inputs import INPUT_NAMES
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.support import MODEL_TYPES, TYPES, random_batch, tiny_classifier

LAYERS = 2


def _run(backend: ORTBackend, path, batch: dict) -> tuple[np.ndarray, dict]:
    runner = backend.compile(path, 1, "int8")
    return runner({k: v.numpy() for k, v in batch.items()}), runner.kernels().details


def _int8_attention(tiny, path):
    """The x86 contract with int8 attention on the tiny model, calibrated on two batches and exported."""
    model = tiny.bert()
    q = Quantizer(config=QuantConfig.for_device("x86", attention_matmuls=True))
    run_calibration(q.calib(model), [tiny.batch(8, 16, 100 + i) for i in range(2)])
    q.quantize()
    return export_onnx(q.convert(model), INPUT_NAMES, tiny.batch(1, 16, 5), path)


@pytest.mark.parametrize("attention", [False, True])
def test_int8_model_runs_multihead_attention_only_for_float_attention(tiny, tiny_onnx, attention, tmp_path):
    path = _int8_attention(tiny, tmp_path / "int8.onnx") if attention else tiny_onnx["x86"].path
    batch = tiny.batch(6, 20, seed=3)  # odd rows padded: the mask reaches MultiHeadAttention as attention_bias
    fused, kernels = _run(ORTBackend(), path, batch)
    plain, plain_kernels = _run(ORTBackend(fuse_attention=False), path, batch)
    assert "MultiHeadAttention" not in plain_kernels
    # int8 attention matmuls take DequantizeLinear outputs: not the float chain, nothing is rewritten
    assert kernels.get("MultiHeadAttention", 0) == (0 if attention else LAYERS), kernels
    assert kernels.get("MatMulIntegerToFloat") == plain_kernels.get("MatMulIntegerToFloat")  # linears stay int8
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-5 * np.abs(plain).max())


def test_rewrite_leaves_a_model_without_attention_unchanged():
    model = onnx.helper.make_model(onnx.helper.make_graph(
        [onnx.helper.make_node("Softmax", ["x"], ["y"], axis=-1)], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 3])]))
    before = model.SerializeToString()
    assert to_multihead_attention(model) == 0 and model.SerializeToString() == before


@pytest.mark.parametrize("name", [t.name for t in MODEL_TYPES])
def test_every_model_type_computes_the_same_logits(name, tmp_path):
    """Float export of each type: the rewritten session equals the plain one (rewritten or not: a type whose
    attention is not the exported eager chain keeps its nodes)."""
    model = tiny_classifier(name)
    names = model_input_names(model, TYPES[name].tokenizer_inputs)
    path = export_onnx(model, names, example_inputs(model, names, 1, 16), tmp_path / "fp32.onnx")
    proto = onnx.load(str(path))
    blocks = to_multihead_attention(proto)
    onnx.checker.check_model(proto)
    batch = random_batch(model, names, 4, 24, seed=7)
    fused, kernels = _run(ORTBackend(), path, batch)
    plain, _ = _run(ORTBackend(fuse_attention=False), path, batch)
    assert kernels.get("MultiHeadAttention", 0) == blocks
    np.testing.assert_allclose(fused, plain, rtol=0, atol=1e-5 * np.abs(plain).max())
    if name == "bert":
        assert blocks == model.config.num_hidden_layers
