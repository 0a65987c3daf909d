"""Every model a run compares, as a Variant: which exist (ours on the engine, the peers), building each one,
checking its kernels, evaluating it and comparing it with the references it names."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import peers
from .changes import changed_examples, changed_rows
from .backends.base import Engine, KernelEvidence, ModelForms, Runner
from .backends.pytorch import TorchRunner, eager_profiler
from .bench import synthetic_inputs
from .config import RunConfig
from .errors import one_line
from .evaluation import argmax_agreement, evaluate, predict_logits
from .loading import Loaded
from .peers import Peer
from .profile import OpTimes
from .quantizer import Quantizer
from .runtime_files import write_host_check
from .stages import Stages

FAKEQUANT = "pytorch-fakequant"  # the reference variant: the eager fake-quant graph (choose_engine says why eager)


@dataclass
class Variant:
    """One model type in the report, as data: its record, how to build its runner, what it is compared with.

    record: the report entry (name, engine, precision; peer/optional/note), filled in as the run goes.
    build: threads -> runner; None when it is not built (failed).
    reference: this variant *is* the named reference ("fp32" or "fakequant") the others compare against.
    compare: the references whose argmax agreement the report gives (agreement_with_<reference>).
    measured: kernels counted and latency timed (False for the fake-quant reference, whose fp32 math says
    nothing about speed). pad_to: evaluate on batches padded to this length (engines with fixed shapes).
    host_check: our int8 variant: its labels go into host_check.json beside the fake-quant logits, and its first
    changed predictions into the report (changed_examples).
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


def reference_variants(ld: Loaded, q: Quantizer, fakequant: bool) -> list[Variant]:
    """PyTorch eager fp32 (the yardstick every variant is compared with) and, when `fakequant`, the fake-quant graph
    (the reference of what int8 should compute; its fp32 math says nothing about speed, so it is not timed)."""
    out = [Variant({"name": "pytorch-fp32", "engine": "pytorch", "precision": "fp32"},
                   lambda t: TorchRunner(ld.model, ld.input_names, t), reference="fp32", compare=(),
                   op_times=eager_profiler(ld.model, ld.input_names))]
    if fakequant:
        out.append(Variant({"name": FAKEQUANT, "engine": "pytorch", "precision": "int8-fakequant",
                            "note": "reference fake-quant graph (fp32 math); not timed"},
                           lambda t: TorchRunner(q.quantize(), ld.input_names, t), reference="fakequant",
                           measured=False))
    return out


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


def build_peers(ld: Loaded, fp32_onnx: Path, calib: list[dict], out_dir: Path, stages: Stages) -> list[Variant]:
    """NNCF int8 and OpenVINO bf16 (when OpenVINO is installed), ORT dynamic int8, PyTorch dynamic int8, each
    made under its stage "peers: <name>" (NNCF's is its quantize time).

    A peer that cannot be built is kept as a failed variant (not built, evaluated or timed) with its reason."""
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
    for key in ("metrics", "agreement_with_fp32", "agreement_with_fakequant", "changed_vs_fp32", "changed_examples"):  # partial results are not results
        record.pop(key, None)
    return record


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
    classes = ld.task.num_labels > 1  # a regression score has no class to change
    for v in variants:
        for ref in v.compare if v.name in logits else ():
            v.record[f"agreement_with_{ref}"] = argmax_agreement(logits[v.name], references[ref])
        if classes and "fp32" in v.compare and v.name in logits:
            v.record["changed_vs_fp32"] = len(changed_rows(logits[v.name], references["fp32"]))
            if v.host_check:  # ours: the first few, for a person to read
                v.record["changed_examples"] = changed_examples(ld.task.validation, references["fp32"],
                                                                logits[v.name], ld.model.config.id2label)
        if v.host_check and v.name in logits:
            write_host_check(ld.task.validation, references["fakequant"], logits[v.name], v.name, out_dir)


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
