"""Per-layer output error of the int8 model against fp32 on calibration data: where fidelity is lost.
(Linears only: quantized attention matmuls, when on, show in the cumulative error of the layers after them.)

For every quantized linear y = x W^T + b the report compares, on the real (non-padding) tokens of the calibration
batches, the fp32 output with:
  weight     only W fake-quantized, fp32 input x                 (the weight side of this layer alone)
  act        only x fake-quantized                               (the activation side of this layer alone)
  both       x and W fake-quantized, fp32 input                  (this layer alone: the local error)
  cumulative the output inside the whole fake-quant model, whose input already carries upstream error
each as SQNR in dB, 10 log10(sum y^2 / sum (y - y_q)^2) (higher is better; int8 of a well-behaved tensor gives
~35-40 dB), and the `bias` part of the local error: how much of its mean squared error is a per-channel mean
shift (what bias correction removes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from .qmodel import QuantLinear
from .quantizer import Quantizer


@dataclass
class LayerError:
    name: str
    weight_sqnr: float
    act_sqnr: float
    local_sqnr: float
    cumulative_sqnr: float
    bias_share: float  # fraction of the local squared error that is a per-output-channel mean shift

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in self.__dict__.items()}


class _Sums:
    """Running sums over tokens for one layer: signal power, error power per mode, per-channel error sums."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.err = {"weight": 0.0, "act": 0.0, "local": 0.0, "cumulative": 0.0}
        self.local_sum: torch.Tensor | None = None
        self.tokens = 0

    def sqnr(self, mode: str) -> float:
        e = self.err[mode]
        return math.inf if e == 0 else 10 * math.log10(self.signal / e)


def token_mask(batch: dict, out: torch.Tensor) -> torch.Tensor:
    """Rows of `out` flattened to [tokens, C] that belong to real tokens (padding positions never reach the
    logits: attention masks them as keys); 2-D outputs (pooler, classifier) keep every row."""
    if out.dim() == 3 and "attention_mask" in batch:
        return out[batch["attention_mask"].bool()]
    return out.reshape(-1, out.shape[-1])


def linear_modules(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Module]:
    return {n: model.get_submodule(n) for n in names}


@torch.no_grad()
def layer_errors(model: nn.Module, q: Quantizer, batches: list[dict]) -> list[LayerError]:
    """Errors of every quantized linear (see the module doc), worst local SQNR first."""
    fq = q.convert(model)
    names = [p.name for p in q.quantized_points() if p.kind == "linear"]
    fp_mods, fq_mods = linear_modules(model, names), linear_modules(fq, names)
    # the float weights the quantizer holds (runtime smoothing's column scaling and QAT included): a QuantLinear's
    # own weight is already snapped onto a grid narrower than its storage (7-bit weights), so the activation side
    # alone must not read it
    float_weights = dict(q.graph.named_parameters())
    sums = {n: _Sums() for n in names}
    for batch in batches:
        seen_fp: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        seen_fq: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda m, a, o, n=n: seen_fp.__setitem__(n, (a[0], o))) for n, m in fp_mods.items()]
        hooks += [m.register_forward_hook(lambda m, a, o, n=n: seen_fq.__setitem__(n, o)) for n, m in fq_mods.items()]
        try:
            model(**batch)
            fq(**batch)
        finally:
            for h in hooks:
                h.remove()
        for n in names:
            x, y = seen_fp[n]
            m: QuantLinear = fq_mods[n]
            wq = m.quantized_weight()
            xq = m.quantized_input(x)
            xs = m.smoothed_input(x)  # runtime SmoothQuant's multiply: the weight columns carry its inverse
            outs = {"weight": xs @ wq, "act": xq @ float_weights[f"{n}.weight"].t(), "local": xq @ wq,
                    "cumulative": seen_fq[n]}
            bias = m.bias if m.bias is not None else 0.0
            ref = token_mask(batch, y)
            s = sums[n]
            s.signal += float(ref.double().pow(2).sum())
            for mode, out in outs.items():
                out = out if mode == "cumulative" else out + bias
                diff = (ref - token_mask(batch, out)).double()
                s.err[mode] += float(diff.pow(2).sum())
                if mode == "local":
                    s.local_sum = diff.sum(0) if s.local_sum is None else s.local_sum + diff.sum(0)
            s.tokens += ref.shape[0]
    result = []
    for n in names:
        s = sums[n]
        shift = float(s.local_sum.pow(2).sum()) / s.tokens if s.tokens else 0.0  # tokens * mean^2 summed over channels
        share = shift / s.err["local"] if s.err["local"] else 0.0
        result.append(LayerError(n, s.sqnr("weight"), s.sqnr("act"), s.sqnr("local"), s.sqnr("cumulative"), share))
    return sorted(result, key=lambda e: e.local_sqnr)


def format_table(errors: list[LayerError], top: int | None = None) -> str:
    rows = errors[:top] if top else errors
    lines = [f"{'layer':52s} {'weight':>7s} {'act':>7s} {'local':>7s} {'cumul.':>7s} {'bias%':>6s}  (SQNR dB; bias% = mean-shift share of local error)"]
    for e in rows:
        lines.append(f"{e.name:52s} {e.weight_sqnr:7.2f} {e.act_sqnr:7.2f} {e.local_sqnr:7.2f} {e.cumulative_sqnr:7.2f} {100 * e.bias_share:6.1f}")
    return "\n".join(lines)

