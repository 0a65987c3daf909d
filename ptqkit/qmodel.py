"""The converted quantized model: the one form the quantizer produces (Quantizer.convert) and everything after
reads. export.py writes it as TorchScript and QDQ ONNX; the Inductor engine compiles it (its q/dq rewrite starts
from these modules); layer_error.py compares it with the float model.

`fake_quantize` is the only place where values are rounded and clamped onto an integer grid: observers
(calibration, fallback scoring), LSQ scales (QAT) and QuantLinear all call it. It uses torch's fake-quant ops,
which the TorchScript ONNX exporter emits as QuantizeLinear/DequantizeLinear; in plain eager inference (no grad,
no tracing) it computes the same values with four in-place tensor ops instead, because torch's fake-quant kernel
also writes a gradient mask and cost as much as the GEMM it feeds (the fake-quant reference of the auto check and
evaluation, issue #31). `channel_multiply` is runtime
SmoothQuant's per-channel multiply in front of an activation quantizer (smoothquant.smooth_runtime), applied by
the same three and exported as one ONNX Mul. `QuantAttention` holds the qparams of the attention matmul operands
(QuantConfig.attention_matmuls); `int8_attention`, registered with transformers as the attention function
ATTENTION_IMPL, applies them, so the converted model needs no copy of any model's attention code.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None, qmin: int, qmax: int,
                  grad_factor: float | None = None) -> Tensor:
    """(clamp(round(x / scale) + zero_point, qmin, qmax) - zero_point) * scale, per tensor (axis None) or per
    channel along `axis`.

    grad_factor (QAT): `scale` is learned with the LSQ gradient scaled by this factor; the forward value is the
    same. Without it gradients pass straight through to x inside the grid (and scale gets none).
    """
    if grad_factor is not None:
        if axis is None:
            return torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zero_point.reshape(1).float(),
                                                                    qmin, qmax, grad_factor)
        return torch._fake_quantize_learnable_per_channel_affine(x, scale, zero_point.float(), axis % x.dim(), qmin,
                                                                 qmax, grad_factor)
    if _eager_inference(x):
        if axis is not None:
            shape = [1] * x.dim()
            shape[axis % x.dim()] = -1
            scale, zero_point = scale.reshape(shape), zero_point.reshape(shape)
        # torch's kernel: (clamp(nearbyint(x * (1 / scale)) + zp, qmin, qmax) - zp) * scale, all in float32; with
        # an integer zp the clamp can move inside the subtraction, which is exact (tests compare bit for bit).
        zp = zero_point.float()
        return (x * (1.0 / scale)).round_().clamp_(qmin - zp, qmax - zp).mul_(scale)
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, qmin, qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zero_point, axis % x.dim(), qmin, qmax)


def plain_inference() -> bool:
    """No gradient and no exporter, tracer or compiler that must see torch's fake-quant op."""
    return not torch.is_grad_enabled() and not torch.jit.is_tracing() and not torch.compiler.is_compiling()


def _eager_inference(x: Tensor) -> bool:
    """Plain eager values (not a subclass such as a Parameter or a fake tensor) under plain_inference."""
    return type(x) is Tensor and plain_inference()


def channel_multiply(x: Tensor, mul: Tensor | None) -> Tensor:
    """x times `mul` along its last axis; x itself when `mul` is None or empty (no runtime smoothing)."""
    return x if mul is None or not mul.numel() else x * mul


class QuantLinear(nn.Module):
    """A quantized nn.Linear with frozen qparams: fq(x) @ fq(W^T) + b, the dequant -> matmul pattern engines fuse
    into an int8 GEMM.

    The weight is transposed *before* fake-quant (per-channel axis 1), so the ONNX graph has DequantizeLinear
    feeding MatMul directly; with F.linear the exporter put a Transpose between them, and ONNX Runtime then fused
    only the activation side on some linears (MatMulIntegerToFloat). A weight grid narrower than its storage
    type (7-bit weights) is not expressible as a QuantizeLinear range, so the weight arrives already snapped onto
    it and is fake-quantized here over the full storage range, which keeps exactly those integers.

    act_range / weight_range: (qmin, qmax) of each fake-quant; per_channel: one weight scale per output channel;
    channel_mul: runtime SmoothQuant's per-input-channel multiplier; the weight's columns already carry its
    inverse. Empty means none, and then no buffer is kept (None), so that the exported graph of an unsmoothed
    model stays exactly what it was before runtime smoothing existed (the aarch64 contract's artefacts).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, act_qparams: tuple[Tensor, Tensor],
                 act_range: tuple[int, int], weight_qparams: tuple[Tensor, Tensor], weight_range: tuple[int, int],
                 per_channel: bool, channel_mul: Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight.detach(), requires_grad=False)
        self.bias = bias
        self.register_buffer("act_scale", act_qparams[0].detach().clone())
        self.register_buffer("act_zero_point", act_qparams[1].detach().clone())
        self.register_buffer("weight_scale", weight_qparams[0].detach().clone())
        self.register_buffer("weight_zero_point", weight_qparams[1].detach().clone())
        self.register_buffer("channel_mul", channel_mul.detach().clone() if channel_mul.numel() else None)
        self.act_range, self.weight_range, self.per_channel = act_range, weight_range, per_channel

    def smoothed_input(self, x: Tensor) -> Tensor:
        """x as the quantizer sees it: after the runtime SmoothQuant multiply, not yet quantized."""
        return channel_multiply(x, self.channel_mul)

    def quantized_input(self, x: Tensor) -> Tensor:
        return fake_quantize(self.smoothed_input(x), self.act_scale, self.act_zero_point, None, *self.act_range)

    def quantized_weight(self) -> Tensor:
        """fq(W^T), [in, out]."""
        axis = 1 if self.per_channel else None
        return fake_quantize(self.weight.t(), self.weight_scale, self.weight_zero_point, axis, *self.weight_range)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.matmul(self.quantized_input(x), self.quantized_weight())
        return y if self.bias is None else y + self.bias


ATTENTION_IMPL = "ptqkit_int8"  # config._attn_implementation of a converted model with int8 attention


class QuantAttention(nn.Module):
    """Frozen qparams of the attention matmul operands of one attention module: fq(Q) @ fq(K^T), softmax, then
    fq(P) @ fq(V), each matmul's inputs in the dequant -> MatMul form engines run as int8 (K is transposed before
    its fake-quant for the same reason as QuantLinear's weight).

    qparams: operand name -> (scale, zero_point, (qmin, qmax)); an operand without an entry (its matmul was
    excluded or left in fp32) passes through unquantized. Attached to the attention module as `quant_attention`
    by Quantizer.convert.
    """

    def __init__(self, qparams: dict[str, tuple[Tensor, Tensor, tuple[int, int]]]):
        super().__init__()
        self.ranges: dict[str, tuple[int, int]] = {}
        for name, (scale, zero_point, qrange) in qparams.items():
            self.register_buffer(f"{name}_scale", scale.detach().clone())
            self.register_buffer(f"{name}_zero_point", zero_point.detach().clone())
            self.ranges[name] = qrange

    def operand(self, name: str, x: Tensor) -> Tensor:
        if name not in self.ranges:
            return x
        return fake_quantize(x, getattr(self, f"{name}_scale"), getattr(self, f"{name}_zero_point"), None,
                             *self.ranges[name])

    def forward(self, query: Tensor, key: Tensor, value: Tensor, mask: Tensor | None,
                scaling: float) -> tuple[Tensor, Tensor]:
        """transformers' eager attention (no dropout: the converted model is for inference) on quantized operands."""
        scores = torch.matmul(self.operand("query", query), self.operand("key", key.transpose(2, 3))) * scaling
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        out = torch.matmul(self.operand("probs", probs), self.operand("value", value))
        return out.transpose(1, 2).contiguous(), probs


def int8_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                   scaling: float | None = None, dropout: float = 0.0, **kwargs) -> tuple[Tensor, Tensor]:
    """The attention function of ATTENTION_IMPL (transformers' AttentionInterface signature): the module's
    QuantAttention, or plain eager attention where the module has none."""
    quant = getattr(module, "quant_attention", None) or QuantAttention({})
    return quant(query, key, value, attention_mask, query.size(-1) ** -0.5 if scaling is None else scaling)


def register_int8_attention() -> None:
    """Make ATTENTION_IMPL known to transformers (idempotent). Its mask is eager attention's additive float mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION_IMPL, int8_attention)
    AttentionMaskInterface.register(ATTENTION_IMPL, eager_mask)


class LogitsOnly(nn.Module):
    """Positional inputs in a fixed order, logits out: what tracing, ONNX export and module engines take."""

    def __init__(self, model: nn.Module, input_names: tuple[str, ...]):
        super().__init__()
        self.model = model
        self.input_names = tuple(input_names)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.model(**dict(zip(self.input_names, inputs))).logits
