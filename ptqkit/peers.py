"""Peers: what a user would pick instead of our int8, built from the same model and calibration batches."""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import artifacts
from .backends.base import Runner
from .backends.onnxruntime import ORTBackend, quantize_dynamic_file
from .backends.openvino import OpenVINOBackend, default_int8_precision
from .backends.pytorch import TorchRunner, eager_profiler
from .profile import OpTimes


@dataclass
class Peer:
    name: str
    engine: str
    precision: str
    build: Callable[[int], Runner]  # threads -> runner
    artefact: str | None = None
    op_times: OpTimes | None = None  # the engine's profiler, where it has one
    note: str | None = None


NNCF = "nncf-openvino-int8"  # the peer our time to an int8 engine is compared with (report "stages")


def nncf_int8(fp32_onnx: Path, calib: list[dict], out_dir: Path) -> Peer:
    """NNCF PTQ (transformer model type) on the OpenVINO model, same calibration batches as ours, run at OpenVINO's
    default precision for this CPU as NNCF's users run it (the f32 hint of our "int8" variant slowed it by up to
    14%, 1x512 on avx512_bf16)."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(fp32_onnx))
    names = {i.get_any_name() for i in model.inputs}  # the exporter drops inputs the graph never reads
    dataset = nncf.Dataset(calib, lambda b: {k: v.numpy() for k, v in b.items() if k in names})
    # subset_size counts dataset items, here batches: every calibration batch, as ours uses.
    quantized = nncf.quantize(model, dataset, model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib))
    xml = artifacts.Layout(out_dir).peer_nncf_xml
    _save_ir(quantized, xml)
    backend, precision = OpenVINOBackend(), default_int8_precision()
    return Peer(NNCF, "openvino", precision, lambda t: backend.compile(xml, t, precision), str(xml),
                backend.profiler(xml, precision), note=f"as a plain compile_model runs it on this CPU: "
                f"{'bf16' if precision == 'int8-bf16' else 'f32'} outside int8")


def openvino_bf16(fp32_onnx: Path) -> Peer:
    """The fp32 model with OpenVINO's bf16 hint: no calibration at all."""
    backend = OpenVINOBackend()
    return Peer("openvino-bf16", "openvino", "bf16", lambda t: backend.compile(fp32_onnx, t, "bf16"), str(fp32_onnx),
                backend.profiler(fp32_onnx, "bf16"))


def ort_dynamic_int8(fp32_onnx: Path, out_dir: Path) -> Peer:
    """ONNX Runtime dynamic quantization: int8 weights, activations quantized per call (no calibration)."""
    path = quantize_dynamic_file(fp32_onnx, artifacts.Layout(out_dir).peer_ort_dynamic_onnx)
    backend = ORTBackend(fuse_attention=False)  # a plain session on quantize_dynamic's file, as its users run it
    return Peer("onnxruntime-dynamic-int8", "onnxruntime", "int8", lambda t: backend.compile(path, t, "int8"), str(path),
                backend.profiler(path, "int8"))


def pytorch_dynamic_int8(model: torch.nn.Module, input_names: tuple[str, ...]) -> Peer:
    """torch.ao dynamic int8 on every nn.Linear (deprecated API, still what many users reach for)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qmodel = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)
    return Peer("pytorch-dynamic-int8", "pytorch", "int8", lambda t: TorchRunner(qmodel, input_names, t),
                op_times=eager_profiler(qmodel, input_names))


def _save_ir(model, xml: Path) -> None:
    """ov.save_model writes .xml + .bin: write both under temp names, then rename (bin first)."""
    import openvino as ov

    tmp_dir = Path(tempfile.mkdtemp(prefix=".ir-", dir=xml.parent))
    try:
        ov.save_model(model, str(tmp_dir / xml.name))
        os.replace(tmp_dir / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(tmp_dir / xml.name, xml)
    finally:
        for f in tmp_dir.glob("*"):
            f.unlink()
        tmp_dir.rmdir()
