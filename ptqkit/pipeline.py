"""The whole chain behind bert_ptq.py: data, model, fp32 baseline, evaluation, timing, report."""
from __future__ import annotations

import platform
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifacts, peers, report, roofline, runtime
from .backends import get_backend, installed_engines
from .backends.base import ONNX, Engine, KernelEvidence, ModelForms, Runner
from .backends.pytorch import TorchRunner, eager_profiler
from .bench import BenchConfig, synthetic_inputs, summarize, time_interleaved
from .capture import example_inputs, model_input_names
from .calibration import METHODS
from .config import INT8_ATTENTION, QuantConfig, RunConfig
from .data import TaskData, calibration_batches, encode, split_train
from .errors import UserError, one_line
from .evaluation import argmax_agreement, evaluate, predict_logits
from .layer_error import format_table, layer_errors
from .export import export_onnx, export_torchscript
from .models import all_cores, load_model
from .peers import Peer
from .profile import OpTimes, format_profile, profile_cell
from .qmodel import LogitsOnly
from .qat import QATConfig, train_qat
from .smoothquant import collect_input_absmax, linear_input_absmax, smooth, smooth_runtime, track_linear_inputs
from .sysinfo import SATURATING_ISAS, host_int8_isa, usable_cores
from .quantizer import Quantizer, run_calibration
from .selection import MIN_POOL, POOL_SIZE, Selection, select_engine
from .stages import Stages
from .tasks import load_task

LAYER_REPORT_BATCHES = 8  # calibration batches the per-layer error report runs on
# --int8-attention auto under --backend auto, where OpenVINO and ONNX Runtime compete on one exported file: on (on
# VNNI x86; see pipeline.int8_attention). OpenVINO, the faster engine there, gains most from it; ONNX Runtime runs it
# at the same speed (docs/attention.md has the figures)
AUTO_INT8_ATTENTION = True
FAKEQUANT = "pytorch-fakequant"  # the reference variant: the eager fake-quant graph (choose_engine says why eager)


@dataclass
class Loaded:
    """Task, model and tokenized validation data: what every step starts from."""

    task: TaskData
    model: object
    tokenizer: object
    model_name: str
    input_names: tuple[str, ...]
    val_features: list
    val_labels: list

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0


def load(cfg: RunConfig) -> Loaded:
    from .tasks import check_labels
    from .user_files import fit_labels

    task = load_task(cfg.task, cfg.data_dir, cfg.train_file, cfg.validation_file, cfg.text_columns, cfg.label_column,
                     cfg.encoding)
    model, tokenizer, name = load_model(cfg.model, task, cfg.cache_dir)
    task = fit_labels(task, model.config.num_labels, model.config.label2id)
    check_labels(task, model.config.num_labels)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise UserError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's {max_pos} positions; use <= {max_pos}")
    val = task.validation[: cfg.eval_limit] if cfg.eval_limit else task.validation
    input_names = feed_inputs(model, tokenizer)
    features = encode(tokenizer, val, cfg.max_seq_len)
    return Loaded(task, model, tokenizer, name, input_names, features, [e.label for e in val])


def feed_inputs(model, tokenizer) -> tuple[str, ...]:
    """The tokenizer outputs the model's forward takes; the tokenizer is set to emit only those from now on
    (a BERT tokenizer saved with a DistilBERT or RoBERTa emits token types that model cannot take)."""
    names = model_input_names(model, tokenizer.model_input_names)
    if "input_ids" not in names:
        raise UserError(f"the tokenizer emits {', '.join(tokenizer.model_input_names)} but a "
                        f"{model.config.model_type} model needs input_ids: save the model's own tokenizer with it")
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the {model.config.model_type} model embeds only "
                        f"{model.config.vocab_size}: save the tokenizer the model was trained with")
    tokenizer.model_input_names = list(names)
    return names


@dataclass
class Variant:
    """One model type in the report, as data: its record, how to build its runner, what it is compared with.

    record: the report entry (name, engine, precision; peer/optional/note), filled in as the run goes.
    build: threads -> runner; None when it is not built (failed).
    reference: this variant *is* the named reference ("fp32" or "fakequant") the others compare against.
    compare: the references whose argmax agreement the report gives (agreement_with_<reference>).
    measured: kernels counted and latency timed (False for the fake-quant reference, whose fp32 math says
    nothing about speed). pad_to: evaluate on batches padded to this length (engines with fixed shapes).
    host_check: the int8 variant whose labels go into host_check.json beside the fake-quant logits.
    op_times: the engine's profiler on this variant (profile.OpTimes), where the engine has one.
    """

    record: dict
    build: Callable[[int], Runner] | None
    reference: str | None = None
    compare: tuple[str, ...] = ("fp32",)
    measured: bool = True
    pad_to: int | None = None
    host_check: bool = False
    op_times: OpTimes | None = None

    @property
    def name(self) -> str:
        return self.record["name"]

    @property
    def required(self) -> bool:
        """Our own variants fail the run; a peer or an optional variant is reported as failed instead."""
        return not (self.record.get("peer") or self.record.get("optional"))


def engine_variants(engine: Engine, forms: ModelForms, precisions: tuple[str, ...], max_seq_len: int) -> list[Variant]:
    """The engine's fp32 and our int8 model in each of `precisions` (the first is ours; later ones are optional)."""
    pad_to = max_seq_len if engine.fixed_shapes else None

    def variant(precision: str, model: str, **record) -> Variant:
        form = forms.get(engine.takes, model)
        return Variant({"name": f"{engine.name}-{precision}", "engine": engine.name, "precision": precision, **record},
                       lambda t: engine.compile(form, t, precision), pad_to=pad_to,
                       compare=("fp32",) if model == "fp32" else ("fp32", "fakequant"),
                       op_times=engine.profiler(form, precision))

    out = [variant("fp32", "fp32")]
    for i, precision in enumerate(precisions):
        note = {"note": engine.variant_notes[precision]} if precision in engine.variant_notes else {}
        out.append(variant(precision, "int8", **({"optional": True} if i else {}), **note))
    out[1].host_check = True
    return out


def run(cfg: RunConfig) -> dict:
    """fp32 baseline, PTQ, export, compile on the engine, peers, evaluate and time every variant, report; every
    stage timed (report "stages")."""
    auto = cfg.backend == "auto"
    stages = Stages()
    with stages.time("load"):
        check_backend_name(cfg.backend)
        ld = load(cfg)
        out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    layout = artifacts.Layout(out_dir)
    threads = cfg.bench.threads[0]  # what the latency figures are taken at
    work_threads = usable_cores()  # untimed work (calibration, the auto check's reference, evaluation): every core
    with stages.time("calibrate: data"):
        calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    with all_cores():
        q, steps = calibrate(ld, cfg, calib, stages)
    with stages.time("export: state and runtime files"):
        q.save(layout.quant_state)
        converted = q.convert(ld.model)
    paths = export_artifacts(ld.model, converted, ld.input_names, out_dir, stages)
    with stages.time("export: state and runtime files"):
        write_runtime_files(ld, cfg, out_dir)
    forms = ModelForms(onnx={"fp32": paths["fp32_onnx"], "int8": paths["int8_onnx"]},
                       module={"fp32": LogitsOnly(ld.model, ld.input_names), "int8": LogitsOnly(converted, ld.input_names)})

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
    variants = [Variant({"name": "pytorch-fp32", "engine": "pytorch", "precision": "fp32"},
                        lambda t: TorchRunner(ld.model, ld.input_names, t), reference="fp32", compare=(),
                        op_times=eager_profiler(ld.model, ld.input_names))]
    if not cfg.bench_only:
        variants.append(Variant({"name": FAKEQUANT, "engine": "pytorch", "precision": "int8-fakequant",
                                 "note": "reference fake-quant graph (fp32 math); not timed"},
                                lambda t: TorchRunner(q.quantize(), ld.input_names, t), reference="fakequant",
                                measured=False))
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
        latency = measure_latency({v.name: v.build for v in timed}, ld, cfg.bench,
                                  {v.name: v.op_times for v in timed if v.op_times})
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
                           "qat_epochs": cfg.qat_epochs, "smoothquant": cfg.smoothquant, **steps}
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


def evaluate_variants(variants: list[Variant], ld: Loaded, cfg: RunConfig, built: dict, threads: int,
                      out_dir: Path, stages: Stages) -> None:
    """Build (or reuse from `built`), check kernels, evaluate every variant, then compare each with the references
    it names. A peer or optional variant that fails is marked failed (build None); any other failure is raised."""
    logits: dict[str, np.ndarray] = {}
    for v in variants:
        if v.build is None:
            continue
        try:
            if v.name not in built:
                with stages.time(f"compile: {v.name}"):
                    built[v.name] = v.build(threads)
            runner = built[v.name]
            if v.measured:
                record_kernels(v.record, runner.kernels(), cfg.allow_no_int8)
            if cfg.bench_only:  # not evaluated: one call so that a failing engine shows before timing
                runner(synthetic_inputs(cfg.bench.shapes[0], ld.model.config.vocab_size, ld.input_names))
                continue
            with stages.time(f"evaluate: {v.name}"):
                logits[v.name] = predict_logits(runner, ld.val_features, cfg.batch_size, ld.pad_id,
                                                f"evaluating {v.name}", v.pad_to)
            v.record["metrics"] = evaluate(logits[v.name], ld.val_labels, ld.task.metrics, ld.task.num_labels)
        except Exception as e:  # noqa: BLE001 - a peer or optional engine never takes the run down
            if v.required:
                raise
            mark_failed(v.record, e)
            v.build = None
            built.pop(v.name, None)
    references = {v.reference: logits[v.name] for v in variants if v.reference and v.name in logits}
    for v in variants:
        for ref in v.compare if v.name in logits else ():
            v.record[f"agreement_with_{ref}"] = argmax_agreement(logits[v.name], references[ref])
        if v.host_check and v.name in logits:
            write_host_check(ld, references["fakequant"], logits[v.name], v.name, out_dir)


def record_kernels(record: dict, evidence: KernelEvidence, allow_no_int8: bool) -> None:
    """Put the engine's kernel evidence on the record; an int8 variant without int8 kernels fails (or, allowed,
    is noted as such)."""
    record.update(int8_kernels=evidence.int8, fp32_kernels=evidence.fp32, other_kernels=evidence.other,
                  kernel_details=evidence.details)
    if record["precision"].startswith("int8") and evidence.int8 == 0:
        if not allow_no_int8:
            raise RuntimeError(f"{record['engine']} ran {record['name']} without any int8 kernel ({evidence.details}); "
                               "refusing to report it as int8 (pass --allow-no-int8 to report it as such)")
        record["note"] = "NO int8 kernels ran: the engine executed this model in floating point"


def choose_engine(q: Quantizer, ld: Loaded, cfg: RunConfig, calib: list[dict], forms: ModelForms,
                  threads: int, work_threads: int, stages: Stages) -> Selection:
    """--backend auto, checked on held-out train sentences (the calibration sentences when too few are left):
    validation is never used for choices. Candidates are timed at `threads`; the fake-quant reference, untimed,
    runs on `work_threads`.

    The fake-quant reference stays the eager graph, scored only on the sentences the stopping rule asks for
    (selection.py). ONNX Runtime running the QDQ ONNX with graph optimizations off (QuantizeLinear/DequantizeLinear
    as float ops) was measured as a faster stand-in and rejected: on the default model it disagreed with the eager
    graph on 5 of the 2,000 pool sentences and 2 of the 1,000 validation ones (largest logit difference 0.085;
    its float results differ in the last bits (other GEMM kernels; QuantizeLinear divides by the scale where torch
    multiplies by its inverse), and a value on a rounding boundary then lands one grid step apart), as far from the
    reference as the int8 engines it would judge, for a 1.3x (128 tokens) to 1.9x (8x512) speed-up."""
    with stages.time("auto check: data"):
        n_calib = sum(int(b["input_ids"].shape[0]) for b in calib)
        n = min(POOL_SIZE, max(0, len(ld.task.train) - n_calib))
        pool, kind = split_train(ld.task, n_calib, n)[1], "held-out train sentences"
        if n < MIN_POOL:
            pool, kind = split_train(ld.task, POOL_SIZE, 0)[0], "calibration sentences"
        features = encode(ld.tokenizer, pool, cfg.max_seq_len)
    reference = TorchRunner(q.quantize(), ld.input_names, work_threads)
    sel = select_engine(forms, reference, FAKEQUANT, features, f"{len(features)} {kind}", cfg.batch_size,
                        ld.pad_id, ld.input_names, ld.model.config.vocab_size, cfg.bench.shapes[0], threads, stages,
                        work_threads)
    print(f"--backend auto: {sel.record['chosen']} ({sel.record['reason']})")
    return sel


def auto_fallback(q: Quantizer, ld: Loaded, cfg: RunConfig, calib: list[dict], holdout_size: int = 1000) -> float:
    """Leave the fewest, most sensitive layers in fp32 until the fake-quant drop on a held-out slice of the
    train split is within cfg.max_accuracy_drop points of the task's first metric (validation is never used).
    Returns the holdout drop reached; the chosen layers are in q.fallback_layers."""
    _, holdout = split_train(ld.task, len(calib) * cfg.batch_size, holdout_size)
    features = encode(ld.tokenizer, holdout, cfg.max_seq_len)
    labels = [e.label for e in holdout]
    metric = ld.task.metrics[0]

    def score(model) -> float:
        logits = predict_logits(TorchRunner(model, ld.input_names, 1), features, cfg.batch_size, ld.pad_id, desc="holdout")
        return 100 * evaluate(logits, labels, ld.task.metrics, ld.task.num_labels)[metric]

    baseline = score(ld.model)
    sensitivity = q.amp(calib[:4])
    for n in range(len(q.points) + 1):
        q.fallback(sensitivity, n)
        drop = baseline - score(q.quantize())
        print(f"auto-fallback: {n} layer(s) in fp32, holdout {metric} drop {drop:.2f} pt")
        if drop <= cfg.max_accuracy_drop:
            break
    return round(drop, 3)


def build_peers(ld: Loaded, fp32_onnx: Path, calib: list[dict], out_dir: Path, stages: Stages) -> list[Variant]:
    """NNCF int8 and OpenVINO bf16 (when OpenVINO is installed), ORT dynamic int8, PyTorch dynamic int8, each
    made under its stage "peers: <name>" (NNCF's is its quantize time).

    A peer that cannot be built is kept as a failed variant (not built, evaluated or timed) with its reason."""
    import importlib.util

    makers: list[tuple[str, Callable[[], Peer]]] = []
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        makers += [(peers.NNCF, lambda: peers.nncf_int8(fp32_onnx, calib, out_dir)),
                   ("openvino-bf16", lambda: peers.openvino_bf16(fp32_onnx))]
    if importlib.util.find_spec("onnxruntime"):
        makers.append(("onnxruntime-dynamic-int8", lambda: peers.ort_dynamic_int8(fp32_onnx, out_dir)))
    makers.append(("pytorch-dynamic-int8", lambda: peers.pytorch_dynamic_int8(ld.model, ld.input_names)))
    found = []
    for name, make in makers:
        try:
            with stages.time(f"peers: {name}"):
                p = make()
        except Exception as e:  # noqa: BLE001 - a peer never takes the run down
            found.append(Variant(mark_failed({"name": name, "peer": True}, e), None))
            continue
        record = {"name": p.name, "engine": p.engine, "precision": p.precision, "peer": True}
        found.append(Variant(record | ({"note": p.note} if p.note else {}), p.build, op_times=p.op_times))
    return found


def mark_failed(record: dict, e: Exception) -> dict:
    """Record a peer's or optional engine's failure on its report entry: status and a one-line reason."""
    record.update(status="failed", error=one_line(e))
    for key in ("metrics", "agreement_with_fp32", "agreement_with_fakequant"):  # partial results are not results
        record.pop(key, None)
    return record


def calibrate(ld: Loaded, cfg: RunConfig, data: list[dict], stages: Stages | None = None) -> tuple[Quantizer, dict]:
    """PTQ on train batches (never validation), then the optional auto-fallback and QAT steps, each a stage.

    Returns the quantizer and what the optional steps did (for the report)."""
    stages = stages or Stages()
    try:
        config = QuantConfig.for_device(cfg.device, isa=cfg.isa, attention_matmuls=int8_attention(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.calib_method:
        config = config.with_calib_method(cfg.calib_method)
    steps: dict = {}
    if cfg.smoothquant is not None:
        # In place on the float model: its outputs do not change, only where the range sits.
        with stages.time("calibrate: smoothquant"):
            steps["smoothed"] = smooth(ld.model, collect_input_absmax(ld.model, data), cfg.smoothquant)
    with stages.time("capture"):
        q = Quantizer(device=cfg.device, config=config)
        calib_model = q.calib(ld.model, ld.input_names, weights_changed=bool(steps.get("smoothed")))
        obstacle = q.attention_obstacle(ld.model) if config.attention_matmuls and cfg.int8_attention == "auto" else ""
        if obstacle:
            steps["int8_attention"] = f"off: {obstacle}"
            print(f"warning: int8 attention off (float attention): {obstacle}", file=sys.stderr)
            q = Quantizer(device=cfg.device, config=replace(config, attention_matmuls=False))
            calib_model = q.calib(ld.model, ld.input_names, weights_changed=bool(steps.get("smoothed")))
    steps["capture"] = q.captured_how
    one_pass = (config.smooth_alpha is not None and config.activation.ch_axis is None
                and not METHODS[config.activation.method].histogram)
    if config.smooth_alpha is not None and not one_pass:  # histogram ranges: smoothing statistics first
        with stages.time("calibrate: runtime smoothing statistics"):
            absmax = collect_input_absmax(ld.model, data)
            steps["runtime_smoothed"] = len(smooth_runtime(q, absmax, config.smooth_alpha))
    with stages.time("calibrate: observers"):
        if one_pass:  # the contract's runtime smoothing, its statistics gathered in the same pass as the ranges
            track_linear_inputs(q, ld.model)
        run_calibration(calib_model, data, total=len(data))
        if one_pass:
            steps["runtime_smoothed"] = len(smooth_runtime(q, linear_input_absmax(q), config.smooth_alpha))
        q.quantize()
    if cfg.max_accuracy_drop is not None:
        with stages.time("fallback"):
            steps["holdout_drop"] = auto_fallback(q, ld, cfg, data, cfg.fallback_holdout)
    if cfg.qat_epochs:
        with stages.time("qat"):
            steps["qat_steps"] = train_qat(q, ld.task, ld.tokenizer, QATConfig(
                epochs=cfg.qat_epochs, batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len))
    return q, steps


def int8_attention(cfg: RunConfig) -> bool:
    """Whether to quantize the attention matmuls: --int8-attention on/off, else (auto) the forced engine's
    preference (Engine.int8_attention), AUTO_INT8_ATTENTION under --backend auto. Auto is off on aarch64 (its
    contract was checked on ARM without it) and on x86 without VNNI (measured only on a VNNI CPU; there the
    engines' int8 kernels saturate or are slower than fp32, see docs/isa.md)."""
    if cfg.int8_attention not in INT8_ATTENTION:
        raise UserError(f"--int8-attention must be one of {', '.join(INT8_ATTENTION)}, not {cfg.int8_attention!r}")
    if cfg.int8_attention != "auto":
        return cfg.int8_attention == "on"
    if cfg.device != "x86" or (cfg.isa or host_int8_isa()) in SATURATING_ISAS:
        return False
    return AUTO_INT8_ATTENTION if cfg.backend == "auto" else get_backend(cfg.backend).int8_attention


def export_artifacts(model, converted, input_names: tuple[str, ...], out_dir: Path,
                     stages: Stages | None = None) -> dict[str, Path]:
    """fp32 ONNX, int8 QDQ ONNX and int8 TorchScript (from the converted model), each written atomically and timed
    as its own stage."""
    stages = stages or Stages()
    example = _export_example(model, input_names)
    layout = artifacts.Layout(out_dir)
    with stages.time("export: fp32 onnx"):
        fp32 = export_fp32(model, input_names, layout.fp32_onnx)
    with stages.time("export: int8 onnx"):
        int8 = export_onnx(converted, input_names, example, layout.int8_onnx)
    with stages.time("export: int8 torchscript"):
        script = export_torchscript(converted, input_names, example, layout.int8_torchscript)
    return {"fp32_onnx": fp32, "int8_onnx": int8, "int8_torchscript": script}


def write_runtime_files(ld: Loaded, cfg: RunConfig, out_dir: Path) -> None:
    """What predict.py needs beside the int8 ONNX on a torch-free target: tokenizer/ and runtime.json."""
    layout = artifacts.Layout(out_dir)
    with artifacts.atomic_dir(layout.tokenizer_dir) as tmp:
        ld.tokenizer.save_pretrained(str(tmp))
    num_labels = ld.model.config.num_labels
    rc = runtime.RuntimeConfig(
        model_file=layout.int8_onnx.name, input_names=ld.input_names, max_seq_len=cfg.max_seq_len, pad_id=ld.pad_id,
        id2label={} if num_labels == 1 else {int(k): str(v) for k, v in ld.model.config.id2label.items()},
        text_pairs=any(e.text_pair is not None for e in ld.task.validation))
    artifacts.write_json(layout.runtime_json, rc.to_dict())


def write_host_check(ld: Loaded, fq_logits: np.ndarray, int8_logits: np.ndarray, engine: str, out_dir: Path,
                     n: int = 200) -> None:
    """The first n validation sentences with the host's fake-quant logits and int8 engine labels, so that a
    target can check itself against the host (predict.py --check)."""
    examples = [{"text": e.text, "text_pair": e.text_pair, "fakequant_logits": [float(x) for x in fq],
                 "int8_label": int(i8.argmax())}
                for e, fq, i8 in zip(ld.task.validation[:n], fq_logits, int8_logits)]
    artifacts.write_json(artifacts.Layout(out_dir).host_check, {"int8_engine": engine, "examples": examples})


def _export_example(model, input_names: tuple[str, ...]) -> dict:
    seq_len = min(128, int(getattr(model.config, "max_position_embeddings", 128) or 128))
    return example_inputs(model, input_names, batch=1, seq_len=seq_len)


def export_fp32(model, input_names: tuple[str, ...], path: Path) -> Path:
    """The float model as ONNX (dynamic batch and sequence), written atomically."""
    return export_onnx(model, input_names, _export_example(model, input_names), path)


def export_int8(model, q: Quantizer, input_names: tuple[str, ...], path: Path) -> Path:
    """Only the QDQ ONNX (what the engines compile), written atomically."""
    return export_onnx(q.convert(model), input_names, _export_example(model, input_names), path)


def measure_latency(builders: dict, ld: Loaded, bench: BenchConfig,
                    profilers: dict[str, OpTimes] | None = None) -> dict[str, dict[str, list[dict]]]:
    """Per thread count, build every variant's runner; per shape, time them interleaved, then, for the variants
    in `profilers`, take the engine's profiler split (bench.profile_calls calls; none when 0).

    Returns name -> {"latency_ms": [...], "profile": [...]} (profile only for profiled variants). A profiler that
    fails leaves its one-line reason in "profile_error" and never takes the run down."""
    vocab = ld.model.config.vocab_size
    profilers = profilers if bench.profile_calls else {}
    out: dict[str, dict[str, list]] = {name: {"latency_ms": []} | ({"profile": []} if name in profilers else {})
                                       for name in builders}
    for threads in bench.threads:
        runners = {name: build(threads) for name, build in builders.items()}
        for shape in bench.shapes:
            inputs = synthetic_inputs(shape, vocab, ld.input_names)
            for name, samples in time_interleaved(runners, inputs, bench, bench.settle_s if threads > 1 else 0.0).items():
                out[name]["latency_ms"].append(summarize(samples, shape, threads))
            for name, op_times in profilers.items():
                if "profile_error" in out[name]:
                    continue
                try:
                    cell = profile_cell(op_times, runners[name], inputs, shape, threads, bench.profile_calls)
                except Exception as e:  # noqa: BLE001 - a profiler never takes the run down
                    out[name]["profile_error"] = one_line(e)
                    continue
                out[name]["profile"].append(cell)
                print(format_profile(name, cell))
    return out


def measure_limit(engine: Engine, int8_onnx: Path, records: list[dict], config, threads: tuple[int, ...]) -> dict:
    """The engine's int8 GEMM peak per thread count, and each profiled int8 variant on that engine as a share of
    it (roofline.limit_row). A failed micro-benchmark is reported with its reason, never raised."""
    if roofline.gemm_macs(config, 1, 2) is None:
        return {"engine": engine.name, "status": "failed",
                "error": f"no GEMM MAC formula for model type {getattr(config, 'model_type', '?')}"}
    try:
        act = roofline.activation_dtype(int8_onnx)
        peaks = {t: roofline.int8_peak(engine, t, act) for t in threads}
    except Exception as e:  # noqa: BLE001 - the limit is evidence, not the product
        return {"engine": engine.name, "status": "failed", "error": one_line(e)}
    rows = [{"name": r["name"], "batch": c["batch"], "seq_len": c["seq_len"], "threads": c["threads"],
             **roofline.limit_row(roofline.gemm_macs(config, c["batch"], c["seq_len"]), c,
                                  peaks[c["threads"]]["peak_gmac_s"])}
            for r in records if r.get("engine") == engine.name and r.get("precision", "").startswith("int8")
            for c in r.get("profile", []) if c["threads"] in peaks]
    for row in rows:
        print(f"{row['name']} {row['batch']}x{row['seq_len']}/{row['threads']}t: GEMMs {row['gemm_gmac_s']} GMAC/s = "
              f"{row['gemm_share_of_peak']:.0%} of the measured int8 peak {peaks[row['threads']]['peak_gmac_s']} GMAC/s")
    return {"engine": engine.name, "activations": act, "peaks": list(peaks.values()), "rows": rows}


def config_from_args(args) -> RunConfig:
    """argparse namespace -> RunConfig; flags a CLI does not have keep RunConfig's defaults (declared once there).
    Bad flag values become UserError."""
    from .bench import bench_config

    given = vars(args)
    default = RunConfig()
    try:
        bench = bench_config(given.get("shapes"), given.get("threads"), given.get("rounds"), given.get("profile_calls"))
    except ValueError as e:
        raise UserError(str(e)) from None
    names = {f.name for f in fields(RunConfig)} - {"bench", "text_columns", "isa"}
    return replace(default, bench=bench, **{k: v for k, v in given.items() if k in names},
                   text_columns=tuple(args.text_columns.split(",")) if given.get("text_columns") else None,
                   isa=None if given.get("isa", "auto") == "auto" else args.isa)


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
    write_runtime_files(ld, cfg, out_dir)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


def check_backend_name(backend: str) -> None:
    """Fail early on a bad --backend, before the model is loaded."""
    if backend == "auto":
        if not installed_engines():
            raise UserError("--backend auto needs openvino or onnxruntime: pip install -r requirements.txt")
    else:
        get_backend(backend)


def _qparams_summary(scale, zero_point) -> dict:
    s = scale.flatten()
    return {"scale_min": float(s.min()), "scale_max": float(s.max()), "channels": int(s.numel()),
            "zero_point_max_abs": int(zero_point.abs().max())}


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
    builders = {"pytorch-fp32": lambda t: TorchRunner(ld.model, ld.input_names, t)}
    profilers: dict[str, OpTimes] = {"pytorch-fp32": eager_profiler(ld.model, ld.input_names)}
    for engine in engines:
        for precision, path in paths.items():
            name = f"{engine.name}-{precision}"
            records[name] = {"name": name, "engine": engine.name, "precision": precision}
            builders[name] = lambda t, e=engine, p=path, pr=precision: e.compile(p, t, pr)
            if engine.profiled:
                profilers[name] = engine.profiler(path, precision)
    for name, measured in measure_latency(builders, ld, cfg.bench, profilers=profilers).items():
        records[name].update(measured)
    rep = report.build(cfg.device, ld.model_name, ld.task.name, 0, list(records.values()), cfg.bench)
    if cfg.bench.profile_calls:
        rep["limits"] = [measure_limit(e, paths["int8"], rep["variants"], ld.model.config, cfg.bench.threads)
                         for e in engines if e.profiled]
    artifacts.write_json(layout.bench_json, rep)
    print(report.summary(rep))
    return rep
