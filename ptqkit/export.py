"""Converted model (Quantizer.convert) -> TorchScript and ONNX (QuantizeLinear/DequantizeLinear) artefacts, and the
float model -> ONNX: the model files of an artefact directory (export_artifacts).

The torch.export graph cannot be re-traced with dynamic shapes by torch.jit.trace or the TorchScript-based
ONNX exporter (sizes become constants), and only that exporter's graphs get ONNX Runtime's transformer fusions.
So export works on the converted eager HF module (qmodel.QuantLinear in place of each quantized nn.Linear, with
the qparams the graph calibrated and the graph's possibly QAT-trained weights). Tests check that the graph and
the exported artefacts agree.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from . import artifacts
from .capture import example_inputs
from .qmodel import LogitsOnly
from .stages import Stages

if TYPE_CHECKING:
    from .quantizer import Quantizer

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
        _finish_qdq(tmp)
    model.eval()  # the exporter restores the wrapper's mode; keep dropout off regardless
    return Path(path)


def _finish_qdq(path: Path) -> None:
    """Rewrite the exporter's graph into the QDQ form every engine reads the same way (in place)."""
    import onnx

    model = onnx.load(str(path))
    _inline_constant_identities(model.graph)
    _fold_weight_quantization(model.graph)
    onnx.save(model, str(path))


def _inline_constant_identities(graph) -> None:
    """Point consumers of Identity(initializer) at the initializer itself.

    The exporter deduplicates equal scales/zero points into Identity nodes; ONNX Runtime's QDQ fusion wants
    constant initializers there and otherwise leaves those MatMuls in fp32 (Q/K/V, pooler, classifier).
    """
    inits = {i.name for i in graph.initializer}
    alias = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity" and n.input[0] in inits}
    graph_outputs = {o.name for o in graph.output}
    keep = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias and n.output[0] not in graph_outputs)]
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(keep)


def _fold_weight_quantization(graph) -> None:
    """Store each weight as its integers: QuantizeLinear(float initializer) becomes an int8 initializer.

    Why: OpenVINO 2026.4's aarch64 CPU plugin (under qemu; no real ARM CPU to confirm) made int8 weights one
    too high for every integer from -64 to -2 when it quantized a float constant itself; its int8 GEMM then
    drifted from the fake-quant model (`bash tools/arm64_check.sh` measures the agreement; docs/arm64.md).
    Integer weights leave nothing to fold, are what ONNX Runtime's own quantizer writes, and take a quarter of
    the space. The integers are torch's fake-quant ones: nearbyint(w * (1/scale)) + zero point, saturated.
    """
    import numpy as np
    from onnx import numpy_helper

    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for name in n.input:
            uses[name] = uses.get(name, 0) + 1
    keep = []
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) != 3 or not all(name in inits for name in node.input):
            keep.append(node)
            continue
        w, scale, zp = (numpy_helper.to_array(inits[name]) for name in node.input[:3])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1:  # per-channel: broadcast the scales along `axis`
            shape = [1] * w.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        info = np.iinfo(zp.dtype)
        inv = np.float32(1.0) / scale.astype(np.float32)
        q = np.clip(np.rint(w.astype(np.float32) * inv) + zp.astype(np.int32), info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        uses[node.input[0]] -= 1
        if not uses[node.input[0]]:
            graph.initializer.remove(inits.pop(node.input[0]))
    del graph.node[:]
    graph.node.extend(keep)


def export_torchscript(model: torch.nn.Module, input_names: tuple[str, ...], example: dict, path: str | Path) -> Path:
    """The reference's step 4: torch.jit.trace + freeze-free save (shapes traced at the example's size)."""
    from transformers.utils import logging as hf_logging

    wrapper = LogitsOnly(model, input_names).eval()
    # jit.trace probes every attribute of every submodule; on BertModel that reads transformers' loss_function
    # property, which then told users it would train a sequence classifier with a causal-LM loss
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, tuple(example[n] for n in input_names), check_trace=False)
    finally:
        hf_logging.set_verbosity(level)
    with artifacts.atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return Path(path)


def export_example(model, input_names: tuple[str, ...]) -> dict:
    """The inputs every export traces with: one row of up to 128 tokens (axes stay dynamic in the ONNX files)."""
    seq_len = min(128, int(getattr(model.config, "max_position_embeddings", 128) or 128))
    return example_inputs(model, input_names, batch=1, seq_len=seq_len)


def export_fp32(model, input_names: tuple[str, ...], path: Path) -> Path:
    """The float model as ONNX (dynamic batch and sequence), written atomically."""
    return export_onnx(model, input_names, export_example(model, input_names), path)


def export_int8(model, q: Quantizer, input_names: tuple[str, ...], path: Path) -> Path:
    """Only the QDQ ONNX (what the engines compile), written atomically."""
    return export_onnx(q.convert(model), input_names, export_example(model, input_names), path)


def export_artifacts(model, converted, input_names: tuple[str, ...], out_dir: Path,
                     stages: Stages | None = None) -> dict[str, Path]:
    """fp32 ONNX, int8 QDQ ONNX and int8 TorchScript (from the converted model) into out_dir's Layout, each written
    atomically and timed as its own stage."""
    stages = stages or Stages()
    example = export_example(model, input_names)
    layout = artifacts.Layout(out_dir)
    with stages.time("export: fp32 onnx"):
        fp32 = export_fp32(model, input_names, layout.fp32_onnx)
    with stages.time("export: int8 onnx"):
        int8 = export_onnx(converted, input_names, example, layout.int8_onnx)
    with stages.time("export: int8 torchscript"):
        script = export_torchscript(converted, input_names, example, layout.int8_torchscript)
    return {"fp32_onnx": fp32, "int8_onnx": int8, "int8_torchscript": script}
