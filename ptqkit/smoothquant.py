"""SmoothQuant-style smoothing (Xiao et al., 2023), folded into the float weights: nothing extra runs at inference.

A linear `y = x W^T` is unchanged when its input channel j is divided by s_j and weight column j is multiplied by
s_j. When the division can be done by the op that *produces* x (a LayerNorm's affine, or another linear's output
rows) and nothing else reads x, the rescale is free. With

    s_j = max|x_j|^alpha / max|W[:, j]|^(1 - alpha)     (clamped to [1e-5, 1e5])

a channel with outlier activations hands part of its range to the weights, which are quantized per output row and
absorb it more cheaply. alpha=1 flattens the activations completely, alpha=0 flattens the weight columns.

Which folds are exact (the float model's outputs only change by fp32 rounding) is decided by the block structure,
found from module names (`model.named_modules()`, shapes checked; blocks that do not match are skipped silently):

* V -> attention output projection, in every family below. The attention context is softmax(Q K^T) V, linear in V
  per channel (heads only regroup channels), so V's weight rows and bias are divided by s and the output
  projection's columns multiplied by s.
* LayerNorm -> {Q, K, V} and LayerNorm -> FFN input, *only in pre-LN encoders* (RoBERTa-PreLayerNorm:
  `attention.LayerNorm`, `intermediate.LayerNorm`; Megatron-BERT: `attention.ln`, `ln`), where the LayerNorm output
  feeds those linears and nothing else.
* Not in post-LN encoders (BERT, RoBERTa, ELECTRA, MiniLM, DistilBERT...): there the LayerNorm output is also the
  residual of the next sub-block (`LayerNorm(dense(ctx) + h)`), and a per-channel 1/s on that residual changes what
  the next LayerNorm normalizes (its mean and variance run over channels), so the model's outputs change. Those
  LayerNorms (embeddings, `attention.output.LayerNorm`, `output.LayerNorm`, `sa_layer_norm`,
  `output_layer_norm`) are left alone; the test suite checks that folding them would indeed change the logits.
* FFN input -> FFN output (`intermediate.dense` -> `output.dense`, `ffn.lin1` -> `ffn.lin2`) is never folded: a GELU
  sits between them, and GELU(x / s) != GELU(x) / s.

Use: `stats = collect_input_absmax(model, calibration_batches)`, then `smooth(model, stats, alpha)` once, before the
quantizer captures the model. The statistics must come from the model as it is when `smooth` runs (collect again
before smoothing a second time).

Runtime smoothing (`smooth_runtime`, NNCF's approach for transformers; the x86 contract, QuantConfig.smooth_alpha)
covers every linear input instead, the post-LN LayerNorm and GELU outputs included: the 1/s is not folded but
applied by the activation observer as a per-channel multiply in front of the quantizer (Observer.channel_mul,
carried into qmodel.QuantLinear by Quantizer.convert, an ONNX `Mul` in fp32, whose cost per engine
docs/fidelity.md reports), and the weights' columns take the s. Linears
reading the same tensor (Q, K, V) share one s. It preserves the float function (up to fp32 rounding) whatever
the block structure.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import fx, nn

from .passes import linear_weight, observer_key
from .quantizer import OBSERVING, Quantizer

S_MIN, S_MAX = 1e-5, 1e5
# Runtime smoothing bounds each s to [its group's RUNTIME_S_QUANTILE quantile, RUNTIME_S_MAX]: quiet channels are
# not blown up by a tiny s and no weight column grows past 100x (the bounds NNCF uses; docs/fidelity.md has
# bounded vs unbounded on the default model).
RUNTIME_S_QUANTILE, RUNTIME_S_MAX = 0.1, 100.0

# Attention blocks, (query, key, value, output projection) relative to a layer prefix ("...layer.3.").
_ATTENTION = (
    ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"),  # BERT family
    ("attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin"),  # DistilBERT
)
# Pre-LN sites, (LayerNorm, consumer linears) relative to a layer prefix: the LayerNorm output feeds only these.
_PRE_LN = (
    ("attention.LayerNorm", ("attention.self.query", "attention.self.key", "attention.self.value")),  # RoBERTa-PreLN
    ("intermediate.LayerNorm", ("intermediate.dense",)),
    ("attention.ln", ("attention.self.query", "attention.self.key", "attention.self.value")),  # Megatron-BERT
    ("ln", ("intermediate.dense",)),
)


@dataclass(frozen=True)
class SmoothPair:
    """One exact fold: `producer`'s output channels are divided by s, each consumer's input columns multiplied."""

    producer: str  # an nn.LayerNorm or an nn.Linear
    consumers: tuple[str, ...]  # nn.Linear modules reading only the producer's output


def collect_input_absmax(model: nn.Module, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| (float32, CPU) of every nn.Linear, keyed by module name, over `batches`.

    Runs `model(**batch)` in eval mode under no_grad; the model's training flag is restored afterwards.
    Every position counts, padding included, as the quantizer's observers see it.
    """
    stats: dict[str, torch.Tensor] = {}

    def hook_for(name: str):
        def hook(module: nn.Linear, args: tuple) -> None:
            x = args[0].detach()
            m = x.reshape(-1, x.shape[-1]).abs().amax(0).float().cpu()
            prev = stats.get(name)
            stats[name] = m if prev is None else torch.maximum(prev, m)
        return hook

    handles = [mod.register_forward_pre_hook(hook_for(name))
               for name, mod in model.named_modules() if isinstance(mod, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return stats


def smoothing_pairs(model: nn.Module) -> list[SmoothPair]:
    """The exact folds this model's structure allows, in module order (see the module docstring)."""
    modules = dict(model.named_modules())

    def linear(name: str) -> nn.Linear | None:
        m = modules.get(name)
        return m if isinstance(m, nn.Linear) else None

    pairs: list[SmoothPair] = []
    seen: set[str] = set()
    for name, mod in modules.items():
        if not isinstance(mod, nn.Linear):
            continue
        for q_rel, k_rel, v_rel, o_rel in _ATTENTION:
            if not (name == v_rel or name.endswith("." + v_rel)):
                continue
            prefix = name[: len(name) - len(v_rel)]
            q, k, v, o = (linear(prefix + r) for r in (q_rel, k_rel, v_rel, o_rel))
            if q is None or k is None or o is None:
                continue
            if not (q.in_features == k.in_features == v.in_features and v.out_features == o.in_features):
                continue
            for ln_rel, cons_rel in _PRE_LN:
                pair = _pre_ln_pair(modules, prefix + ln_rel, tuple(prefix + c for c in cons_rel))
                if pair is not None and pair.producer not in seen:
                    pairs.append(pair)
                    seen.add(pair.producer)
            if name not in seen:
                pairs.append(SmoothPair(name, (prefix + o_rel,)))
                seen.add(name)
    return pairs


def _pre_ln_pair(modules: dict[str, nn.Module], ln_name: str, consumers: tuple[str, ...]) -> SmoothPair | None:
    ln = modules.get(ln_name)
    if not isinstance(ln, nn.LayerNorm) or ln.weight is None or len(ln.normalized_shape) != 1:
        return None
    width = ln.normalized_shape[0]
    if not all(isinstance(modules.get(c), nn.Linear) and modules[c].in_features == width for c in consumers):
        return None
    return SmoothPair(ln_name, consumers)


def smoothing_scale(act_absmax: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max_over_weights(max_i |W[i, j]|)^(1 - alpha), clamped to [S_MIN, S_MAX].

    Channels that are never active, or whose weight columns are all zero, get s_j = 1: there is nothing to balance.
    """
    w = torch.stack([W.detach().abs().amax(0).float().cpu() for W in weights]).amax(0)
    a = act_absmax.detach().float().cpu()
    s = a.pow(alpha) / w.pow(1.0 - alpha)
    ok = (a > 0) & (w > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp(S_MIN, S_MAX)


@torch.no_grad()
def _fold(producer: nn.Module, consumers: list[nn.Linear], s: torch.Tensor) -> None:
    """Divide the producer's output channels by s, multiply the consumers' input columns by s."""
    if isinstance(producer, nn.LayerNorm):
        producer.weight.div_(s.to(producer.weight))
        if producer.bias is not None:
            producer.bias.div_(s.to(producer.bias))
    else:  # nn.Linear: output channel j is weight row j
        producer.weight.div_(s.to(producer.weight).unsqueeze(1))
        if producer.bias is not None:
            producer.bias.div_(s.to(producer.bias))
    for c in consumers:
        c.weight.mul_(s.to(c.weight).unsqueeze(0))


def smooth(model: nn.Module, act_absmax: dict[str, torch.Tensor], alpha: float) -> list[str]:
    """Smooth every exactly-foldable linear input in place; returns the names of the smoothed (consumer) linears.

    `act_absmax` comes from `collect_input_absmax` on this model before any smoothing. Pairs whose statistics are
    missing or have the wrong width are skipped. For post-LN encoders such as BERT and DistilBERT only the attention
    output projections qualify (V -> output projection); see the module docstring for why the LayerNorm -> Q/K/V,
    LayerNorm -> FFN and FFN -> FFN (GELU) folds are not done there.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    modules = dict(model.named_modules())
    smoothed: list[str] = []
    for pair in smoothing_pairs(model):
        producer = modules[pair.producer]
        consumers = [modules[c] for c in pair.consumers]
        width = consumers[0].in_features
        stats = [act_absmax.get(c) for c in pair.consumers]
        if any(a is None or a.numel() != width for a in stats):
            continue
        act = torch.stack([a.float().cpu() for a in stats]).amax(0)  # consumers share one input
        s = smoothing_scale(act, [c.weight for c in consumers], alpha)
        _fold(producer, consumers, s)
        smoothed.extend(pair.consumers)
    return smoothed


def track_linear_inputs(q: Quantizer, model: nn.Module) -> None:
    """Gather runtime smoothing's statistics in the calibration pass itself: the input observer of every nn.Linear
    of `model` also keeps per-channel min/max (Observer.track_channels). After the pass, `smooth_runtime(q,
    linear_input_absmax(q), alpha)` sets the ranges the smoothed inputs would have had: one pass over the
    calibration data instead of two (per-tensor minmax activation specs only; histograms need the second pass)."""
    linears = {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    obs = q.observers()
    for p in q.points:
        if p.kind == "linear" and p.name in linears:
            obs[observer_key(p.name, "input")].track_channels()


def linear_input_absmax(q: Quantizer) -> dict[str, torch.Tensor]:
    """Per-channel max |x| of each tracked linear input (track_linear_inputs), keyed by point name."""
    obs = q.observers()
    out = {}
    for p in q.points:
        tracked = obs[observer_key(p.name, "input")].channel_range if p.kind == "linear" else None
        if tracked is not None and tracked[0].numel():
            out[p.name] = torch.maximum(tracked[0].abs(), tracked[1].abs())
    return out


@torch.no_grad()
def smooth_runtime(q: Quantizer, act_absmax: dict[str, torch.Tensor], alpha: float) -> list[str]:
    """Runtime SmoothQuant on the quantizer's observing graph, before any calibration batch or right after one
    that tracked the linear inputs per channel (track_linear_inputs); returns the smoothed linears.

    For each group of linears reading the same tensor (one per call where a module is shared across depth): s from
    `smoothing_scale` (their weights, their inputs' max |x| over every call from `collect_input_absmax` on the
    float model), bounded as the constants above say; the weight columns are multiplied by s in the graph, once
    per parameter (so the saved state carries the weights), each activation observer multiplies its input by
    1/s, and the weight observers re-observe the scaled weights.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    obs = q.observers()
    nodes = {n.name: n for n in q.graph.graph.nodes}
    groups: dict[tuple[fx.Node, ...], list] = {}  # the inputs of every call -> the linears reading them
    for p in q.points:
        if p.kind == "linear" and p.name in act_absmax:
            sources = tuple(nodes[n].args[0].args[0] for n in p.nodes)  # linear <- input observer <- source
            groups.setdefault(sources, []).append(p)
    inputs = [obs[observer_key(p.name, "input")] for points in groups.values() for p in points]
    if q.state != OBSERVING or any(bool(o.has_stats) and o.channel_range is None for o in inputs):
        raise RuntimeError("smooth_runtime must run after Quantizer.calib and before calibration, or after a "
                           "calibration that tracked the linear inputs (the activation ranges would be stale)")
    smoothed: list[str] = []
    for points in groups.values():
        weights = [linear_weight(q.graph, p) for p in points]
        act = torch.stack([act_absmax[p.name].float().cpu() for p in points]).amax(0)
        if act.numel() != weights[0].shape[1]:
            continue
        s = smoothing_scale(act, weights, alpha)
        s = s.clamp(min=float(torch.quantile(s, RUNTIME_S_QUANTILE)), max=RUNTIME_S_MAX)
        for p, w in zip(points, weights):
            w.mul_(s.to(w).unsqueeze(0))
            obs[observer_key(p.name, "input")].set_channel_mul((1.0 / s).float())
            w_obs = obs[observer_key(p.name, "weight")]
            w_obs.has_stats.fill_(False)
            w_obs.observe(w)
            smoothed.append(p.name)
    for o in obs.values():
        o.channel_range = None  # the tracked statistics served this smoothing only
    q.carries_weights = q.carries_weights or bool(smoothed)
    return smoothed
