"""`--backend auto`: build our int8 model on every installed engine, keep the fastest one that computes what the
fake-quant model computes, measured on this CPU (which engine is fastest depends on its int8 instructions).

Rule: a candidate (an engine and one of its int8 variants) is eligible when its argmax agrees with the torch
fake-quant model on >= MIN_AGREEMENT of up to POOL_SIZE held-out train sentences (pipeline.choose_engine), it ran
int8 kernels and it is faster than the same engine's fp32; the fastest eligible candidate wins. When none is
eligible the most faithful one is kept and the report says why. Each candidate's mean absolute logit difference
from the fake-quant model is reported beside its agreement: the finer measure of how faithful its arithmetic is.

Why the whole pool: an earlier rule counted only the 300 least confident sentences, but every disagreement of a
faithful engine lies among the sentences the fake-quant model itself barely decides, so that rule was "at most 3
flips in the pool" and passed or failed faithful engines by chance (docs/isa.md, "Which engine").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .backends import get_backend, installed_engines
from .backends.base import MIN_AGREEMENT, Engine, ModelForms
from .bench import BenchConfig, Shape, synthetic_inputs, time_interleaved
from .errors import one_line
from .evaluation import argmax_agreement, predict_logits

POOL_SIZE = 2000  # held-out train sentences the fake-quant model scores
MIN_POOL = 100  # below this, the calibration sentences are used instead (tiny user data sets)
TIMING = BenchConfig(warmup=3, rounds=20)


@dataclass
class Selection:
    """The chosen engine and variant, the runners built on the way (reused by the caller), and the report record."""

    engine: Engine
    precision: str
    runners: dict[str, object]  # variant name -> runner, fp32 included
    record: dict


def describe(candidate: dict) -> str:
    """One candidate of a selection record in words (summary, docs/results.md)."""
    if candidate.get("status") == "failed":
        return f"{candidate['name']} failed ({candidate['error']})"
    return (f"{candidate['name']} {candidate['median_ms']:.2f} ms (engine fp32 {candidate['engine_fp32_ms']:.2f} ms), "
            f"agreement with fake-quant {candidate['agreement_with_fakequant']:.4f} "
            f"(mean logit difference {candidate['mean_logit_error']:.4f})"
            f"{'' if candidate['eligible'] else ', not eligible'}")


def select_engine(forms: ModelForms, fq_logits: np.ndarray, features: Sequence[dict], agreement_data: str,
                  batch_size: int, pad_id: int, input_names: tuple[str, ...], vocab_size: int, shape: Shape,
                  threads: int) -> Selection:
    """Compile fp32 and every int8 variant on each installed engine, check agreement, time interleaved, choose."""
    runners: dict[str, object] = {}
    rows: list[dict] = []
    failed: list[dict] = []
    for name in installed_engines():
        engine = get_backend(name)
        try:
            runners[f"{name}-fp32"] = engine.compile(forms.get(engine.takes, "fp32"), threads, "fp32")
        except Exception as e:  # noqa: BLE001 - an engine that fails is a candidate less, not a failed run
            failed += [{"name": f"{name}-{p}", "engine": name, "precision": p, "status": "failed", "error": one_line(e)}
                       for p in engine.int8_variants]
            continue
        for precision in engine.int8_variants:
            variant = f"{name}-{precision}"
            try:
                runner = engine.compile(forms.get(engine.takes, "int8"), threads, precision)
                logits = predict_logits(runner, features, batch_size, pad_id, desc=f"checking {variant}")
            except Exception as e:  # noqa: BLE001 - as above
                failed.append({"name": variant, "engine": name, "precision": precision, "status": "failed", "error": one_line(e)})
                continue
            runners[variant] = runner
            rows.append({"name": variant, "engine": name, "precision": precision,
                         "agreement_with_fakequant": argmax_agreement(logits, fq_logits),
                         "mean_logit_error": round(float(np.abs(logits - fq_logits).mean()), 5),
                         "int8_kernels": runner.kernels().int8})
    if not rows:
        raise RuntimeError("--backend auto: no engine could run our int8 model: "
                           + "; ".join(f"{r['name']}: {r['error']}" for r in failed))
    inputs = synthetic_inputs(shape, vocab_size, input_names)
    medians = {n: float(np.median(s)) for n, s in time_interleaved(runners, inputs, TIMING).items()}
    for row in rows:
        row["median_ms"] = round(medians[row["name"]], 3)
        row["engine_fp32_ms"] = round(medians[f"{row['engine']}-fp32"], 3)
        row["eligible"] = (row["agreement_with_fakequant"] >= MIN_AGREEMENT and row["int8_kernels"] > 0
                           and row["median_ms"] < row["engine_fp32_ms"])
    eligible = [r for r in rows if r["eligible"]]
    if eligible:
        best = min(eligible, key=lambda r: r["median_ms"])
        reason = (f"fastest of {len(eligible)} eligible candidate(s) (agreement with fake-quant >= {MIN_AGREEMENT} on "
                  f"{len(features)} {agreement_data}, int8 kernels, faster than the engine's fp32) at {shape}, {threads} thread(s)")
    else:
        best = max(rows, key=lambda r: (r["agreement_with_fakequant"], -r["median_ms"]))
        reason = (f"no candidate met every condition (agreement >= {MIN_AGREEMENT}, int8 kernels, faster than its "
                  "engine's fp32): kept the most faithful one")
    record = {"chosen": best["name"], "reason": reason, "agreement_data": f"{len(features)} {agreement_data}",
              "shape": str(shape), "threads": threads, "rounds": TIMING.rounds, "candidates": rows + failed}
    return Selection(get_backend(best["engine"]), best["precision"], runners, record)
