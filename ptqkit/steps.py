"""The chain in three resumable steps behind calib.py, export.py and bench.py: quantization state, artefacts,
timing; each reads what the previous one wrote into --output-dir."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable

from . import artifacts, report
from .backends import check_backend_name, get_backend, installed_engines
from .backends.base import ONNX, Runner
from .backends.pytorch import TorchRunner, eager_profiler
from .config import RunConfig
from .data import calibration_batches
from .errors import UserError
from .export import export_artifacts
from .latency import measure_latency, measure_limit
from .layer_error import format_table, layer_errors
from .loading import load
from .profile import OpTimes
from .quantizer import Quantizer
from .recipe import calibrate
from .runtime_files import write_runtime_files

LAYER_REPORT_BATCHES = 8  # calibration batches the per-layer error report runs on


def calib_step(cfg: RunConfig) -> Path:
    """calib.py: calibrate and save the quantization state plus a JSON summary of the qparams."""
    check_backend_name(cfg.backend)
    ld = load(cfg)
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    data = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    q, _ = calibrate(ld, cfg, data)
    layout = artifacts.Layout(out_dir)
    state_dir = layout.quant_state
    q.save(state_dir)
    if cfg.layer_report:
        errors = layer_errors(ld.model, q, data[:LAYER_REPORT_BATCHES])
        print(format_table(errors))
        artifacts.write_json(layout.layer_report, {"batches": min(len(data), LAYER_REPORT_BATCHES),
                                                   "layers": [e.to_dict() for e in errors]})
    summary = {
        "model": ld.model_name, "task": ld.task.name, "device": cfg.device, "calib_batches": cfg.calib_batches,
        "config": q.config.to_dict(),
        "points": {p.name: {role: _qparams_summary(*q.qparams(p.name, role)) for role in p.roles} for p in q.points},
    }
    artifacts.write_json(layout.calib_summary, summary)
    print(f"calibrated {len(q.points)} quantization points on {cfg.calib_batches} train batches; state: {state_dir}")
    return state_dir


def export_step(cfg: RunConfig) -> dict[str, Path]:
    """export.py: rebuild the fake-quant model from the saved state and write the artefacts."""
    check_backend_name(cfg.backend)
    ld = load(cfg)
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    q = Quantizer.load(artifacts.Layout(out_dir).quant_state, ld.model, ld.input_names)
    paths = export_artifacts(ld.model, q.convert(ld.model), ld.input_names, out_dir)
    write_runtime_files(out_dir, ld.tokenizer, ld.model.config, ld.input_names, cfg.max_seq_len, ld.text_pairs)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


def bench_step(cfg: RunConfig, backends: list[str]) -> dict:
    """bench.py: time PyTorch fp32 and each engine's fp32/int8 artefacts from --output-dir; write bench.json."""
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    engines = [get_backend(b) for b in (installed_engines() if backends == ["auto"] else backends)]
    for engine in engines:
        if engine.takes != ONNX:
            raise UserError(f"bench.py times exported files; {engine.name} compiles the model itself: "
                            f"use bert_ptq.py --backend {engine.name}")
    layout = artifacts.Layout(out_dir)
    paths = {"fp32": layout.fp32_onnx, "int8": layout.int8_onnx}
    for path in paths.values():
        if not path.is_file():
            raise UserError(f"{path} not found: run export.py (or bert_ptq.py) with --output-dir {out_dir} first")
    ld = load(replace(cfg, eval_limit=1))
    records = {"pytorch-fp32": {"name": "pytorch-fp32", "engine": "pytorch", "precision": "fp32"}}
    builders: dict[str, Callable[[int], Runner]] = {"pytorch-fp32": lambda t: TorchRunner(ld.model, ld.input_names, t)}
    profilers: dict[str, OpTimes] = {"pytorch-fp32": eager_profiler(ld.model, ld.input_names)}
    for engine in engines:
        for precision, path in paths.items():
            name = f"{engine.name}-{precision}"
            records[name] = {"name": name, "engine": engine.name, "precision": precision}
            builders[name] = lambda t, e=engine, p=path, pr=precision: e.compile(p, t, pr)
            if engine.profiled:
                profilers[name] = engine.profiler(path, precision)
    for name, measured in measure_latency(builders, ld.model.config.vocab_size, ld.input_names, cfg.bench,
                                             profilers=profilers).items():
        records[name].update(measured)
    rep = report.build(cfg.device, ld.model_name, ld.task.name, 0, list(records.values()), cfg.bench)
    if cfg.bench.profile_calls:
        rep["limits"] = [measure_limit(e, paths["int8"], rep["variants"], ld.model.config, cfg.bench.threads)
                         for e in engines if e.profiled]
    artifacts.write_json(layout.bench_json, rep)
    print(report.summary(rep))
    return rep


def _qparams_summary(scale, zero_point) -> dict:
    s = scale.flatten()
    return {"scale_min": float(s.min()), "scale_max": float(s.max()), "channels": int(s.numel()),
            "zero_point_max_abs": int(zero_point.abs().max())}
