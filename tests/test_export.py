"""Export of the fake-quant model: eager rebuild, TorchScript round trip, QDQ ONNX (per-device) run by ONNX Runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ptqkit.export import export_onnx, export_torchscript
from ptqkit.inputs import INPUT_NAMES
from ptqkit.passes import observer_key
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.smoothquant import collect_input_absmax, smooth_runtime


@pytest.fixture(scope="module")
def bert(tiny_onnx):
    return tiny_onnx["model"]


@pytest.fixture(scope="module", params=["x86", "aarch64", "x86-smoothed"])
def quantized(export_example, tiny, tiny_onnx, request, bert, tmp_path_factory):
    """(device, quantizer, eager fake-quant model, int8 ONNX path) per device contract (plus runtime smoothing)."""
    device = request.param.split("-")[0]
    if not request.param.endswith("smoothed"):
        shared = tiny_onnx[device]
        return device, shared.q, shared.converted, shared.path
    q = Quantizer(device)
    batches = [tiny.batch(8, 16, 100 + i) for i in range(4)]
    graph = q.calib(bert)
    smooth_runtime(q, collect_input_absmax(bert, batches), 0.8)
    run_calibration(graph, batches)
    q.quantize()
    eager = q.convert(bert)
    path = export_onnx(eager, INPUT_NAMES, export_example, tmp_path_factory.mktemp(request.param) / "int8.onnx")
    return device, q, eager, path


def _const(model, name: str) -> np.ndarray:
    """Value of an initializer or Constant output, following Identity nodes."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    while name not in inits:
        node = producers[name]
        if node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t)
        assert node.op_type == "Identity", f"{name} comes from {node.op_type}, not a constant"
        name = node.input[0]
    return numpy_helper.to_array(inits[name])


def _axis(node):
    return next((a.i for a in node.attribute if a.name == "axis"), None)


def test_converted_model_equals_graph(other_shape, tiny, quantized):
    _, q, eager, _ = quantized
    for batch in (other_shape, tiny.batch(1, 5, seed=3)):
        assert torch.equal(tiny.logits(eager, batch), tiny.logits(q.graph, batch))
    assert sum(type(m).__name__ == "QuantLinear" for m in eager.modules()) == tiny.LINEARS


def test_torchscript_round_trip(tiny, quantized, tmp_path):
    _, _, eager, _ = quantized
    example = tiny.batch(2, 16, seed=9)
    path = export_torchscript(eager, INPUT_NAMES, example, tmp_path / "int8.pt")
    loaded = torch.jit.load(str(path))
    probe = tiny.batch(2, 16, seed=11)  # the traced shape, other values
    for batch in (example, probe):
        with torch.no_grad():
            out = loaded(*(batch[n] for n in INPUT_NAMES))
        assert torch.equal(out, tiny.logits(eager, batch))


def test_torchscript_export_prints_no_loss_warning(tiny, quantized, tmp_path):
    """jit.trace's attribute walk read transformers' loss_function property, which printed a warning about a
    causal-LM loss into every main run; the export keeps transformers' logger quiet and restores its level."""
    import logging

    from transformers.utils import logging as hf_logging

    _, _, eager, _ = quantized
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    root = hf_logging.get_logger("transformers")
    hf_logging.get_logger("transformers.modeling_utils").warning_once.cache_clear()  # earlier tests may have shown it
    level = hf_logging.get_verbosity()
    root.addHandler(handler)
    try:
        export_torchscript(eager, INPUT_NAMES, tiny.batch(1, 8, seed=2), tmp_path / "int8.pt")
    finally:
        root.removeHandler(handler)
    assert not [r for r in records if "loss_type" in r.getMessage()]
    assert hf_logging.get_verbosity() == level


def _out_axis(consumer, input_index: int) -> int:
    """Which axis of the weight feeding `consumer` holds the output features."""
    if consumer.op_type == "MatMul":
        assert input_index == 1
        return 1  # B is [in, out]
    assert consumer.op_type == "Gemm" and input_index == 1, consumer.op_type
    trans_b = next((a.i for a in consumer.attribute if a.name == "transB"), 0)
    return 0 if trans_b else 1


def test_onnx_qdq_structure(tiny, quantized, bert):
    import onnx
    from onnx import numpy_helper

    device, q, eager, path = quantized
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # weights are stored as int8 integers (DequantizeLinear only); activations get QuantizeLinear + DequantizeLinear
    assert ops.count("QuantizeLinear") == tiny.LINEARS and ops.count("DequantizeLinear") == 2 * tiny.LINEARS
    inits = {i.name: i for i in model.graph.initializer}
    assert not any(n.op_type == "Identity" and n.input[0] in inits for n in model.graph.node)  # inlined
    consumers = {}
    for n in model.graph.node:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))

    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dq) == tiny.LINEARS
    for point, dq in zip(q.points, weight_dq):  # graph order is forward order
        out_features = bert.get_submodule(point.name).out_features
        ((mm, index),) = consumers[dq.output[0]]  # DequantizeLinear feeds the GEMM directly (no Transpose)
        axis = _out_axis(mm, index)
        ints = numpy_helper.to_array(inits[dq.input[0]])
        assert ints.dtype == np.int8 and ints.shape[axis] == out_features
        scale, zp = _const(model, dq.input[1]), _const(model, dq.input[2])
        assert zp.dtype == np.int8 and not zp.any()  # symmetric int8
        np.testing.assert_array_equal(scale, q.qparams(point.name, "weight")[0].numpy())
        if device == "x86":  # per-channel along the output features
            assert scale.shape == (out_features,) and _axis(dq) == axis
        else:  # aarch64: per-tensor
            assert scale.shape == () and _axis(dq) is None
        # the stored integers are exactly the fake-quant model's weights
        shape = [1] * ints.ndim
        shape[axis] = -1
        fq = eager.get_submodule(point.name).quantized_weight().detach().numpy()
        np.testing.assert_array_equal(ints.astype(np.float32) * scale.reshape(shape), fq)
    act_q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert len(act_q) == tiny.LINEARS and not any(n.input[0] in inits for n in act_q)
    producers = {o: n for n in model.graph.node for o in n.output}
    for point, qn in zip(q.points, act_q):
        obs = q.observers()[observer_key(point.name, "input")]
        assert _const(model, qn.input[1]).shape == ()
        assert _const(model, qn.input[2]) == obs.zero_point.item()
        assert _const(model, qn.input[2]).dtype == (np.uint8 if obs.spec.dtype == "uint8" else np.int8)
        if obs.channel_mul.numel():  # runtime smoothing: the activation is multiplied per channel, then quantized
            mul = producers[qn.input[0]]
            assert mul.op_type == "Mul"
            np.testing.assert_array_equal(_const(model, mul.input[1]), obs.channel_mul.numpy())


def test_onnx_dynamic_axes_run_in_onnxruntime(other_shape, tiny, quantized):
    import onnx
    import onnxruntime as ort

    _, q, _, path = quantized
    graph_inputs = onnx.load(str(path)).graph.input
    assert [i.name for i in graph_inputs] == list(INPUT_NAMES)
    for i in graph_inputs:
        dims = i.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "seq_len"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ref = tiny.logits(q.graph, other_shape).numpy()
    out = session.run(None, {k: v.numpy() for k, v in other_shape.items()})[0]
    assert out.shape == ref.shape == (32, 2)
    assert np.abs(out - ref).max() < 1e-4  # same QDQ arithmetic; measured ~2e-7
    assert (out.argmax(1) == ref.argmax(1)).all()
