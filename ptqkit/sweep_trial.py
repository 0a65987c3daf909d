"""One recipe of a sweep, built and scored where Ray puts it (a worker, or the driver for the final round): the
payload every trial shares, then calibrate, export, compile and score on the train holdout."""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ray
from ray import tune

from . import artifacts
from .backends import get_backend
from .bench import BenchConfig, Shape, summarize, synthetic_inputs, time_interleaved
from .config import RunConfig
from .data import TaskData, calibration_batches, encode, train_holdout
from .errors import one_line
from .evaluation import evaluate, predict_logits
from .export import export_int8
from .loading import Loaded, feed_inputs
from .models import load_model
from .recipe import calibrate
from .sweep_grid import Recipe


@dataclass
class Payload:
    """What every trial needs, put once into Ray's object store. Validation is never in it."""

    model_files: dict[str, bytes]
    model_name: str
    task: TaskData
    fp32_holdout: list[int]  # fp32 argmax on the holdout, for agreement
    fp32_score: float  # fp32 holdout metric (points)
    run: RunConfig
    holdout: int
    shape: Shape
    rounds: int


def materialize(payload: Payload, work_dir: Path) -> Loaded:
    """A fresh model (SmoothQuant changes weights in place) and tokenizer from the payload's files."""
    model_dir = work_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, data in payload.model_files.items():
        (model_dir / name).write_bytes(data)
    model, tokenizer, _ = load_model(str(model_dir), payload.task)
    return Loaded(payload.task, model, tokenizer, payload.model_name, feed_inputs(model, tokenizer), [], [])


def build_recipe(recipe: Recipe, payload: Payload, work_dir: Path, threads: int):
    """Calibrate (train batches only), export the QDQ ONNX and compile int8 on the recipe's engine.

    Returns (Loaded, int8 runner, what the calibration steps did)."""
    import torch

    torch.set_num_threads(threads)
    cfg = replace(payload.run, backend=recipe.backend, calib_method=recipe.calib_method, smoothquant=recipe.smoothquant,
                  max_accuracy_drop=recipe.max_accuracy_drop, weight_rounding=recipe.weight_rounding,
                  fallback_holdout=payload.holdout)
    backend = get_backend(recipe.backend)
    ld = materialize(payload, work_dir)
    calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    q, steps = calibrate(ld, cfg, calib)
    path = export_int8(ld.model, q, ld.input_names, artifacts.Layout(work_dir).int8_onnx)
    runner = backend.compile(path, threads, "int8")
    steps["fallback_layers"] = len(q.fallback_layers)
    return ld, runner, steps


def score_recipe(recipe: Recipe, payload: Payload, threads: int) -> dict:
    """The trial's work: build the recipe, score it on the train holdout, and a short latency figure."""
    work_dir = Path(tempfile.mkdtemp(prefix="ptqkit-recipe-"))
    try:
        ld, runner, steps = build_recipe(recipe, payload, work_dir, threads)
        evidence = runner.kernels()
        if evidence.int8 == 0:
            raise RuntimeError(f"{recipe.backend} ran the int8 model without any int8 kernel ({evidence.details})")
        holdout = train_holdout(ld.task, payload.holdout)
        logits = predict_logits(runner, encode(ld.tokenizer, holdout, payload.run.max_seq_len), payload.run.batch_size,
                                ld.pad_id, desc="holdout")
        metrics = evaluate(logits, [e.label for e in holdout], ld.task.metrics, ld.task.num_labels)
        score = 100 * metrics[ld.task.metrics[0]]
        shape = timing_shape(ld.model, payload.shape)
        inputs = synthetic_inputs(shape, ld.model.config.vocab_size, ld.input_names)
        samples = time_interleaved({"int8": runner}, inputs, BenchConfig(warmup=3, rounds=max(3, payload.rounds // 3)))
        return {"status": "ok", "holdout": {
            **metrics, "drop_pt": round(payload.fp32_score - score, 3),
            "agreement_with_fp32": round(float((logits.argmax(-1) == np.asarray(payload.fp32_holdout)).mean()), 4),
            "latency_ms": summarize(samples["int8"], shape, threads)["median"], "threads": threads,
            "int8_kernels": evidence.int8, **steps}}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_recipe(config: dict, payload: Payload | None = None) -> None:
    """Tune trainable (tune.with_parameters resolves the payload's object-store reference before the call).

    A recipe that fails (bad input, an engine refusing it) reports its one-line error and ends normally, so Tune
    neither retries it nor stops the others; a worker that dies is retried by Tune (FailureConfig)."""
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    try:
        result = score_recipe(Recipe(**config["recipe"]), payload, threads)
    except Exception as e:  # noqa: BLE001 - reported as this recipe's failure, never the sweep's
        result = {"status": "failed", "error": one_line(e)}
    tune.report(result)


def timing_shape(model, shape: Shape) -> Shape:
    """The latency shape, its sequence cut to the model's positions (small models have fewer than 128)."""
    return Shape(shape.batch, min(shape.seq_len, int(getattr(model.config, "max_position_embeddings", shape.seq_len))))
