"""Adaptive rounding of the int8 weights (GPTQ-style), an opt-in recipe step: `--weight-rounding gptq` (issue #29).

Why: rounding each weight to its nearest grid point minimises the weight's own error, not the layer's output error.
Inputs are correlated, so the error one rounding makes in the output can be partly cancelled by nudging the weights
of the other input channels. GPTQ rounds a layer's input columns one at a time and spreads each column's rounding
error over the columns not yet rounded, weighted by the inverse of H = X^T X, the second moments of the layer's input
on the calibration batches (Frantar et al., 2022; the Cholesky form with a damped H).

What stays fixed: the weight qparams (per-channel scale and grid, calibrated before this step) and the activation
qparams. X is the input the int8 GEMM multiplies: smoothed at runtime and fake-quantized, on real tokens only
(padding masked out). The adapted weights lie exactly on the weight grid, so re-quantizing them gives the chosen
integers back: the fake-quant graph, the exported ONNX and every engine compute with the same int8 weights
(tests/test_rounding.py). One pass over the calibration batches collects every H at once (inputs of the
round-to-nearest model), then each layer is rounded on its own.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

from .passes import linear_weight, observer_key
from .quantizer import QUANTIZED, Quantizer

DAMP = 0.01  # added to H's diagonal, as a share of its mean: keeps the inverse stable for nearly dependent inputs
BLOCK = 128  # columns rounded per block before the error is spread to the rest at once (same result, fewer ops)


@torch.no_grad()
def input_second_moments(q: Quantizer, batches: Iterable[dict]) -> dict[str, Tensor]:
    """X^T X (float64) of every quantized linear's input as its GEMM sees it, summed over the batches' real tokens."""
    obs = q.observers()
    moments: dict[str, Tensor] = {}
    real_tokens: list[Tensor | None] = [None]  # the current batch's attention mask, flattened

    def hook(name: str):
        def add(module, args, out: Tensor) -> None:
            x = out.reshape(-1, out.shape[-1])
            mask = real_tokens[0]
            if mask is not None and mask.numel() == x.shape[0]:
                x = x[mask]
            xtx = (x.T @ x).double()
            moments[name] = moments[name] + xtx if name in moments else xtx
        return add

    hooks = [obs[observer_key(p.name, "input")].register_forward_hook(hook(p.name))
             for p in q.quantized_points() if p.kind == "linear"]
    try:
        for batch in batches:
            mask = batch.get("attention_mask")
            real_tokens[0] = mask.reshape(-1).bool() if mask is not None else None
            q.graph(**batch)
    finally:
        for h in hooks:
            h.remove()
    return moments


def gptq_round(w: Tensor, h: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """W (out x in) rounded column by column onto its grid (per-row or one scale), each column's error spread over
    the later columns through the upper Cholesky factor of H^-1. Returns grid values (scale x integer), float32."""
    w = w.detach().double().clone()
    h = h.double().clone()
    n = w.shape[1]
    dead = torch.diagonal(h) == 0  # inputs never seen non-zero: rounded to nearest, their error spread nowhere
    h[dead, dead] = 1.0
    h += DAMP * torch.diagonal(h).mean() * torch.eye(n, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    s = scale.double().reshape(-1).expand(w.shape[0])
    zp = zero_point.double().reshape(-1).expand(w.shape[0])
    ints = torch.empty_like(w)
    for b0 in range(0, n, BLOCK):
        b1 = min(b0 + BLOCK, n)
        block, errors = w[:, b0:b1].clone(), torch.empty(w.shape[0], b1 - b0, dtype=w.dtype)
        for j in range(b1 - b0):
            col = block[:, j]
            k = (torch.round(col / s) + zp).clamp_(qmin, qmax) - zp
            ints[:, b0 + j] = k
            errors[:, j] = (col - k * s) / u[b0 + j, b0 + j]
            block[:, j:] -= errors[:, j : j + 1] * u[b0 + j, b0 + j : b1]
        w[:, b1:] -= errors @ u[b0:b1, b1:]
    return (ints * s[:, None]).float()


@torch.no_grad()
def round_weights(q: Quantizer, batches: Iterable[dict]) -> int:
    """Replace the weight of every quantized linear in the quantizer's graph by its GPTQ rounding (weight qparams
    unchanged; the saved state then carries the weights). Returns how many weights were rounded."""
    if q.state != QUANTIZED:
        raise RuntimeError("round_weights needs frozen qparams: call Quantizer.quantize() first")
    moments = input_second_moments(q, batches)
    obs = q.observers()
    done = 0
    for p in q.quantized_points():
        if p.kind != "linear" or p.name not in moments:
            continue
        o = obs[observer_key(p.name, "weight")]
        weight = linear_weight(q.graph, p)
        weight.copy_(gptq_round(weight, moments[p.name], o.scale, o.zero_point, o.spec.qmin, o.spec.qmax))
        done += 1
    q.carries_weights = True
    return done
