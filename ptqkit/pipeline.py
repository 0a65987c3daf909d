"""The whole chain behind bert_ptq.py: data, model, fp32 baseline, evaluation, timing, report."""
from __future__ import annotations

import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from . import artifacts, peers, report
from .backends import get_backend
from .backends.pytorch import TorchRunner
from .bench import BenchConfig, synthetic_inputs, summarize, time_interleaved
from .capture import example_inputs
from .config import QuantConfig
from .data import TaskData, calibration_batches, encode, load_task, train_holdout
from .errors import UserError
from .evaluation import evaluate, predict_logits
from .export import export_onnx, export_torchscript, fakequant_eager
from .models import load_model
from .peers import Peer
from .qat import QATConfig, train_qat
from .smoothquant import collect_input_absmax, smooth
from .quantizer import Quantizer, run_calibration


@dataclass
class RunConfig:
    device: str = "x86"
    model: str = "default"
    task: str = "rotten_tomatoes"
    data_dir: str | None = None
    train_file: str | None = None
    validation_file: str | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    output_dir: str = "artifacts"
    cache_dir: str | None = None
    eval_limit: int | None = None
    batch_size: int = 32
    max_seq_len: int = 128
    backend: str = "openvino"
    calib_batches: int = 32
    calib_method: str | None = None  # None: the device's measured default (config.DEFAULT_CALIB_METHOD)
    skip_peers: bool = False
    bench_only: bool = False  # skip evaluation: build, check kernels and time only
    max_accuracy_drop: float | None = None  # points of the task metric; enables auto-fallback
    fallback_holdout: int = 1000  # size of the train holdout that auto-fallback scores on
    qat_epochs: float = 0.0
    smoothquant: float | None = None  # SmoothQuant alpha; None = off (measured: no reliable gain on MiniLM)
    allow_no_int8: bool = False  # report an int8 model that ran without int8 kernels instead of failing
    bench: BenchConfig = field(default_factory=BenchConfig)


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
    from .data import check_labels

    task = load_task(cfg.task, cfg.data_dir, cfg.train_file, cfg.validation_file, cfg.text_columns, cfg.label_column)
    model, tokenizer, name = load_model(cfg.model, task, cfg.cache_dir)
    check_labels(task, model.config.num_labels)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise UserError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's {max_pos} positions; use <= {max_pos}")
    val = task.validation[: cfg.eval_limit] if cfg.eval_limit else task.validation
    features = encode(tokenizer, val, cfg.max_seq_len)
    input_names = tuple(k for k in ("input_ids", "attention_mask", "token_type_ids") if k in features[0])
    return Loaded(task, model, tokenizer, name, input_names, features, [e.label for e in val])


@dataclass
class Variant:
    """One model type in the report: its record (name, engine, precision, ...) and how to build a runner."""

    record: dict
    build: Callable[[int], object]  # threads -> runner


def run(cfg: RunConfig) -> dict:
    """fp32 baseline, PTQ, export, compile on the engine, peers, evaluate and time every variant, report."""
    backend = get_backend(cfg.backend)
    ld = load(cfg)
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    threads = cfg.bench.threads[0]
    calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    q, steps = calibrate(ld, cfg, calib)
    q.save(out_dir / "quant_state")
    paths = export_artifacts(ld.model, q, ld.input_names, out_dir)

    ours_int8 = f"{backend.name}-int8"
    if backend.name == "inductor":  # compiles torch modules, not files
        fq_eager = fakequant_eager(ld.model, q)
        build_fp32 = lambda t: backend.compile_module(ld.model, ld.input_names, t, "fp32")  # noqa: E731
        build_int8 = lambda t: backend.compile_module(fq_eager, ld.input_names, t, "int8")  # noqa: E731
    else:
        build_fp32 = lambda t: backend.compile(paths["fp32_onnx"], t, "fp32")  # noqa: E731
        build_int8 = lambda t: backend.compile(paths["int8_onnx"], t, "int8")  # noqa: E731
    variants = [
        Variant({"name": "pytorch-fp32", "engine": "pytorch", "precision": "fp32"}, lambda t: TorchRunner(ld.model, ld.input_names, t)),
        Variant({"name": f"{backend.name}-fp32", "engine": backend.name, "precision": "fp32"}, build_fp32),
        Variant({"name": ours_int8, "engine": backend.name, "precision": "int8"}, build_int8),
    ]
    if backend.name == "openvino":
        variants.append(Variant({"name": f"{ours_int8}-bf16", "engine": backend.name, "precision": "int8-bf16",
                                 "note": "our int8 model, ops outside int8 in bf16 (engine default hint)"},
                                lambda t: backend.compile(paths["int8_onnx"], t, "int8-bf16")))
    if not cfg.skip_peers:
        variants += [Variant({"name": p.name, "engine": p.engine, "precision": p.precision, "peer": True}, p.build)
                     for p in build_peers(ld, paths["fp32_onnx"], calib, out_dir)]

    fq_logits = None
    if not cfg.bench_only:
        fq_runner = TorchRunner(q.quantize(), ld.input_names, threads)
        fq_logits = predict_logits(fq_runner, ld.val_features, cfg.batch_size, ld.pad_id, desc="evaluating pytorch-fakequant")
        variants.insert(1, Variant({"name": "pytorch-fakequant", "engine": "pytorch", "precision": "int8-fakequant",
                                    "note": "reference fake-quant graph (fp32 math); not timed",
                                    "metrics": evaluate(fq_logits, ld.val_labels, ld.task.metrics, ld.task.num_labels)}, None))
    built: dict = {}  # evaluated runners, reused for timing at the first thread count
    for v in variants:
        if v.build is None:
            continue
        runner = built[v.record["name"]] = v.build(threads)
        evidence = runner.kernels()
        v.record.update(int8_kernels=evidence.int8, fp32_kernels=evidence.fp32, other_kernels=evidence.other, kernel_details=evidence.details)
        if v.record["precision"].startswith("int8") and evidence.int8 == 0:
            if not cfg.allow_no_int8:
                raise RuntimeError(f"{v.record['engine']} ran {v.record['name']} without any int8 kernel ({evidence.details}); "
                                   "refusing to report it as int8 (pass --allow-no-int8 to report it as such)")
            v.record["note"] = "NO int8 kernels ran: the engine executed this model in floating point"
        if cfg.bench_only:
            continue
        # Inductor compiles one graph per shape: evaluate it on batches padded to one length.
        pad_to = cfg.max_seq_len if v.record["engine"] == "inductor" else None
        logits = predict_logits(runner, ld.val_features, cfg.batch_size, ld.pad_id, f"evaluating {v.record['name']}", pad_to)
        v.record["metrics"] = evaluate(logits, ld.val_labels, ld.task.metrics, ld.task.num_labels)
        if v.record["name"] == "pytorch-fp32":  # evaluated first: the reference for every other variant
            fp32_logits = logits
        else:
            v.record["agreement_with_fp32"] = argmax_agreement(logits, fp32_logits)
        if v.record["name"].startswith(ours_int8):
            v.record["agreement_with_fakequant"] = argmax_agreement(logits, fq_logits)
    if fq_logits is not None:
        variants[1].record["agreement_with_fp32"] = argmax_agreement(fq_logits, fp32_logits)

    latency = measure_latency({v.record["name"]: v.build for v in variants if v.build is not None}, ld, cfg.bench, built)
    for v in variants:
        if v.record["name"] in latency:
            v.record["latency_ms"] = latency[v.record["name"]]
    rep = report.build(cfg.device, ld.model_name, ld.task.name, 0 if cfg.bench_only else len(ld.val_labels),
                       [v.record for v in variants], cfg.bench)
    rep["quantization"] = {"config": q.config.to_dict(), "points": len(q.points), "fallback": q.fallback_layers,
                           "calib_batches": len(calib), "max_accuracy_drop": cfg.max_accuracy_drop,
                           "qat_epochs": cfg.qat_epochs, "smoothquant": cfg.smoothquant, **steps}
    rep["artifacts"] = {k: str(v) for k, v in paths.items()} | {"quant_state": str(out_dir / "quant_state")}
    if cfg.device == "aarch64" and platform.machine() not in ("aarch64", "arm64"):
        rep["note"] = "aarch64 contract built and run on an x86 host as a functional check: these timings are not ARM timings"
    written = report.write(rep, out_dir)
    print(report.summary(rep))
    for path in written:
        print(f"wrote {path}")
    return rep


def auto_fallback(q: Quantizer, ld: Loaded, cfg: RunConfig, calib: list[dict], holdout_size: int = 1000) -> float:
    """Leave the fewest, most sensitive layers in fp32 until the fake-quant drop on a held-out slice of the
    train split is within cfg.max_accuracy_drop points of the task's first metric (validation is never used).
    Returns the holdout drop reached; the chosen layers are in q.fallback_layers."""
    holdout = train_holdout(ld.task, holdout_size)
    if len(ld.task.train) - holdout_size < len(calib) * cfg.batch_size:
        raise UserError(f"train split too small for a {holdout_size}-example holdout beside the calibration batches")
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


def build_peers(ld: Loaded, fp32_onnx: Path, calib: list[dict], out_dir: Path) -> list[Peer]:
    """NNCF int8 and OpenVINO bf16 (when OpenVINO is installed), ORT dynamic int8, PyTorch dynamic int8."""
    import importlib.util

    found = []
    if importlib.util.find_spec("openvino") and importlib.util.find_spec("nncf"):
        found += [peers.nncf_int8(fp32_onnx, calib, out_dir), peers.openvino_bf16(fp32_onnx)]
    if importlib.util.find_spec("onnxruntime"):
        found.append(peers.ort_dynamic_int8(fp32_onnx, out_dir))
    found.append(peers.pytorch_dynamic_int8(ld.model, ld.input_names))
    return found


def calibrate(ld: Loaded, cfg: RunConfig, data: list[dict]) -> tuple[Quantizer, dict]:
    """PTQ on train batches (never validation), then the optional auto-fallback and QAT steps.

    Returns the quantizer and what the optional steps did (for the report)."""
    config = QuantConfig.for_device(cfg.device)
    if cfg.calib_method:
        config = config.with_calib_method(cfg.calib_method)
    steps: dict = {}
    if cfg.smoothquant is not None:
        # In place on the float model: its outputs do not change, only where the range sits.
        steps["smoothed"] = smooth(ld.model, collect_input_absmax(ld.model, data), cfg.smoothquant)
    q = Quantizer(device=cfg.device, backend=cfg.backend, config=config)
    calib_model = q.calib(ld.model)
    q.weights_changed = bool(steps.get("smoothed"))  # the state must carry the smoothed weights
    run_calibration(calib_model, data, total=len(data))
    q.quantize()
    if cfg.max_accuracy_drop is not None:
        steps["holdout_drop"] = auto_fallback(q, ld, cfg, data, cfg.fallback_holdout)
    if cfg.qat_epochs:
        steps["qat_steps"] = train_qat(q, ld.task, ld.tokenizer, QATConfig(epochs=cfg.qat_epochs, batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len))
    return q, steps


def export_artifacts(model, q: Quantizer, input_names: tuple[str, ...], out_dir: Path) -> dict[str, Path]:
    """fp32 ONNX, int8 QDQ ONNX and int8 TorchScript, each written atomically."""
    example = _export_example(model, input_names)
    fq_model = fakequant_eager(model, q)
    return {
        "fp32_onnx": export_fp32(model, input_names, out_dir / "model_fp32.onnx"),
        "int8_onnx": export_onnx(fq_model, input_names, example, out_dir / "model_int8_qdq.onnx"),
        "int8_torchscript": export_torchscript(fq_model, input_names, example, out_dir / "model_int8_fakequant.pt"),
    }


def _export_example(model, input_names: tuple[str, ...]) -> dict:
    seq_len = min(128, int(getattr(model.config, "max_position_embeddings", 128) or 128))
    return example_inputs(model, input_names, batch=1, seq_len=seq_len)


def export_fp32(model, input_names: tuple[str, ...], path: Path) -> Path:
    """The float model as ONNX (dynamic batch and sequence), written atomically."""
    return export_onnx(model, input_names, _export_example(model, input_names), path)


def export_int8(model, q: Quantizer, input_names: tuple[str, ...], path: Path) -> Path:
    """Only the QDQ ONNX (what the engines compile), written atomically."""
    return export_onnx(fakequant_eager(model, q), input_names, _export_example(model, input_names), path)


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return round(float((a.argmax(-1) == b.argmax(-1)).mean()), 4)


def measure_latency(builders: dict, ld: Loaded, bench: BenchConfig, built: dict | None = None) -> dict[str, list[dict]]:
    """Per shape and thread count, build every variant's runner and time them interleaved.

    `built`: runners already compiled for the first thread count (by evaluation), reused instead of recompiled."""
    vocab = ld.model.config.vocab_size
    out: dict[str, list[dict]] = {name: [] for name in builders}
    for threads in bench.threads:
        reuse = built if built is not None and threads == bench.threads[0] else {}
        runners = {name: reuse.get(name) or build(threads) for name, build in builders.items()}
        for shape in bench.shapes:
            inputs = synthetic_inputs(shape, vocab, ld.input_names)
            for name, samples in time_interleaved(runners, inputs, bench).items():
                out[name].append(summarize(samples, shape, threads))
    return out


def config_from_args(args) -> RunConfig:
    """argparse namespace -> RunConfig; bad flag values become UserError."""
    from .bench import parse_shapes, parse_threads

    try:
        bench = BenchConfig(shapes=parse_shapes(getattr(args, "shapes", "1x128,6x64")),
                            threads=parse_threads(getattr(args, "threads", None)), rounds=getattr(args, "rounds", 30))
    except ValueError as e:
        raise UserError(str(e)) from None
    return RunConfig(
        device=args.device, model=args.model, task=args.task, data_dir=args.data_dir,
        train_file=args.train_file, validation_file=args.validation_file,
        text_columns=tuple(args.text_columns.split(",")) if args.text_columns else None,
        label_column=args.label_column, output_dir=args.output_dir, cache_dir=args.cache_dir,
        eval_limit=getattr(args, "eval_limit", None), batch_size=args.batch_size, max_seq_len=args.max_seq_len, bench=bench,
        backend=args.backend, calib_batches=getattr(args, "calib_batches", 32), calib_method=getattr(args, "calib_method", None),
        skip_peers=getattr(args, "skip_peers", False), bench_only=getattr(args, "bench_only", False),
        allow_no_int8=getattr(args, "allow_no_int8", False), max_accuracy_drop=getattr(args, "max_accuracy_drop", None),
        qat_epochs=getattr(args, "qat_epochs", 0.0), smoothquant=getattr(args, "smoothquant", None),
    )


def calib_step(cfg: RunConfig) -> Path:
    """calib.py: calibrate and save the quantization state plus a JSON summary of the qparams."""
    get_backend(cfg.backend)
    ld = load(cfg)
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    q, _ = calibrate(ld, cfg, calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len))
    state_dir = out_dir / "quant_state"
    q.save(state_dir)
    summary = {
        "model": ld.model_name, "task": ld.task.name, "device": cfg.device, "calib_batches": cfg.calib_batches,
        "config": q.config.to_dict(),
        "points": {p.name: {role: _qparams_summary(*q.qparams(p.name, role)) for role in p.roles} for p in q.points},
    }
    artifacts.write_json(out_dir / "calib_summary.json", summary)
    print(f"calibrated {len(q.points)} quantization points on {cfg.calib_batches} train batches; state: {state_dir}")
    return state_dir


def export_step(cfg: RunConfig) -> dict[str, Path]:
    """export.py: rebuild the fake-quant model from the saved state and write the artefacts."""
    get_backend(cfg.backend)
    ld = load(cfg)
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    q = Quantizer.load(out_dir / "quant_state", ld.model)
    paths = export_artifacts(ld.model, q, ld.input_names, out_dir)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return paths


def _qparams_summary(scale, zero_point) -> dict:
    s = scale.flatten()
    return {"scale_min": float(s.min()), "scale_max": float(s.max()), "channels": int(s.numel()),
            "zero_point_max_abs": int(zero_point.abs().max())}


def bench_step(cfg: RunConfig, backends: list[str]) -> dict:
    """bench.py: time PyTorch fp32 and each engine's fp32/int8 artefacts from --output-dir; write bench.json."""
    out_dir = artifacts.ensure_output_dir(cfg.output_dir)
    if "inductor" in backends:
        raise UserError("bench.py times exported files; Inductor compiles the model itself: use bert_ptq.py --backend inductor")
    engines = [get_backend(b) for b in backends]
    paths = {"fp32": out_dir / "model_fp32.onnx", "int8": out_dir / "model_int8_qdq.onnx"}
    for path in paths.values():
        if not path.is_file():
            raise UserError(f"{path} not found: run export.py (or bert_ptq.py) with --output-dir {out_dir} first")
    ld = load(replace(cfg, eval_limit=1))
    builders = {"pytorch-fp32": lambda t: TorchRunner(ld.model, ld.input_names, t)}
    for engine in engines:
        for precision, path in paths.items():
            builders[f"{engine.name}-{precision}"] = lambda t, e=engine, p=path, pr=precision: e.compile(p, t, pr)
    latency = measure_latency(builders, ld, cfg.bench)
    rows = [{"name": n, "latency_ms": lat} for n, lat in latency.items()]
    rep = report.build(cfg.device, ld.model_name, ld.task.name, 0, rows, cfg.bench)
    artifacts.write_json(out_dir / "bench.json", rep)
    print(report.summary(rep))
    return rep
