"""Engines on exported tiny-BERT artefacts: int8 kernels really run, outputs match the torch fake-quant graph."""
from __future__ import annotations

import copy

import numpy as np
import pytest

from ptqkit.backends import FILE_ENGINES, get_backend
from ptqkit.export import export_onnx
from ptqkit.inputs import INPUT_NAMES
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.smoothquant import collect_input_absmax, smooth_runtime


@pytest.fixture(scope="module")
def eval_np(other_shape):
    return {k: v.numpy() for k, v in other_shape.items()}


@pytest.fixture(scope="module")
def artefacts(other_shape, export_example, tiny, tiny_onnx, tmp_path_factory):
    """ONNX files and the torch reference logits for each: fp32, int8 (x86, aarch64), int8 with 2 fp32 layers."""
    out = tmp_path_factory.mktemp("onnx")
    model = tiny_onnx["model"]
    arts = {"fp32": (tiny_onnx["fp32"], tiny.logits(model, other_shape).numpy(), tiny.LINEARS)}
    for device in ("x86", "aarch64"):
        int8 = tiny_onnx[device]
        arts[device] = (int8.path, tiny.logits(int8.q.graph, other_shape).numpy(), tiny.LINEARS)
    q = copy.deepcopy(tiny_onnx["aarch64"].q)  # the aarch64 quantizer, now with two layers left in fp32
    q.fallback(q.amp([tiny.batch(8, 16, 200)]), 2)
    path = export_onnx(q.convert(model), INPUT_NAMES, export_example, out / "int8-fallback.onnx")
    arts["fallback"] = (path, tiny.logits(q.graph, other_shape).numpy(), tiny.LINEARS - 2)
    q = Quantizer("x86")  # runtime smoothing (a Mul in front of each activation quantizer), two layers in fp32
    batches = [tiny.batch(8, 16, 100 + i) for i in range(4)]
    graph = q.calib(model)
    smooth_runtime(q, collect_input_absmax(model, batches), 0.8)
    run_calibration(graph, batches)
    q.fallback(q.amp([tiny.batch(8, 16, 200)]), 2)
    path = export_onnx(q.convert(model), INPUT_NAMES, export_example, out / "int8-smoothed.onnx")
    arts["smoothed"] = (path, tiny.logits(q.graph, other_shape).numpy(), tiny.LINEARS - 2)
    assert len(set(arts["fp32"][1].argmax(1))) == 2  # informative logits: both classes predicted
    return arts


@pytest.fixture(params=FILE_ENGINES)
def engine(request):
    return get_backend(request.param)  # openvino and onnxruntime are requirements: missing is a failure


def _agreement(out: np.ndarray, ref: np.ndarray) -> float:
    return float((out.argmax(1) == ref.argmax(1)).mean())


def test_fp32_runs_without_int8_kernels(eval_np, tiny, engine, artefacts):
    path, ref, _ = artefacts["fp32"]
    runner = engine.compile(path, 1, "fp32")
    ev = runner.kernels()
    assert ev.int8 == 0 and ev.fp32 >= tiny.LINEARS, ev.details
    out = runner(eval_np)
    assert out.shape == ref.shape == (32, 2)
    assert np.abs(out - ref).max() < 1e-4


@pytest.mark.parametrize("variant", ["x86", "aarch64", "fallback", "smoothed"])
def test_int8_kernels_and_agreement(eval_np, tiny, engine, artefacts, variant):
    path, ref, quantized_linears = artefacts[variant]
    runner = engine.compile(path, 1, "int8")
    ev = runner.kernels()
    # one int8 kernel per quantized linear (OpenVINO FullyConnected, ORT MatMulIntegerToFloat)
    assert ev.int8 == quantized_linears, ev.details
    if engine.name == "openvino":  # the fallback linears stay fp32, and so does each layer's attention subgraph
        assert ev.fp32 == tiny.LINEARS - quantized_linears + 2 and ev.other == 0, ev.details
        assert ev.details["AttentionSubgraph:f32"] == 2
    out = runner(eval_np)
    assert out.shape == ref.shape
    assert _agreement(out, ref) >= 0.95
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()  # measured ~1e-7: same QDQ arithmetic


@pytest.mark.parametrize("variant", ["fp32", "smoothed"])
def test_openvino_static_copy_serves_its_shape_only(eval_np, tiny, artefacts, variant):
    """prepare() compiles a static-shape copy used for calls of that shape; other shapes run the dynamic model.
    Both compute what the fake-quant (fp32) reference does, and the copy matches the dynamic model's logits."""
    path, ref, _ = artefacts[variant]
    runner, plain = get_backend("openvino").compile(path, 1, "int8"), get_backend("openvino").compile(path, 1, "int8")
    runner.prepare(eval_np)
    runner.prepare(eval_np)  # once per shape
    assert len(runner.static_copies()) == 1
    static_out, dynamic_out = runner(eval_np), plain(eval_np)
    assert np.abs(static_out - ref).max() <= 0.05 * np.abs(ref).max()
    assert np.abs(static_out - dynamic_out).max() <= 1e-3 * np.abs(ref).max()
    other = {k: v.numpy() for k, v in tiny.batch(3, 12, seed=2).items()}
    assert np.array_equal(runner(other), plain(other))  # no copy for this shape: the same dynamic model
    assert len(runner.static_copies()) == 1


def test_aarch64_artefact_is_per_tensor(tiny, artefacts):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(artefacts["aarch64"][0]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dq) == tiny.LINEARS and all(inits[n.input[0]].dtype == np.int8 for n in weight_dq)
    for n in weight_dq:
        assert inits[n.input[1]].shape == ()  # scalar scale, no axis
        assert not any(a.name == "axis" for a in n.attribute)
    x86 = onnx.load(str(artefacts["x86"][0]))
    x86_inits = {i.name: numpy_helper.to_array(i) for i in x86.graph.initializer}
    assert all(x86_inits[n.input[1]].ndim == 1 for n in x86.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in x86_inits)
