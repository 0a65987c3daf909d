"""Zero-copy runners, the engines' profilers split by op kind, and the int8 GEMM limit, on tiny-BERT artefacts."""
from __future__ import annotations

import platform

import numpy as np
import pytest

from ptqkit import peers, roofline
from ptqkit.backends import FILE_ENGINES, get_backend
from ptqkit.backends.base import OP_KINDS
from ptqkit.backends.openvino import op_kind
from ptqkit.inputs import INPUT_NAMES
from ptqkit.sysinfo import onednn_bf16_capped
from ptqkit.backends.pytorch import TorchRunner, eager_profiler, event_kind
from ptqkit.bench import Shape, synthetic_inputs
from ptqkit.profile import profile_cell

# growing and shrinking batch and length: a runner must follow shape changes between calls
SHAPES = ((1, 16), (4, 40), (2, 8), (1, 64), (3, 16), (1, 16))


CAPPED_BF16 = pytest.mark.skipif(onednn_bf16_capped(),
                                 reason="a plain OpenVINO compile fails under a oneDNN cap below bf16 (NO_BF16_CAPS)")


@pytest.fixture(scope="module")
def onnx_files(tiny_onnx) -> dict:
    """ONNX paths: "fp32", and int8 under the "x86" and the "aarch64" contract."""
    return {name: tiny_onnx["fp32"] if name == "fp32" else tiny_onnx[name].path for name in ("fp32", "x86", "aarch64")}


def _plain(engine: str, path, precision: str):
    """The engine's plain call: OpenVINO infer copying inputs and outputs; ORT session.run (the runner itself)."""
    runner = get_backend(engine).compile(path, 1, precision)
    if engine == "openvino":
        def call(inputs):
            runner.request.infer({n: inputs[n] for n in runner.input_names})
            return runner.request.get_output_tensor(0).data.copy()
        return call
    return lambda inputs: runner.session.run(None, {n: inputs[n] for n in runner.input_names})[0]


@pytest.mark.parametrize("engine", FILE_ENGINES)
@pytest.mark.parametrize("model", ["fp32", "x86"])
def test_zero_copy_runner_equals_plain_call_across_shapes(tiny, engine, model, onnx_files):
    precision = "fp32" if model == "fp32" else "int8"
    runner = get_backend(engine).compile(onnx_files[model], 1, precision)
    plain = _plain(engine, onnx_files[model], precision)
    kept = []
    for i, (b, s) in enumerate(SHAPES):
        inputs = {k: v.numpy() for k, v in tiny.batch(b, s, seed=i).items()}
        out = runner(inputs)
        np.testing.assert_array_equal(out, plain(inputs))
        kept.append((out, out.copy()))
    # what a caller kept is its own: later calls (same shapes included) did not overwrite it
    for out, snapshot in kept:
        np.testing.assert_array_equal(out, snapshot)


def test_openvino_runner_reads_non_contiguous_inputs(tiny, onnx_files):
    runner = get_backend("openvino").compile(onnx_files["x86"], 1, "int8")
    inputs = {k: v.numpy() for k, v in tiny.batch(4, 16, seed=3).items()}
    strided = {k: np.asfortranarray(v) for k, v in inputs.items()}
    np.testing.assert_array_equal(runner(strided), runner(inputs))


@pytest.mark.parametrize("engine", FILE_ENGINES)
@pytest.mark.parametrize("model", ["fp32", "x86"])
def test_op_times_split_by_kind(engine, model, onnx_files):
    precision = "fp32" if model == "fp32" else "int8"
    backend = get_backend(engine)
    inputs = synthetic_inputs(Shape(2, 32), 100, INPUT_NAMES)
    between = []
    calls = backend.op_times(onnx_files[model], 1, precision, inputs, 3, lambda: between.append(1))
    assert len(calls) == 3 and len(between) == 3  # the timed runner gets one call after each profiled one
    for c in calls:
        assert set(c) == set(OP_KINDS)
        assert c["gemm"] > 0 and c["attention"] > 0 and c["norm_act"] > 0, c
    runner = backend.compile(onnx_files[model], 1, precision)
    cell = profile_cell(lambda t, x, n, b: backend.op_times(onnx_files[model], t, precision, x, n, b), runner, inputs,
                        Shape(2, 32), 1, 3)
    assert all(0 < cell[k] <= cell["engine"] for k in ("gemm", "attention", "norm_act"))  # medians of parts <= whole
    assert cell["outside"] >= 0 and cell["end_to_end"] > 0
    assert (cell["batch"], cell["seq_len"], cell["threads"], cell["calls"]) == (2, 32, 1, 3)


@CAPPED_BF16
def test_openvino_books_every_fully_connected_executor_as_gemm(tiny, onnx_files, tmp_path):
    """NNCF's int8 model runs some linears on an executor the performance counters call
    FullyConnectedQuantizedLegacy (the runtime model calls it FullyConnected): those are weight GEMMs too."""
    import openvino as ov

    peer = peers.nncf_int8(onnx_files["fp32"], [tiny.batch(8, 16, 100 + i) for i in range(2)], tmp_path)
    compiled = ov.Core().compile_model(peer.artefact, "CPU", {"PERF_COUNT": True, "INFERENCE_NUM_THREADS": 1})
    request = compiled.create_infer_request()
    request.infer({k: v.numpy() for k, v in tiny.batch(2, 32, seed=1).items()})
    executed = {i.node_type for i in request.profiling_info if i.status == i.Status.EXECUTED}
    fully_connected = {t for t in executed if t.startswith("FullyConnected")}
    assert "FullyConnectedQuantizedLegacy" in fully_connected, executed
    assert {op_kind(t) for t in fully_connected} == {"gemm"}
    assert op_kind("Gather") == "other" and op_kind("MVN") == "norm_act"


@CAPPED_BF16
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="aarch64 peers keep the f32 hint (f16 default)")
def test_nncf_peer_runs_as_a_plain_compile_would(tiny, onnx_files, tmp_path):
    """NNCF's users compile its model with `core.compile_model(xml, "CPU")`: the peer must run at that default
    inference precision (bf16 outside int8 on CPUs with bf16), not at the f32 hint of our "int8" variant, which
    made it up to 14% slower than its users see it (1x512, AMD EPYC with avx512_bf16)."""
    import openvino as ov

    peer = peers.nncf_int8(onnx_files["fp32"], [tiny.batch(8, 16, 100 + i) for i in range(2)], tmp_path)
    plain = ov.Core().compile_model(peer.artefact, "CPU", {"INFERENCE_NUM_THREADS": 1})
    runner = peer.build(1)
    default = plain.get_property("INFERENCE_PRECISION_HINT")
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == default
    assert peer.precision == ("int8-bf16" if default == ov.Type.bf16 else "int8")
    inputs = {k: v.numpy() for k, v in tiny.batch(2, 32, seed=3).items()}
    np.testing.assert_allclose(runner(inputs), plain(inputs)[0], rtol=0, atol=1e-5)


def test_openvino_default_precision_follows_a_bf16_cap(onnx_files, monkeypatch):
    """Under ONEDNN_MAX_CPU_ISA below bf16 (a simulated older CPU) the engine default is f32, as on such a CPU:
    peers run "int8" and our int8-bf16 variant compiles with the f32 hint instead of failing."""
    import openvino as ov

    from ptqkit.backends.openvino import default_int8_precision

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert onednn_bf16_capped() and default_int8_precision() == "int8"
    runner = get_backend("openvino").compile(onnx_files["x86"], 1, "int8-bf16")
    assert runner.compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.f32
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert not onednn_bf16_capped()


@pytest.mark.parametrize("model", ["fp32", "dynamic-int8"])
def test_eager_op_times_split_by_kind(tiny, model):
    """torch.profiler's top-level aten ops of an eager call, by kind: linears (float or torch.ao dynamic int8),
    attention matmuls and softmax, LayerNorm/GELU/adds; Python between them is left to outside."""
    module = tiny.bert()
    if model == "dynamic-int8":
        module = peers.pytorch_dynamic_int8(module, INPUT_NAMES).build(1).model
    inputs = synthetic_inputs(Shape(2, 32), 100, INPUT_NAMES)
    between = []
    calls = eager_profiler(module, INPUT_NAMES)(1, inputs, 3, lambda: between.append(1))
    assert len(calls) == 3 and len(between) == 3
    for c in calls:
        assert set(c) == set(OP_KINDS)
        assert c["gemm"] > 0 and c["attention"] > 0 and c["norm_act"] > 0, c
    runner = TorchRunner(module, INPUT_NAMES, 1)
    cell = profile_cell(eager_profiler(module, INPUT_NAMES), runner, inputs, Shape(2, 32), 1, 3)
    assert all(0 < cell[k] <= cell["engine"] for k in ("gemm", "attention", "norm_act"))
    assert cell["outside"] >= 0 and cell["end_to_end"] > 0


@pytest.mark.parametrize("name, kind", [
    ("aten::linear", "gemm"), ("quantized::linear_dynamic", "gemm"), ("onednn::qlinear_pointwise", "gemm"),
    ("mkl::_mkl_linear", "gemm"), ("graph_0_cpp_fused_addmm_view_1", "gemm"),
    ("aten::scaled_dot_product_attention", "attention"), ("aten::matmul", "attention"), ("aten::bmm", "attention"),
    ("graph_0_cpp_fused__softmax__to_copy_add_arange_2", "attention"),
    ("graph_0_cpp_fused_add_addmm_clone_native_layer_norm_5", "norm_act"), ("aten::gelu", "norm_act"),
    ("aten::add", "norm_act"), ("aten::embedding", None), ("Torch-Compiled Region: 0/0", None),
])
def test_event_kind(name, kind):
    assert event_kind(name) == kind


def test_gemm_macs_from_config():
    from transformers import BertConfig

    cfg = BertConfig(hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_labels=2)
    macs = roofline.gemm_macs(cfg, 1, 128)
    # per layer and token: Q, K, V, output 4 x 384 x 384, FFN 2 x 384 x 1536; pooler 384 x 384, classifier 384 x 2
    assert macs["gemm"] == 6 * 128 * (4 * 384 * 384 + 2 * 384 * 1536) + 384 * 384 + 384 * 2 == 1_359_102_720
    assert macs["attention"] == 6 * 2 * 128 * 128 * 384
    head = 384 * 384 + 384 * 2  # once per sequence, not per token
    assert roofline.gemm_macs(cfg, 2, 256)["gemm"] - 2 * head == 4 * (macs["gemm"] - head)


def test_gemm_macs_of_other_model_types():
    from transformers import AlbertConfig, DistilBertConfig, MobileBertConfig

    distil = roofline.gemm_macs(DistilBertConfig(dim=32, n_layers=2, hidden_dim=64, num_labels=2), 1, 8)
    assert distil["gemm"] == 2 * 8 * (4 * 32 * 32 + 2 * 32 * 64) + 32 * 32 + 32 * 2
    albert = roofline.gemm_macs(AlbertConfig(hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                             embedding_size=16, num_labels=2), 1, 8)
    assert albert["gemm"] == distil["gemm"] + 8 * 16 * 32  # plus the embedding projection
    assert roofline.gemm_macs(MobileBertConfig(), 1, 8) is None  # bottlenecks: not this formula


def test_activation_dtype_follows_the_contract(onnx_files):
    assert roofline.activation_dtype(onnx_files["x86"]) == "uint8"  # affine uint8 activations on x86
    assert roofline.activation_dtype(onnx_files["aarch64"]) == "int8"  # symmetric int8 on aarch64


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_int8_peak_runs_int8_kernels(engine, monkeypatch):
    monkeypatch.setattr(roofline, "PEAK_SHAPES", ((64, 128, 128), (128, 128, 256)))
    peak = roofline.int8_peak(get_backend(engine), 1, "uint8")
    assert [c["int8_kernels"] for c in peak["shapes"]] == [1, 1, 1, 1]  # 2 shapes x float/requantized output
    assert peak["peak_gmac_s"] == max(c["gmac_s"] for c in peak["shapes"]) > 0
    row = roofline.limit_row({"gemm": 10**9, "attention": 0}, {"gemm": 10.0, "end_to_end": 20.0}, 200.0)
    assert (row["gemm_gmac_s"], row["gemm_share_of_peak"], row["end_to_end_share_of_peak"]) == (100.0, 0.5, 0.25)
