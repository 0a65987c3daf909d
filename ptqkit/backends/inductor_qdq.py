"""Our converted model in the form PT2E's convert step produces, for Inductor's int8 freezing patterns.

`to_qdq_module` rewrites every QuantLinear of the converted model (Quantizer.convert, qmodel.py) with the same
qparams (and int8 attention's QuantAttention into QDQAttention, which stays fp32 math in Inductor):

    x -> quantized_decomposed.quantize_per_tensor -> dequantize_per_tensor --+
    int8 weight buffer -> dequantize_per_channel(axis 0) -> (t) ------------ addmm/mm (+ bias)

Activations are emitted as uint8 whatever the observer's dtype: the pattern matches int8 activations too, but
oneDNN (v3.12 in torch 2.13) then runs the matmul on its reference implementation (ONEDNN_VERBOSE shows
`matmul,ref_int8:any` for src s8 against the prepacked weight, `brg_matmul:avx512_core_vnni` for src u8, each
with its time: `ONEDNN_VERBOSE=1 python bert_ptq.py --backend inductor` shows them), orders of magnitude slower
than the JIT kernel. An int8 grid is
exactly the uint8 grid shifted by 128 (zero point + 128), so nothing changes numerically. Weights must be int8
with zero point 0 (uint8 symmetric weights, zero point 128, are shifted onto that grid the same way); asymmetric
weights are refused.
"""
from __future__ import annotations

import copy

import torch

from ..errors import UserError
from ..qmodel import QuantAttention, QuantLinear, channel_multiply


def _qd():
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers torch.ops.quantized_decomposed

    return torch.ops.quantized_decomposed


class QDQLinear(torch.nn.Module):
    """A QuantLinear as quantized_decomposed q/dq ops around F.linear, with the int8 weight as a buffer.

    Computes what QuantLinear computes (up to float rounding order): dq(q(x * m)) @ dq(q(W))^T + b, m the
    runtime SmoothQuant multiplier (QuantLinear.channel_mul; none by default).
    """

    def __init__(self, ql: QuantLinear):
        super().__init__()
        qd = _qd()
        a_qmin, a_qmax = ql.act_range
        # always uint8: oneDNN runs u8 x s8 on its JIT brgemm/VNNI kernels but s8 x s8 on the reference
        # (ref_int8) matmul, far slower (module docstring). int8 q in [-128, 127] with zero point z is exactly
        # the uint8 grid q + 128 with zero point z + 128 (same dequantized values).
        shift = 128 if a_qmin < 0 else 0
        self.x_scale, self.x_zp = float(ql.act_scale), int(ql.act_zero_point) + shift
        self.x_qmin, self.x_qmax = a_qmin + shift, a_qmax + shift
        self.x_dtype = torch.uint8

        w, (w_qmin, w_qmax) = ql.weight.detach(), ql.weight_range
        w_scale, w_zp = ql.weight_scale.float(), ql.weight_zero_point
        out_features = w.shape[0]
        if not ql.per_channel:  # per-tensor weights: the per-channel form with one repeated scale
            w_scale, w_zp = w_scale.reshape(1).expand(out_features), w_zp.reshape(1).expand(out_features)
        w_zp = w_zp.to(torch.int64)
        shift = 0 if w_qmin < 0 else 128  # uint8 grid q in [0, 255] -> int8 q - 128
        if bool((w_zp != shift).any()):
            raise UserError("inductor int8 needs symmetric weights (oneDNN int8 GEMM takes weight zero point 0)")
        q = qd.quantize_per_channel(w, w_scale.contiguous(), w_zp.contiguous(), 0, w_qmin, w_qmax, torch.int32)
        self.register_buffer("qweight", (q - shift).to(torch.int8))
        self.register_buffer("w_scale", w_scale.contiguous().clone())
        self.register_buffer("w_zp", torch.zeros(out_features, dtype=torch.int64))
        self.bias = ql.bias
        self.register_buffer("channel_mul", ql.channel_mul)  # runtime SmoothQuant, or None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qd = torch.ops.quantized_decomposed
        x = channel_multiply(x, self.channel_mul)
        args = (self.x_scale, self.x_zp, self.x_qmin, self.x_qmax, self.x_dtype)
        xd = qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *args), *args)
        grid = torch.iinfo(self.qweight.dtype)  # the int8 buffer's own range
        w = qd.dequantize_per_channel(self.qweight, self.w_scale, self.w_zp, 0, grid.min, grid.max, self.qweight.dtype)
        return torch.nn.functional.linear(xd, w, self.bias)


class QDQAttention(QuantAttention):
    """A QuantAttention whose operands go through quantized_decomposed q/dq with Python-number qparams, which
    torch.export can trace (torch's fake-quant ops with tensor qparams have no meta kernel). Inductor has no int8
    attention kernel: it runs these as fp32 math around fp32 batched matmuls (Engine.int8_attention is False)."""

    def __init__(self, qa: QuantAttention):
        super().__init__({})
        self.qparams = {}
        for name, (qmin, qmax) in qa.ranges.items():
            # uint8 like QDQLinear's activations (the same values; Inductor fuses a linear's following quantize into
            # its u8 output and expects u8 there)
            shift = 128 if qmin < 0 else 0
            zero_point = int(getattr(qa, f"{name}_zero_point")) + shift
            self.qparams[name] = (float(getattr(qa, f"{name}_scale")), zero_point, qmin + shift, qmax + shift, torch.uint8)

    def operand(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name not in self.qparams:
            return x
        qd = _qd()
        args = self.qparams[name]
        return qd.dequantize_per_tensor(qd.quantize_per_tensor(x, *args), *args)


def to_qdq_module(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a converted model with every QuantLinear replaced by a QDQLinear and every QuantAttention by a
    QDQAttention (same qparams)."""
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(getattr(m, "quant_attention", None), QuantAttention):
            m.quant_attention = QDQAttention(m.quant_attention)
    targets = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear)]
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, QDQLinear(m))
    return model.eval()
