"""Converted model (Quantizer.convert) -> TorchScript and ONNX (QuantizeLinear/DequantizeLinear) artefacts.

The torch.export graph cannot be re-traced with dynamic shapes by torch.jit.trace or the TorchScript-based
ONNX exporter (sizes become constants), and only that exporter's graphs get ONNX Runtime's transformer fusions.
So export works on the converted eager HF module (qmodel.QuantLinear in place of each quantized nn.Linear, with
the qparams the graph calibrated and the graph's possibly QAT-trained weights). Tests check that the graph and
the exported artefacts agree.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import artifacts
from .qmodel import LogitsOnly

OPSET = 17


def export_onnx(model: torch.nn.Module, input_names: tuple[str, ...], example: dict, path: str | Path) -> Path:
    """TorchScript-based exporter (dynamo=False): dynamic batch/seq axes, fusable by ORT and OpenVINO."""
    wrapper = LogitsOnly(model, input_names).eval()
    args = tuple(example[n] for n in input_names)
    with artifacts.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, args, str(tmp), dynamo=False, opset_version=OPSET, input_names=list(input_names),
            output_names=["logits"], dynamic_axes={n: {0: "batch", 1: "seq_len"} for n in input_names} | {"logits": {0: "batch"}},
        )
        _inline_constant_identities(tmp)
    model.eval()  # the exporter restores the wrapper's mode; keep dropout off regardless
    return Path(path)


def _inline_constant_identities(path: Path) -> None:
    """Point consumers of Identity(initializer) at the initializer itself.

    The exporter deduplicates equal scales/zero points into Identity nodes; ONNX Runtime's QDQ fusion wants
    constant initializers there and otherwise leaves those MatMuls in fp32 (Q/K/V, pooler, classifier).
    """
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    if not alias:
        return
    graph_outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in graph_outputs)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)
    onnx.save(model, str(path))


def export_torchscript(model: torch.nn.Module, input_names: tuple[str, ...], example: dict, path: str | Path) -> Path:
    """The reference's step 4: torch.jit.trace + freeze-free save (shapes traced at the example's size)."""
    wrapper = LogitsOnly(model, input_names).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(wrapper, tuple(example[n] for n in input_names), check_trace=False)
    with artifacts.atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return Path(path)
