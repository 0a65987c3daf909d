"""Int8 attention on the converted model: which attention matmul points a QuantAttention can hold, and giving each
attention module its QuantAttention, checked to run."""
from __future__ import annotations

import copy

import torch

from .capture import example_inputs, model_input_names
from .passes import MATMUL_NAMES, QuantPoint
from .qmodel import ATTENTION_IMPL, QuantAttention, register_int8_attention

# The QuantAttention operands that each attention matmul point's roles ("input", "other") feed.
MATMUL_OPERANDS = dict(zip(MATMUL_NAMES, (("query", "key"), ("probs", "value"))))
NOT_VIA_INTERFACE = "its attention does not go through transformers' attention interface"


def attention_obstacle(points: list[QuantPoint], model: torch.nn.Module) -> str:
    """Why these points' attention matmuls cannot be quantized on `model`; empty when they can (checked on a copy
    without qparams)."""
    extra = extra_matmul(points)
    if extra:
        return extra
    modules = {p.name.rpartition(".")[0] for p in points if p.kind == "matmul"}
    if not modules:  # e.g. DeBERTa's disentangled attention multiplies with torch.bmm
        return "its graph has no attention matmul (torch.matmul) to quantize"
    return "" if attach_attention(copy.deepcopy(model).eval(), {name: {} for name in modules}) else NOT_VIA_INTERFACE


def extra_matmul(points: list[QuantPoint]) -> str:
    """The reason QuantAttention cannot hold a matmul point beyond Q*K^T and P*V of one call; empty if none."""
    extra = next((p.name for p in points if p.kind == "matmul" and p.name.rpartition(".")[2] not in MATMUL_OPERANDS), "")
    return f"its attention runs more than two matmuls per call ({extra})" if extra else ""


def attach_attention(qmodel: torch.nn.Module, attention: dict[str, dict]) -> bool:
    """Give each attention module its QuantAttention and switch the model to the int8 attention function; then
    check on one small batch that every one of them runs (a model whose attention does not go through
    transformers' attention interface would otherwise silently keep fp32 attention). Returns whether they all ran."""
    register_int8_attention()
    modules = {name: qmodel.get_submodule(name) for name in attention}
    for name, qparams in attention.items():
        modules[name].quant_attention = QuantAttention(qparams)
    qmodel.config._attn_implementation = ATTENTION_IMPL
    ran: set[str] = set()
    hooks = [m.quant_attention.register_forward_hook(lambda *_, n=n: ran.add(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            qmodel.eval()(**example_inputs(qmodel, model_input_names(qmodel), batch=1, seq_len=8))
    finally:
        for h in hooks:
            h.remove()
    return len(ran) == len(modules)
