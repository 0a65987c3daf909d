"""Frontend on tiny random models: capture, quantization points, calib/quantize/amp/fallback/QAT, state I/O."""
from __future__ import annotations

import copy

import pytest
import torch

from ptqkit.capture import CaptureError, capture, model_input_names
from ptqkit.config import QuantConfig
from ptqkit.errors import UserError
from ptqkit.inputs import INPUT_NAMES
from ptqkit.lsq import LSQQuantizer
from ptqkit.observers import Observer
from ptqkit.passes import OBSERVERS_ATTR, find_quant_points, observer_key
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.sysinfo import SATURATING_ISAS

LAYERS = 2
PER_LAYER = ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
             "intermediate.dense", "output.dense")


def calibrated(model: torch.nn.Module, batches, device: str = "x86", **overrides) -> Quantizer:
    q = Quantizer(config=QuantConfig.for_device(device, **overrides))
    run_calibration(q.calib(model), batches)
    q.quantize()
    return q


@pytest.fixture(scope="module")
def calib_batches(tiny):
    return [tiny.batch(8, 16, 100 + i) for i in range(4)]


@pytest.fixture(scope="module")
def eval_batch(tiny):
    return tiny.batch(64, 20, 7)


@pytest.fixture(scope="module")
def bert(tiny_onnx):
    return tiny_onnx["model"]


@pytest.fixture(scope="module")
def bert_graph(bert):
    """A plain captured graph (no observers) for point-finding tests."""
    return capture(bert).module


@pytest.fixture(scope="module")
def q_x86(tiny_onnx):
    """The x86 contract calibrated on the four calibration batches (shared: copy it before changing it)."""
    return tiny_onnx["x86"].q


@pytest.fixture(scope="module")
def q_arm(tiny_onnx):
    """The aarch64 contract, as q_x86."""
    return tiny_onnx["aarch64"].q


# --- capture --------------------------------------------------------------------------------------------------
def _check_dynamic(tiny, model, graph, names):
    for n, seq in ((1, 7), (5, 23)):  # batch 1 and a length different from the export example (16)
        batch = tiny.batch(n, seq, seed=n, names=names)
        out = tiny.logits(graph, batch)
        assert out.shape == (n, 2)
        torch.testing.assert_close(out, tiny.logits(model, batch), rtol=1e-5, atol=1e-6)


def test_capture_bert_dynamic_batch_and_seq(tiny, bert, bert_graph):
    assert model_input_names(bert) == INPUT_NAMES
    _check_dynamic(tiny, bert, bert_graph, INPUT_NAMES)


def test_find_quant_points_bert_names_every_linear(bert, bert_graph):
    points = find_quant_points(bert_graph, QuantConfig.for_device("x86"))
    expected = [f"bert.encoder.layer.{i}.{s}" for i in range(LAYERS) for s in PER_LAYER]
    expected += ["bert.pooler.dense", "classifier"]
    assert [p.name for p in points] == expected  # 6 per layer + pooler + classifier = 14, in graph order
    assert all(p.kind == "linear" for p in points)
    linears = {n for n, m in bert.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(expected) == linears
    assert all(len(p.nodes) == 1 for p in points)  # no module runs twice in BERT


def _distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64, num_labels=2,
        attn_implementation="eager")).eval()


def _roberta():
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    return RobertaForSequenceClassification(RobertaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=66, pad_token_id=1, type_vocab_size=1, num_labels=2, attn_implementation="eager")).eval()


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_capture_other_families(tiny, family):
    model = _distilbert() if family == "distilbert" else _roberta()
    names = model_input_names(model)
    assert names == ("input_ids", "attention_mask")
    graph = capture(model).module
    _check_dynamic(tiny, model, graph, names)
    points = find_quant_points(graph, QuantConfig.for_device("x86"))
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(points) == len(linears) == 14
    assert [p.name for p in points] == linears  # module paths, in execution order
    if family == "distilbert":
        assert points[0].name == "distilbert.transformer.layer.0.attention.q_lin"
        assert points[-2].name == "pre_classifier"
    else:
        assert points[0].name == "roberta.encoder.layer.0.attention.self.query"
        assert [p.name for p in points[-2:]] == ["classifier.dense", "classifier.out_proj"]


class _Branchy(torch.nn.Module):
    """Data-dependent Python control flow on a tensor: torch.export cannot capture it."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config

    def forward(self, input_ids, attention_mask, token_type_ids):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        if out.logits.sum() > 0:  # data-dependent branch
            return out
        return out


class _Itemy(_Branchy):
    def forward(self, input_ids, attention_mask, token_type_ids):
        n = int(attention_mask.sum(1).max().item())  # data-dependent length
        return self.inner(input_ids=input_ids[:, :n], attention_mask=attention_mask[:, :n],
                          token_type_ids=token_type_ids[:, :n])


@pytest.mark.parametrize("wrapper,source", [(_Branchy, "if out.logits.sum() > 0"), (_Itemy, ".item()")])
def test_capture_error_names_failing_line(bert, wrapper, source):
    with pytest.raises(CaptureError) as info:
        capture(wrapper(bert))
    msg = str(info.value)
    assert "\n" not in msg
    assert wrapper.__name__ in msg
    assert "test_quantizer.py:" in msg and source in msg  # the user's source line, not a torch internal
    assert "data-dependent" in msg


# --- points and exclusion -------------------------------------------------------------------------------------
def test_exclude_by_name_pattern(bert_graph):
    names = [p.name for p in find_quant_points(bert_graph, QuantConfig.for_device("x86", exclude=("*.pooler.*",)))]
    assert len(names) == 13 and "bert.pooler.dense" not in names and "classifier" in names
    names = [p.name for p in find_quant_points(bert_graph, QuantConfig.for_device("x86", exclude=("classifier",)))]
    assert len(names) == 13 and "classifier" not in names and "bert.pooler.dense" in names
    both = QuantConfig.for_device("x86", exclude=("*.pooler.*", "classifier", "*.layer.0.*"))
    assert len(find_quant_points(bert_graph, both)) == 6


def test_exclude_all_linears_is_user_error(bert):
    with pytest.raises(UserError, match="nothing to quantize"):
        Quantizer(config=QuantConfig.for_device("x86", exclude=("linear",))).calib(copy.deepcopy(bert))


def test_attention_matmul_points(bert_graph):
    points = find_quant_points(bert_graph, QuantConfig.for_device("x86", attention_matmuls=True))
    matmuls = [p for p in points if p.kind == "matmul"]
    assert [p.name for p in matmuls] == [f"bert.encoder.layer.{i}.attention.self.{s}" for i in range(LAYERS)
                                         for s in ("qk", "pv")]
    assert all(p.roles == ("input", "other") for p in matmuls)
    assert len(points) == 14 + 2 * LAYERS
    only = QuantConfig.for_device("x86", attention_matmuls=True, exclude=("linear",))
    assert [p.kind for p in find_quant_points(bert_graph, only)] == ["matmul"] * (2 * LAYERS)


# --- calib / quantize -----------------------------------------------------------------------------------------
def test_calib_model_is_exactly_fp32(tiny, bert, eval_batch):
    q = Quantizer("x86")
    graph = q.calib(bert)
    with pytest.raises(UserError, match="never fed"):  # no calibration batch yet
        q.quantize()
    for batch in (eval_batch, tiny.batch(1, 9, 3)):
        assert torch.equal(tiny.logits(graph, batch), tiny.logits(bert, batch))
    assert all(o.observing != k.endswith("__weight") and not o.fake_quant for k, o in q.observers().items())


def test_quantized_close_to_fp32(tiny, bert, q_x86, q_arm, eval_batch):
    ref = tiny.logits(bert, eval_batch)
    assert ref.argmax(1).float().mean().item() not in (0.0, 1.0)  # informative logits: both classes occur
    margin = ref[:, 0] - ref[:, 1]
    for q in (q_x86, q_arm):
        out = tiny.logits(q.graph, eval_batch)
        assert not torch.equal(out, ref)  # fake quant is on
        assert ((out - ref).norm() / ref.norm()).item() < 0.05  # measured ~0.02
        assert ((out[:, 0] - out[:, 1] - margin).norm() / margin.norm()).item() < 0.15
        assert (out.argmax(1) == ref.argmax(1)).float().mean().item() >= 0.95


def test_device_qparams_contract(q_x86, q_arm, bert):
    for q, per_channel in ((q_x86, True), (q_arm, False)):
        affine = per_channel  # x86: affine uint8 activations; aarch64: symmetric int8 (zero point 0)
        assert q.config.weight.symmetric and q.config.activation.symmetric != affine
        for p in q.points:
            out_features = bert.get_submodule(p.name).out_features
            w_scale, w_zp = q.qparams(p.name, "weight")
            assert w_scale.shape == ((out_features,) if per_channel else ())
            assert torch.all(w_zp == 0) and torch.all(w_scale > 0)
            a_scale, a_zp = q.qparams(p.name, "input")
            assert a_scale.shape == () and a_zp.shape == ()  # per-tensor
            assert 0 <= int(a_zp) <= 255 if affine else int(a_zp) == 0
            # 7-bit weights where u8 x s8 pair sums saturate (x86 without VNNI), 8-bit elsewhere
            narrow = q.config.device == "x86" and q.config.isa in SATURATING_ISAS
            assert q.observers()[observer_key(p.name, "weight")].spec.qmin == (-64 if narrow else -128)


# --- amp / fallback -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def q_fallback(q_x86, calib_batches):
    q = copy.deepcopy(q_x86)
    sens = q.amp(calib_batches[:2])
    chosen = q.fallback(sens, 2)
    return q, sens, chosen


def test_amp_scores_every_point(q_fallback):
    q, sens, _ = q_fallback
    assert set(sens) == {p.name for p in q.points}
    assert all(v >= 0 for v in sens.values()) and max(sens.values()) > 0
    assert list(sens.values()) == sorted(sens.values(), reverse=True)


def test_fallback_disables_exactly_chosen(tiny, q_fallback, eval_batch, bert):
    q, sens, chosen = q_fallback
    assert chosen == list(sens)[:2] and q.fallback_layers == chosen
    obs = q.observers()
    for p in q.points:
        for role in p.roles:
            assert obs[observer_key(p.name, role)].fake_quant is (p.name not in chosen), (p.name, role)
    assert [p.name for p in q.quantized_points()] == [p.name for p in q.points if p.name not in chosen]
    # the eager export quantizes exactly the remaining layers and agrees with the graph
    eager = q.convert(bert)
    wrapped = {n for n, m in eager.named_modules() if type(m).__name__ == "QuantLinear"}
    assert wrapped == {p.name for p in q.quantized_points()}
    assert torch.equal(tiny.logits(eager, eval_batch), tiny.logits(q.graph, eval_batch))


def test_save_load_round_trip_with_fallback(tiny, q_fallback, bert, eval_batch, tmp_path):
    q, _, chosen = q_fallback
    q.save(tmp_path / "state")
    q2 = Quantizer.load(tmp_path / "state", copy.deepcopy(bert))
    assert q2.fallback_layers == chosen
    assert [p.name for p in q2.points] == [p.name for p in q.points]
    assert torch.equal(tiny.logits(q2.graph, eval_batch), tiny.logits(q.graph, eval_batch))
    for key, o in q.observers().items():
        o2 = q2.observers()[key]
        assert o2.fake_quant == o.fake_quant
        assert torch.equal(o2.scale, o.scale) and torch.equal(o2.zero_point, o.zero_point)


def test_save_load_round_trip_per_tensor(tiny, q_arm, bert, eval_batch, tmp_path):
    """aarch64 contract (per-tensor weights); the x86 contract round trips in the fallback test above."""
    q = q_arm
    q.save(tmp_path / "state")
    q2 = Quantizer.load(tmp_path / "state", copy.deepcopy(bert))
    assert q2.config == q.config and q2.fallback_layers == []
    assert torch.equal(tiny.logits(q2.graph, eval_batch), tiny.logits(q.graph, eval_batch))


# --- QAT ------------------------------------------------------------------------------------------------------
def test_qat_trains_scales_and_round_trips(tiny, calib_batches, eval_batch, tmp_path):
    model = tiny.bert(seed=1)
    original = copy.deepcopy(model)
    q = calibrated(model, calib_batches, "x86")
    before = tiny.logits(q.graph, eval_batch)

    graph = q.qat()
    lsq = {k: o for k, o in q.observers().items() if isinstance(o, LSQQuantizer)}
    assert len(lsq) == 2 * len(q.points)
    scales = [o.scale for o in lsq.values()]
    initial = [s.detach().clone() for s in scales]
    weights = [p for n, p in graph.named_parameters() if not n.startswith(OBSERVERS_ATTR)]
    # Adam moves every scale by ~lr per step: keep lr well below the smallest scale (weights: ~2e-4) so none
    # crosses zero (LSQ clamps the scale at eps, where its gradient vanishes)
    opt = torch.optim.Adam([{"params": scales, "lr": 1e-5}, {"params": weights, "lr": 1e-3}])
    for step, batch in enumerate(calib_batches[:3]):
        out = graph(**batch).logits
        loss = torch.nn.functional.cross_entropy(out, torch.arange(out.shape[0]) % 2)
        opt.zero_grad()
        loss.backward()
        if step == 0:
            assert all(s.grad is not None and torch.isfinite(s.grad).all() for s in scales)
            assert sum(bool(s.grad.abs().sum() > 0) for s in scales) >= 0.9 * len(scales)
        opt.step()
    post = tiny.logits(graph, eval_batch)
    assert (post - before).abs().max() > 1e-3
    learned = {k: o.scale.detach().clone() for k, o in lsq.items()}
    assert all(bool((s > 1e-6).all()) for s in learned.values())
    assert any(not torch.equal(s, q_s) for s, q_s in zip(learned.values(), initial))

    q.end_qat()
    assert all(isinstance(o, Observer) and o.fake_quant for o in q.observers().values())
    for k, s in learned.items():
        assert torch.equal(q.observers()[k].scale, s)
    assert torch.equal(tiny.logits(q.graph, eval_batch), post)
    # the eager export takes the graph's trained weights, whatever the model it is given
    assert torch.equal(tiny.logits(q.convert(original), eval_batch), post)

    # QAT trained a copy: the caller's model keeps its weights
    assert all(torch.equal(p, o) for p, o in zip(model.parameters(), original.parameters()))
    # the state holds the trained weights too (weights.safetensors): loading onto the original model reproduces QAT
    q.save(tmp_path / "state")
    assert (tmp_path / "state" / "weights.safetensors").is_file()
    q2 = Quantizer.load(tmp_path / "state", original)
    assert torch.equal(tiny.logits(q2.graph, eval_batch), post)
    assert torch.equal(tiny.logits(q2.convert(original), eval_batch), post)


def test_runtime_smoothed_state_round_trips_through_qat_save_and_load(tiny, calib_batches, eval_batch, tmp_path):
    """channel_mul travels through LSQ, end_qat, the saved state and convert; the graph's scaled weights too."""
    from ptqkit.smoothquant import collect_input_absmax, smooth_runtime

    model = tiny.bert(seed=1)
    q = Quantizer(config=QuantConfig.for_device("x86"))
    graph = q.calib(model)
    assert smooth_runtime(q, collect_input_absmax(model, calib_batches), q.config.smooth_alpha)
    run_calibration(graph, calib_batches)
    graph = q.qat()
    lsq = [o for o in q.observers().values() if isinstance(o, LSQQuantizer) and o.channel_mul.numel()]
    assert len(lsq) == len(q.points)  # every activation quantizer multiplies first
    out = graph(**calib_batches[0]).logits
    torch.nn.functional.cross_entropy(out, torch.arange(out.shape[0]) % 2).backward()
    assert all(o.scale.grad is not None and torch.isfinite(o.scale.grad).all() for o in lsq)  # affine grid, learned step
    q.end_qat()
    ref = tiny.logits(q.graph, eval_batch)
    assert torch.allclose(tiny.logits(q.convert(model), eval_batch), ref, atol=1e-5)
    q.save(tmp_path / "state")
    q2 = Quantizer.load(tmp_path / "state", copy.deepcopy(model))
    assert torch.equal(tiny.logits(q2.graph, eval_batch), ref)
    key = observer_key(q.points[0].name, "input")
    assert torch.equal(q2.observers()[key].channel_mul, q.observers()[key].channel_mul)
