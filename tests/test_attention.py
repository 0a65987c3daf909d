"""int8 attention matmuls (QuantConfig.attention_matmuls): converted model, export, engines, the --int8-attention
choice."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ptqkit.backends import get_backend
from ptqkit.config import QuantConfig, RunConfig
from ptqkit.errors import UserError
from ptqkit.export import export_onnx, export_torchscript
from ptqkit.inputs import INPUT_NAMES
from ptqkit.layer_error import layer_errors
from ptqkit.passes import observer_key
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.recipe import int8_attention
from ptqkit.smoothquant import collect_input_absmax, smooth_runtime
from ptqkit.sysinfo import SATURATING_ISAS, host_int8_isa

LAYERS = 2
ATTENTION_MATMULS = 2 * LAYERS


@pytest.fixture(scope="module")
def calib(tiny):
    return [tiny.batch(8, 16, 100 + i) for i in range(4)]


@pytest.fixture(scope="module")
def bert(tiny_onnx):
    return tiny_onnx["model"]


def quantized(model, calib: list[dict], device: str = "x86") -> Quantizer:
    """The device's contract with attention matmuls, runtime smoothing as the pipeline applies it."""
    q = Quantizer(config=QuantConfig.for_device(device, attention_matmuls=True))
    graph = q.calib(model)
    if q.config.smooth_alpha is not None:
        smooth_runtime(q, collect_input_absmax(model, calib), q.config.smooth_alpha)
    run_calibration(graph, calib)
    q.quantize()
    return q


@pytest.fixture(scope="module")
def q(bert, calib):
    return quantized(bert, calib)


@pytest.fixture(scope="module")
def converted(q, bert):
    return q.convert(bert)


@pytest.fixture(scope="module")
def onnx_path(export_example, converted, tmp_path_factory):
    return export_onnx(converted, INPUT_NAMES, export_example, tmp_path_factory.mktemp("attention") / "int8.onnx")


def test_operand_grids(q):
    """q, K^T, V symmetric int8; the softmax output unsigned from zero point 0."""
    for layer in range(LAYERS):
        prefix = f"bert.encoder.layer.{layer}.attention.self"
        for point, role, dtype in (("qk", "input", "int8"), ("qk", "other", "int8"), ("pv", "input", "uint8"),
                                   ("pv", "other", "int8")):
            obs = q.observers()[observer_key(f"{prefix}.{point}", role)]
            assert obs.spec.dtype == dtype and int(obs.zero_point) == 0 and float(obs.scale) > 0
        probs = q.observers()[observer_key(f"{prefix}.pv", "input")]
        assert float(probs.max_val) <= 1.0 and float(probs.scale) <= 1 / 255 + 1e-7


def test_converted_model_equals_graph(other_shape, tiny, tiny_onnx, q, bert, converted):
    for batch in (other_shape, tiny.batch(1, 5, seed=3)):
        assert torch.equal(tiny.logits(converted, batch), tiny.logits(q.graph, batch))
    assert sum(type(m).__name__ == "QuantAttention" for m in converted.modules()) == LAYERS
    assert bert.config._attn_implementation == "eager"  # the float model is untouched
    # attention quantization is on: the x86 contract without it gives other outputs
    plain = tiny_onnx["x86"].q
    assert not plain.config.attention_matmuls
    assert not torch.equal(tiny.logits(plain.graph, other_shape), tiny.logits(converted, other_shape))


def test_one_attention_matmul_left_in_fp32(other_shape, tiny, q, bert):
    """Fallback of a single matmul point: its operands pass through, the rest stays quantized."""
    q = copy.deepcopy(q)
    q.fallback({"bert.encoder.layer.0.attention.self.qk": 1.0}, 1)
    converted = q.convert(bert)
    assert torch.equal(tiny.logits(converted, other_shape), tiny.logits(q.graph, other_shape))
    assert not hasattr(converted.bert.encoder.layer[0].attention.self.quant_attention, "query_scale")


def test_state_round_trip_and_torchscript(other_shape, export_example, tiny, q, bert, converted, tmp_path):
    q.save(tmp_path / "state")
    again = Quantizer.load(tmp_path / "state", copy.deepcopy(bert)).convert(bert)
    assert torch.equal(tiny.logits(again, other_shape), tiny.logits(converted, other_shape))
    traced = torch.jit.load(str(export_torchscript(converted, INPUT_NAMES, export_example, tmp_path / "int8.pt")))
    with torch.no_grad():
        assert torch.equal(traced(*(export_example[n] for n in INPUT_NAMES)), tiny.logits(converted, export_example))


def test_onnx_has_qdq_on_both_operands_of_attention_matmuls(tiny, onnx_path):
    import onnx

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    matmuls = [n for n in graph.node if n.op_type == "MatMul"]
    attention = [n for n in matmuls if not any(producers[i].input[0] in inits for i in n.input if i in producers)]
    assert len(matmuls) == tiny.LINEARS + ATTENTION_MATMULS and len(attention) == ATTENTION_MATMULS
    for mm in attention:  # DequantizeLinear(QuantizeLinear(activation)) on both inputs
        for name in mm.input:
            dq = producers[name]
            assert dq.op_type == "DequantizeLinear" and producers[dq.input[0]].op_type == "QuantizeLinear"


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_engines_run_int8_attention(other_shape, tiny, engine, q, onnx_path):
    runner = get_backend(engine).compile(onnx_path, 1, "int8")
    ev = runner.kernels()
    if engine == "openvino" and host_int8_isa() not in SATURATING_ISAS:
        # each attention block is one fused subgraph, run in int8 (jit_avx512_i8)
        assert ev.details.get("AttentionSubgraph:i8") == LAYERS and ev.int8 == tiny.LINEARS + LAYERS, ev.details
    elif engine == "openvino":  # without VNNI the plugin fuses no attention block: each matmul runs as an int8 MatMul
        assert ev.details.get("AttentionSubgraph:i8") is None and ev.fp32 == 0, ev.details
        assert ev.int8 == tiny.LINEARS + ATTENTION_MATMULS, ev.details
    else:  # every MatMul, attention included, became an int8 op
        assert ev.int8 == tiny.LINEARS + ATTENTION_MATMULS and ev.fp32 == 0, ev.details
    ref = tiny.logits(q.graph, other_shape).numpy()
    out = runner({k: v.numpy() for k, v in other_shape.items()})
    assert (out.argmax(1) == ref.argmax(1)).mean() >= 0.95
    assert np.abs(out - ref).max() <= 0.05 * np.abs(ref).max()


def test_layer_report_covers_the_linears(calib, tiny, q, bert):
    errors = layer_errors(bert, q, calib[:1])
    assert len(errors) == tiny.LINEARS and all(e.local_sqnr > 0 for e in errors)


def test_unsupported_attention_is_a_user_error(q, bert, monkeypatch):
    """A model whose attention bypasses transformers' attention interface cannot silently keep fp32 attention."""
    from transformers.models.bert import modeling_bert

    assert q.attention_obstacle(bert) == ""
    monkeypatch.setattr(modeling_bert.ALL_ATTENTION_FUNCTIONS, "get_interface", lambda name, default: default)
    # --int8-attention auto then calibrates without it, with this reason in report.json (recipe.calibrate)
    assert q.attention_obstacle(bert) == "its attention does not go through transformers' attention interface"
    with pytest.raises(UserError, match="int8 attention is not supported for model type 'bert'"):
        q.convert(bert)


@pytest.mark.parametrize("flags, expected", [
    ({"int8_attention": "on", "device": "aarch64"}, True),  # on/off are the user's word
    ({"int8_attention": "off", "backend": "openvino", "isa": "avx512_vnni"}, False),
    ({"backend": "auto", "isa": "avx512_vnni"}, True),  # auto: on for x86 with VNNI under --backend auto
    ({"backend": "auto", "isa": "avx_vnni"}, True),
    ({"backend": "auto", "isa": "amx"}, True),
    ({"backend": "auto", "isa": "avx512"}, False),  # off where 16-bit pair sums saturate
    ({"backend": "auto", "isa": "avx2"}, False),
    ({"backend": "auto", "device": "aarch64", "isa": "arm_i8mm"}, False),  # off on aarch64
    ({"backend": "openvino", "isa": "avx512_vnni"}, True),  # a forced engine: its own preference
    ({"backend": "onnxruntime", "isa": "avx512_vnni"}, False),  # as fast either way: stays off
    ({"backend": "inductor", "isa": "avx512_vnni"}, False),  # runs attention as fp32 math
    ({"backend": "openvino", "isa": "avx2"}, False),
    ({"backend": "openvino", "device": "aarch64"}, False),
    ({"backend": "auto", "isa": "avx512_vnni", "max_seq_len": 128}, True),
    ({"backend": "auto", "isa": "avx512_vnni", "max_seq_len": 129}, False),  # long rows: P's grid loses them
    ({"backend": "openvino", "isa": "avx512_vnni", "max_seq_len": 512}, False),
    ({"int8_attention": "on", "max_seq_len": 512}, True),
])
def test_int8_attention_choice(flags, expected):
    assert int8_attention(RunConfig(**flags)) is expected


def test_int8_attention_auto_reads_the_host_isa_and_refuses_other_words():
    host = int8_attention(RunConfig(backend="auto", isa=host_int8_isa()))
    assert int8_attention(RunConfig(backend="auto")) is host
    with pytest.raises(UserError, match="--int8-attention"):
        int8_attention(RunConfig(int8_attention="maybe"))


@pytest.mark.slow  # one Inductor compile: ~20-40 s on 2 cores
def test_inductor_compiles_attention_in_fp32(tiny, converted, q):
    """Inductor takes the module: its linears become int8 GEMMs; the attention fake-quant runs as fp32 math around
    fp32 batched matmuls (no int8 attention there, hence Engine.int8_attention False) and matches the graph."""
    from ptqkit.backends.inductor import InductorBackend
    from ptqkit.qmodel import LogitsOnly

    runner = InductorBackend().compile(LogitsOnly(converted, INPUT_NAMES), 1, "int8")
    batch = tiny.batch(4, 12, seed=7)
    out = runner({k: v.numpy() for k, v in batch.items()})
    ref = tiny.logits(q.graph, batch).numpy()
    np.testing.assert_allclose(out, ref, rtol=0, atol=2e-2 * np.abs(ref).max())
    ev = runner.kernels()
    assert ev.int8 == tiny.LINEARS, ev.details
    assert ev.fp32 == ev.details.get("aten.bmm.default", 0) == ATTENTION_MATMULS, ev.details


def test_inductor_qdq_form_computes_the_converted_model(other_shape, tiny, converted):
    """Inductor's traceable rewrite (QDQAttention beside QDQLinear) computes what the converted model computes."""
    from ptqkit.backends.inductor_qdq import QDQAttention, to_qdq_module

    qdq = to_qdq_module(converted)
    assert sum(isinstance(m, QDQAttention) for m in qdq.modules()) == LAYERS
    ref = tiny.logits(converted, other_shape).numpy()
    np.testing.assert_allclose(tiny.logits(qdq, other_shape).numpy(), ref, rtol=0, atol=1e-4 * np.abs(ref).max())
