"""SmoothQuant folding: exact on the float model, flattens the smoothed linears' inputs, skips what is not exact."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ptqkit.smoothquant import (S_MAX, S_MIN, _fold, collect_input_absmax, smooth, smoothing_pairs,
                                smoothing_scale)

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, attn_implementation="eager")
OUTLIER = 7  # the channel made an outlier
OUT_DENSE = [f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)]


def _batches(n: int = 3, seq: int = 12, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 100, (4, seq), generator=g)
        mask = torch.ones_like(ids)
        mask[0, seq // 2:] = 0  # one padded row, as real batches have
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _logits(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).logits for b in batches])


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-4) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def _ratio(absmax: torch.Tensor) -> float:
    return float(absmax.max() / absmax.median())


def _with_v_outlier(model: nn.Module, prefix: str, value: str) -> nn.Module:
    """Blow up one V output channel (weight row and bias) so the output projection's input has an outlier."""
    with torch.no_grad():
        for layer in dict(model.named_modules())[prefix]:
            v = dict(layer.named_modules())[value]
            v.weight[OUTLIER] *= 50
            v.bias[OUTLIER] = 50 * (v.bias[OUTLIER] + 0.1)
    return model


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(**TINY)).eval()
    with torch.no_grad():  # a LayerNorm outlier channel, the kind SmoothQuant targets (fed to Q/K/V)
        model.bert.embeddings.LayerNorm.weight[OUTLIER] *= 50
    return _with_v_outlier(model, "bert.encoder.layer", "attention.self.value")


def test_bert_smooth_keeps_logits_and_flattens_attention_output_inputs(bert: nn.Module) -> None:
    batches = _batches()
    model = copy.deepcopy(bert)
    before = collect_input_absmax(model, batches)
    ref = _logits(model, batches)

    names = smooth(model, before, alpha=0.5)

    assert names == OUT_DENSE  # post-LN BERT: only V -> attention output projection is exact
    assert _close(_logits(model, batches), ref)
    after = collect_input_absmax(model, batches)
    for n in OUT_DENSE:
        assert _ratio(after[n]) < _ratio(before[n]) / 3, n
    # Q/K/V, the FFN linears and the head were not touched
    for n, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and n not in names and not n.endswith("attention.self.value"):
            assert torch.equal(mod.weight, dict(bert.named_modules())[n].weight), n


def test_collect_input_absmax_covers_every_linear_and_restores_mode(bert: nn.Module) -> None:
    model = copy.deepcopy(bert).train()
    stats = collect_input_absmax(model, _batches(n=1))
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(stats) == set(linears)
    assert all(stats[n].shape == (m.in_features,) and stats[n].dtype == torch.float32 for n, m in linears.items())
    assert model.training
    assert not any(m._forward_pre_hooks for m in linears.values())
    q = "bert.encoder.layer.0.attention.self.query"
    assert int(stats[q].argmax()) == OUTLIER  # the injected LayerNorm outlier reaches Q/K/V


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_alpha_moves_the_range_where_the_formula_says(bert: nn.Module, alpha: float) -> None:
    """alpha=1: activations flattened to 1; alpha=0: weight columns flattened to 1; alpha=0.5: the two balanced."""
    batches = _batches()
    model = copy.deepcopy(bert)
    smooth(model, collect_input_absmax(model, batches), alpha)
    after = collect_input_absmax(model, batches)
    for n in OUT_DENSE:
        act = after[n]
        w = dict(model.named_modules())[n].weight.abs().amax(0)
        if alpha == 1.0:
            torch.testing.assert_close(act, torch.ones_like(act), rtol=1e-4, atol=0)
        elif alpha == 0.0:
            torch.testing.assert_close(w, torch.ones_like(w), rtol=1e-5, atol=0)
        else:
            torch.testing.assert_close(act, w, rtol=1e-4, atol=0)


def test_smoothing_scale_formula_and_guards() -> None:
    act = torch.tensor([4.0, 1.0, 0.0, 1e12, 1.0])
    w1 = torch.tensor([[1.0, -0.25, 1.0, 1.0, 0.0]])
    w2 = torch.tensor([[-0.5, 1.0, 1.0, 1e-12, 0.0]])
    s = smoothing_scale(act, [w1, w2], alpha=0.5)
    assert s[0] == pytest.approx(2.0)  # sqrt(4) / sqrt(max(1, 0.5))
    assert s[1] == pytest.approx(1.0)  # column max over both weights: max(0.25, 1.0)
    assert s[2] == 1.0  # never active: left alone
    assert s[3] == S_MAX  # clamped
    assert s[4] == 1.0  # all-zero weight column: left alone
    assert float(smoothing_scale(torch.tensor([1e-12]), [torch.tensor([[1e12]])], 0.5)) == pytest.approx(S_MIN)
    with pytest.raises(ValueError):
        smooth(nn.Linear(2, 2), {}, alpha=1.5)


def test_missing_or_mismatched_statistics_are_skipped(bert: nn.Module) -> None:
    model = copy.deepcopy(bert)
    stats = collect_input_absmax(model, _batches(n=1))
    del stats[OUT_DENSE[0]]
    stats[OUT_DENSE[1]] = stats[OUT_DENSE[1]][:5]
    assert smooth(model, stats, 0.5) == []
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bert.state_dict().values()))


def test_models_without_matching_blocks_are_left_alone() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    stats = collect_input_absmax(model, [])
    assert smoothing_pairs(model) == [] and smooth(model, stats, 0.5) == []


def test_post_ln_layernorm_folds_would_change_the_model(bert: nn.Module) -> None:
    """Why BERT's LayerNorm -> Q/K/V and LayerNorm -> FFN folds are skipped: the LayerNorm output is also the
    residual into the next LayerNorm, so dividing it per channel changes the logits."""
    batches = _batches()
    stats = collect_input_absmax(bert, batches)
    ref = _logits(bert, batches)
    for ln, consumers in (("bert.embeddings.LayerNorm", ["query", "key", "value"]),
                          ("bert.encoder.layer.0.attention.output.LayerNorm", ["intermediate"])):
        model = copy.deepcopy(bert)
        mods = dict(model.named_modules())
        names = [f"bert.encoder.layer.0.attention.self.{c}" if c != "intermediate"
                 else "bert.encoder.layer.0.intermediate.dense" for c in consumers]
        s = smoothing_scale(stats[names[0]], [mods[n].weight for n in names], 0.5)
        _fold(mods[ln], [mods[n] for n in names], s)
        assert not _close(_logits(model, batches), ref, rel=1e-2), ln


def test_distilbert_attention_output_smoothed_outputs_unchanged() -> None:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                              max_position_embeddings=64, attn_implementation="eager")
    model = _with_v_outlier(DistilBertForSequenceClassification(config).eval(), "distilbert.transformer.layer",
                            "attention.v_lin")
    batches = _batches()
    ref = _logits(model, batches)
    before = collect_input_absmax(model, batches)
    names = smooth(model, before, 0.8)
    assert names == [f"distilbert.transformer.layer.{i}.attention.out_lin" for i in range(2)]
    assert _close(_logits(model, batches), ref)
    after = collect_input_absmax(model, batches)
    assert all(_ratio(after[n]) < _ratio(before[n]) for n in names)


def test_pre_ln_encoder_folds_layernorms_into_qkv_and_ffn() -> None:
    """RoBERTa-PreLayerNorm: the LayerNorm output feeds only Q/K/V (and only the FFN input), so those fold too."""
    from transformers import RobertaPreLayerNormConfig, RobertaPreLayerNormForSequenceClassification

    torch.manual_seed(0)
    model = RobertaPreLayerNormForSequenceClassification(RobertaPreLayerNormConfig(**TINY)).eval()
    with torch.no_grad():
        for layer in model.roberta_prelayernorm.encoder.layer:
            layer.attention.LayerNorm.weight[OUTLIER] *= 50
            layer.intermediate.LayerNorm.weight[OUTLIER] *= 50
    batches = _batches()
    ref = _logits(model, batches)
    before = collect_input_absmax(model, batches)
    names = smooth(model, before, 0.5)

    p = "roberta_prelayernorm.encoder.layer.{}."
    expected = [p.format(i) + r for i in range(2) for r in ("attention.self.query", "attention.self.key",
                                                             "attention.self.value", "intermediate.dense",
                                                             "attention.output.dense")]
    assert names == expected
    assert _close(_logits(model, batches), ref)
    after = collect_input_absmax(model, batches)
    for n in names:
        if not n.endswith("output.dense"):
            assert _ratio(after[n]) < _ratio(before[n]) / 3, n


# --- runtime smoothing (every linear input, a multiply in front of the activation quantizer) ------------------
def _runtime_smoothed(model: nn.Module, batches: list[dict], alpha: float | None):
    from ptqkit.config import QuantConfig
    from ptqkit.quantizer import Quantizer, run_calibration
    from ptqkit.smoothquant import smooth_runtime

    q = Quantizer(config=QuantConfig.for_device("x86", isa="avx512_vnni", smooth_alpha=alpha))
    graph = q.calib(model, ("input_ids", "attention_mask"))
    names = smooth_runtime(q, collect_input_absmax(model, batches), alpha) if alpha is not None else []
    run_calibration(graph, batches)
    q.quantize()
    return q, names


def test_runtime_smoothing_keeps_the_function_and_shares_one_scale_per_input(bert: nn.Module) -> None:
    from ptqkit.passes import observer_key

    batches = _batches()
    q, names = _runtime_smoothed(bert, batches, 0.8)
    assert len(names) == 14  # every linear: 2 layers x 6, pooler, classifier
    obs = q.observers()
    for o in obs.values():
        o.fake_quant = False
    assert _close(_logits(q.graph, batches), _logits(bert, batches))  # x / s against W * s: the same function
    for layer in range(2):  # Q, K and V read one tensor: one multiplier for the three
        muls = [obs[observer_key(f"bert.encoder.layer.{layer}.attention.self.{m}", "input")].channel_mul
                for m in ("query", "key", "value")]
        assert muls[0].shape == (32,) and torch.equal(muls[0], muls[1]) and torch.equal(muls[0], muls[2])
    assert all(o.channel_mul.numel() == 0 for k, o in obs.items() if k.endswith("__weight"))


def test_runtime_smoothing_shrinks_the_error_of_outlier_inputs(bert: nn.Module) -> None:
    """The embeddings LayerNorm outlier (x50) feeds layer 0's Q/K/V: flattened, their input error drops."""
    from ptqkit.layer_error import layer_errors

    batches = _batches()
    plain = {e.name: e for e in layer_errors(bert, _runtime_smoothed(bert, batches, None)[0], batches)}
    smoothed = {e.name: e for e in layer_errors(bert, _runtime_smoothed(bert, batches, 0.8)[0], batches)}
    for m in ("query", "key", "value"):
        n = f"bert.encoder.layer.0.attention.self.{m}"
        assert smoothed[n].act_sqnr > plain[n].act_sqnr + 6, n  # at least 4x less activation error
        assert smoothed[n].local_sqnr > plain[n].local_sqnr, n


def test_runtime_smoothing_runs_before_calibration_only(bert: nn.Module) -> None:
    from ptqkit.smoothquant import smooth_runtime

    q, _ = _runtime_smoothed(bert, _batches(), None)
    with pytest.raises(RuntimeError, match="before calibration"):
        smooth_runtime(q, collect_input_absmax(bert, _batches()), 0.8)


def test_one_pass_calibration_gives_the_two_pass_ranges(bert: nn.Module) -> None:
    """Smoothing statistics tracked in the calibration pass give the ranges a second pass would have observed:
    bit for bit where nothing smoothed runs upstream (layer 0's Q/K/V input), to fp32 rounding elsewhere."""
    from ptqkit.config import QuantConfig
    from ptqkit.passes import observer_key
    from ptqkit.quantizer import Quantizer, run_calibration
    from ptqkit.smoothquant import linear_input_absmax, smooth_runtime, track_linear_inputs

    batches = _batches()
    two_pass, names = _runtime_smoothed(bert, batches, 0.8)
    q = Quantizer(config=QuantConfig.for_device("x86", isa="avx512_vnni", smooth_alpha=0.8))
    graph = q.calib(bert, ("input_ids", "attention_mask"))
    track_linear_inputs(q, bert)
    run_calibration(graph, batches)
    assert smooth_runtime(q, linear_input_absmax(q), 0.8) == names
    q.quantize()
    expected, got = two_pass.observers(), q.observers()
    assert expected.keys() == got.keys()
    for key, o in expected.items():
        assert torch.equal(got[key].channel_mul, o.channel_mul), key
        torch.testing.assert_close(got[key].scale, o.scale, rtol=1e-5, atol=0)
        assert (got[key].zero_point - o.zero_point).abs().max() <= 1, key
    first = observer_key("bert.encoder.layer.0.attention.self.query", "input")
    assert torch.equal(got[first].min_val, expected[first].min_val)
    assert torch.equal(got[first].max_val, expected[first].max_val)
    assert all(o.channel_range is None for o in got.values())  # tracking ends with the smoothing
