"""The public API, in the shape of nncf.quantize and torchao's quantize_: quantize a classifier on calibration
batches, export its artefact directory, compile that on an engine, evaluate and time what was compiled.

    qm = ptqkit.quantize(model, train_batches, RunConfig(device="x86"), tokenizer=tokenizer)
    qm.export("out")                                  # the files export.py writes
    int8 = ptqkit.compile("out", "onnxruntime")      # a Runner: numpy inputs -> logits
    ptqkit.evaluate(int8, val_batches, val_labels, reference=qm.reference())

docs/architecture.md ("Public API") has the whole example.

The CLIs run the same functions (recipe.calibrate, export.export_artifacts, runtime_files.write_runtime_files,
latency.measure_latency) with flags and a report around them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch

from . import artifacts
from .backends import FILE_ENGINES, get_backend
from .backends.base import ONNX, Runner
from .backends.pytorch import TorchRunner
from .bench import BenchConfig
from .capture import model_input_names
from .config import RunConfig
from .data import TaskData
from .errors import UserError
from .evaluation import argmax_agreement, evaluate as task_metrics
from .export import export_artifacts
from .latency import measure_latency
from .loading import Loaded, feed_inputs
from .quantizer import Quantizer
from .recipe import calibrate
from .runtime_files import write_runtime_files


@dataclass
class QuantizedModel:
    """A calibrated classifier: the float model (with SmoothQuant folded in, when the recipe asks for it), its
    quantization session, and what export writes beside the model files.

    steps: what the recipe's optional steps did (report.json "quantization"). tokenizer: when given, export also
    writes tokenizer/ and runtime.json, so that predict.py can run the directory without torch."""

    model: torch.nn.Module
    quantizer: Quantizer
    input_names: tuple[str, ...]
    steps: dict = field(default_factory=dict)
    tokenizer: object | None = None
    max_seq_len: int = RunConfig.max_seq_len
    text_pairs: bool = False

    def reference(self, threads: int = 1) -> Runner:
        """The fake-quant graph (fp32 math on int8 grids) as a Runner: what an int8 engine should compute."""
        return TorchRunner(self.quantizer.quantize(), self.input_names, threads)

    def convert(self) -> torch.nn.Module:
        """The eager model with each quantized nn.Linear a QuantLinear: what export and Inductor read."""
        return self.quantizer.convert(self.model)

    def export(self, out_dir: str | Path) -> dict[str, Path]:
        """Write the artefact directory as bert_ptq.py does (artifacts.Layout names the files): the quantization
        state, the fp32 and int8 QDQ ONNX, the fake-quant TorchScript and, with a tokenizer, tokenizer/ and
        runtime.json. Returns name -> path."""
        out = artifacts.ensure_output_dir(out_dir)
        layout = artifacts.Layout(out)
        self.quantizer.save(layout.quant_state)
        paths = export_artifacts(self.model, self.convert(), self.input_names, out)
        paths["quant_state"] = layout.quant_state
        if self.tokenizer is not None:
            write_runtime_files(out, self.tokenizer, self.model.config, self.input_names, self.max_seq_len,
                                self.text_pairs)
            paths.update(runtime_json=layout.runtime_json, tokenizer=layout.tokenizer_dir)
        return paths


def quantize(model: torch.nn.Module, calibration_data: Iterable[Mapping], recipe: RunConfig | None = None,
             tokenizer=None, text_pairs: bool = False) -> QuantizedModel:
    """Post-training int8 quantization of a HF sequence classifier, as bert_ptq.py does it.

    calibration_data: batches, each a mapping of the model's input names (input_ids, attention_mask, ...) to
    int64 tensors or arrays of shape (batch, seq_len); keys the model does not take are ignored. Use train data,
    never the data you evaluate on. recipe: the run's quantization fields (device, isa, calib_method,
    smoothquant, int8_attention, weight_rounding, backend; max_seq_len for runtime.json); None takes bert_ptq.py's defaults.
    Auto-fallback and QAT need the task's labelled train split: they run in bert_ptq.py and calib.py only.
    tokenizer: when given, the tokenizer is set to emit only the inputs the model takes and export writes it."""
    cfg = recipe or RunConfig()
    if cfg.max_accuracy_drop is not None or cfg.qat_epochs:
        raise UserError("auto-fallback (max_accuracy_drop) and QAT (qat_epochs) need the task's labelled train "
                        "split: run bert_ptq.py or calib.py for them")
    batches = [{k: torch.as_tensor(v) for k, v in b.items()} for b in calibration_data]
    if not batches:
        raise UserError("quantize needs at least one calibration batch")
    model.eval()
    names = feed_inputs(model, tokenizer) if tokenizer is not None else model_input_names(model, tuple(batches[0]))
    if "input_ids" not in names:
        raise UserError(f"the calibration batches hold {', '.join(batches[0])}; the model needs input_ids")
    batches = [{k: b[k] for k in names} for b in batches]
    task = TaskData("calibration data", [], [], model.config.num_labels, ("accuracy",))
    q, steps = calibrate(Loaded(task, model, tokenizer, type(model).__name__, names, [], []), cfg, batches)
    return QuantizedModel(model, q, names, steps, tokenizer, cfg.max_seq_len, text_pairs)


def compile(artefact_dir: str | Path, engine: str = FILE_ENGINES[0], precision: str | None = None,
            threads: int = 1) -> Runner:
    """Compile an exported artefact directory on an engine that reads files (openvino, onnxruntime).

    precision: one of the engine's int8 variants (default: its first, e.g. "int8"), or "fp32" for the float
    model. The Runner maps numpy inputs to logits; runner.kernels() counts the int8 kernels the engine ran."""
    eng = get_backend(engine)
    if eng.takes != ONNX:
        raise UserError(f"{engine} compiles the model itself, not exported files; use one of {', '.join(FILE_ENGINES)}")
    precision = precision or eng.int8_variants[0]
    layout = artifacts.Layout(Path(artefact_dir))
    path = layout.fp32_onnx if precision == "fp32" else layout.int8_onnx
    if not path.is_file():
        raise UserError(f"{path} not found: export first (QuantizedModel.export, export.py or bert_ptq.py)")
    return eng.compile(path, threads, precision)


@dataclass
class Evaluation:
    """logits: one row per example, in input order. metrics: the task metrics (empty without labels).
    agreement / max_logit_diff: argmax agreement with the reference and the largest |logit difference| (None
    without a reference)."""

    logits: np.ndarray
    metrics: dict[str, float]
    agreement: float | None = None
    max_logit_diff: float | None = None


def evaluate(runner: Callable[[dict], np.ndarray], batches: Iterable[Mapping], labels: Sequence | None = None,
             reference: Callable[[dict], np.ndarray] | None = None, metrics: Sequence[str] = ("accuracy",),
             num_labels: int = 2) -> Evaluation:
    """Run `runner` (a compiled Runner, QuantizedModel.reference(), ...) on batches of the model's inputs; score
    its logits against `labels` with the named metrics (accuracy, f1, matthews_correlation, pearson, spearmanr)
    and against the `reference`'s."""
    batches = [{k: np.asarray(v) for k, v in b.items()} for b in batches]
    logits = np.concatenate([runner(b) for b in batches])
    scores = task_metrics(logits, labels, metrics, num_labels) if labels is not None else {}
    if reference is None:
        return Evaluation(logits, scores)
    ref = np.concatenate([reference(b) for b in batches])
    return Evaluation(logits, scores, argmax_agreement(logits, ref), round(float(np.abs(logits - ref).max()), 6))


def benchmark(builders: Mapping[str, Callable[[int], Runner]], vocab_size: int, input_names: Sequence[str],
              bench: BenchConfig | None = None) -> dict[str, list[dict]]:
    """Time runners interleaved, every one once per round, on random ids per shape and thread count (bench's;
    default 1x128 and 6x64 at one thread). builders: name -> threads -> runner, e.g.
    `lambda t: compile(dir, "onnxruntime", threads=t)`. Returns name -> one latency cell (ms) per shape and
    thread count, as report.json's latency_ms."""
    timed = measure_latency(dict(builders), vocab_size, tuple(input_names), bench or BenchConfig(), {})
    return {name: out["latency_ms"] for name, out in timed.items()}
