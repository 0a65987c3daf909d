"""The whole chain behind bert_ptq.py: load, calibrate, export, choose the engine, build, evaluate and time every
variant, report. Each step lives in its own module; this one only orders them and times each as a stage."""
from __future__ import annotations

import platform
from pathlib import Path

from . import artifacts, peers, report
from .backends import check_backend_name, get_backend
from .backends.base import ONNX, ModelForms
from .config import RunConfig
from .data import calibration_batches
from .errors import UserError
from .export import export_artifacts
from .frontier import precision_frontier
from .latency import measure_latency, measure_limit
from .loading import Loaded, load
from .models import all_cores
from .qmodel import LogitsOnly
from .quantizer import Quantizer
from .recipe import calibrate
from .runtime_files import write_runtime_files
from .selection import choose_engine
from .stages import Stages
from .sysinfo import usable_cores
from .variants import build_peers, engine_variants, evaluate_variants, reference_variants


def run(cfg: RunConfig) -> dict:
    """fp32 baseline, PTQ, export, compile on the engine, peers, evaluate and time every variant, report; every
    stage timed (report "stages")."""
    auto = cfg.backend == "auto"
    stages = Stages()
    with stages.time("load"):
        check_backend_name(cfg.backend)
        if cfg.max_slowdown is not None and cfg.max_accuracy_drop is not None:
            raise UserError("--max-slowdown and --max-accuracy-drop both choose the float layers: pass one")
        ld = load(cfg)
        out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    layout = artifacts.Layout(out_dir)
    threads = cfg.bench.threads[0]  # what the latency figures are taken at
    work_threads = usable_cores()  # untimed work (calibration, the auto check's reference, evaluation): every core
    with stages.time("calibrate: data"):
        calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    with all_cores():
        q, steps = calibrate(ld, cfg, calib, stages)
    paths, forms = export_all(q, ld, out_dir, stages)

    built: dict = {}  # runners the selection compiled, reused for evaluation
    selection = None
    to_int8_engine = None
    if auto:
        selection = choose_engine(q, ld, cfg, calib, forms, threads, work_threads, stages)
        to_int8_engine = stages.total() - stages.seconds["load"]
        engine, ours = selection.engine, (selection.precision,)
        # evaluation runs on the work threads: the selection's runners where they ran at that thread count
        built.update(selection.runners if work_threads == threads else selection.work_runners)
    else:
        engine = get_backend(cfg.backend)
        ours = engine.int8_variants
    with stages.time("export: runtime files"):  # what predict.py and the corpus benchmark serve: this choice
        write_runtime_files(out_dir, ld.tokenizer, ld.model.config, ld.input_names, cfg.max_seq_len, ld.text_pairs,
                            (engine.name, ours[0]) if engine.takes == ONNX else ("", ""))
    frontier = None
    if cfg.max_slowdown is not None:  # on the engine and precision that serve; the artefacts again when k > 0
        frontier = precision_frontier(q, ld, cfg, len(calib) * cfg.batch_size, calib[:4], engine, ours[0], threads,
                                      work_threads, stages)
        if frontier["chosen_k"]:
            built.clear()
            paths, forms = export_all(q, ld, out_dir, stages)
    variants = reference_variants(ld, q, fakequant=not cfg.bench_only)
    variants += engine_variants(engine, forms, ours, cfg.max_seq_len)
    if not cfg.skip_peers:
        variants += build_peers(ld, paths["fp32_onnx"], calib, out_dir, stages)
    built = {v.name: built[v.name] for v in variants if v.name in built}

    evaluate_variants(variants, ld, cfg, built, work_threads, out_dir, stages)
    # Timing compiles every variant afresh and alike: a runner that had evaluated sentences of many shapes (or run
    # the selection) was seen to time slower at 1x512 than a fresh copy of the same model (docs/performance.md)
    built.clear()
    if selection is not None:
        selection.runners.clear()
        selection.work_runners.clear()

    timed = [v for v in variants if v.build is not None and v.measured]
    with stages.time("timing"):
        latency = measure_latency({v.name: v.build for v in timed}, ld.model.config.vocab_size, ld.input_names,
                                  cfg.bench, {v.name: v.op_times for v in timed if v.op_times})
    for v in timed:
        v.record.update(latency[v.name])
    rep = report.build(cfg.device, ld.model_name, ld.task.name, 0 if cfg.bench_only else len(ld.val_labels),
                       [v.record for v in variants], cfg.bench)
    if cfg.bench.profile_calls and engine.profiled and engine.takes == ONNX:  # the peak is timed on QDQ ONNX GEMMs
        with stages.time("timing: int8 GEMM peak"):
            rep["limits"] = [measure_limit(engine, paths["int8_onnx"], rep["variants"], ld.model.config,
                                           cfg.bench.threads)]
    rep["stages"] = stage_record(stages, to_int8_engine, work_threads)
    rep["quantization"] = {"config": q.config.to_dict(), "points": len(q.points), "fallback": q.fallback_layers,
                           "calib_batches": len(calib), "max_accuracy_drop": cfg.max_accuracy_drop,
                           "qat_epochs": cfg.qat_epochs, "smoothquant": cfg.smoothquant,
                           "weight_rounding": cfg.weight_rounding, **steps}
    if frontier is not None:
        rep["quantization"]["frontier"] = frontier
    if selection is not None:
        rep["backend_selection"] = selection.record
    if ld.task.empty_texts:
        rep["empty_texts"] = ld.task.empty_texts
    rep["artifacts"] = {k: str(v) for k, v in paths.items()} | {"quant_state": str(layout.quant_state)}
    if cfg.device == "aarch64" and platform.machine() not in ("aarch64", "arm64"):
        rep["note"] = "aarch64 contract built and run on an x86 host as a functional check: these timings are not ARM timings"
    written = report.write(rep, out_dir)
    print(report.summary(rep))
    for path in written:
        print(f"wrote {path}")
    print(report.stage_line(rep["stages"]))
    return rep


def export_all(q: Quantizer, ld: Loaded, out_dir: Path, stages: Stages) -> tuple[dict, ModelForms]:
    """The quantization state and the model files of the quantizer's current model, and the forms engines take."""
    with stages.time("export: state"):
        q.save(artifacts.Layout(out_dir).quant_state)
        converted = q.convert(ld.model)
    paths = export_artifacts(ld.model, converted, ld.input_names, out_dir, stages)
    forms = ModelForms(onnx={"fp32": paths["fp32_onnx"], "int8": paths["int8_onnx"]},
                       module={"fp32": LogitsOnly(ld.model, ld.input_names), "int8": LogitsOnly(converted, ld.input_names)})
    return paths, forms


def stage_record(stages: Stages, to_int8_engine: float | None, work_threads: int) -> dict:
    """report.json "stages": seconds per stage, their total, the threads untimed work ran on, and two figures to
    compare: ours from the loaded model to the selected int8 engine (--backend auto: calibration, export, the
    engines' compiles and the auto check) and NNCF's quantize (reading our fp32 ONNX, nncf.quantize, writing its IR)
    plus compile, from the same run."""
    out: dict = {"seconds": stages.to_list(), "total_s": round(stages.total(), 2), "work_threads": work_threads}
    if to_int8_engine is not None:
        out["to_int8_engine_s"] = round(to_int8_engine, 2)
    nncf = [f"peers: {peers.NNCF}", f"compile: {peers.NNCF}"]
    if all(name in stages.seconds for name in nncf):
        out["nncf_quantize_compile_s"] = round(sum(stages.seconds[name] for name in nncf), 2)
    return out
