"""Per-layer precision under a speed budget (--max-slowdown, issue #29): for each k of FRONTIER_KS, the k most
sensitive quantized ops left in float (linears and, under int8 attention, the attention matmuls, ranked together;
what the engine runs float ops in: fp32, or bf16 under OpenVINO's int8-bf16), each point's agreement with fp32 on
held-out train sentences (never validation) and the int8 engine's latency at the first timing shape, timed
interleaved; the budget keeps the most faithful k whose latency is within it."""
from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from .backends.base import ONNX, Engine
from .backends.pytorch import TorchRunner
from .changes import changed_rows
from .config import RunConfig
from .data import encode, split_train
from .errors import UserError
from .evaluation import argmax_agreement, predict_logits
from .export import export_example, export_onnx
from .latency import measure_latency
from .loading import Loaded
from .markdown import table
from .models import all_cores
from .qmodel import LogitsOnly
from .quantizer import Quantizer
from .stages import Stages

# The float op counts measured. Doubling steps reach 8 ops with 5 points (each costs an export, two compiles and a
# holdout pass): at 512 tokens the attention matmuls lead the ranking and one or two float ops changed nothing
# measurable (docs/fidelity.md)
FRONTIER_KS = (0, 1, 2, 4, 8)


def choose(points: list[dict], max_slowdown: float) -> int:
    """The k of the point with the highest agreement whose median is within max_slowdown percent of k = 0's
    (the fewest float layers on a tie; k = 0 is always within)."""
    limit = points[0]["median_ms"] * (1 + max_slowdown / 100)
    within = [p for p in points if p["median_ms"] <= limit or p["k"] == 0]
    return max(within, key=lambda p: (p["agreement_with_fp32"], -p["k"]))["k"]


def precision_frontier(q: Quantizer, ld: Loaded, cfg: RunConfig, n_calib: int, sensitivity_batches: list[dict],
                       engine: Engine, precision: str, threads: int, work_threads: int, stages: Stages) -> dict:
    """Measure the frontier on `engine` at `precision`, leave q with the chosen k ops in float, and return the
    report record ("frontier" in report.json's quantization)."""
    n = min(cfg.fallback_holdout, len(ld.task.train) - n_calib)
    if n < 1:
        raise UserError(f"--max-slowdown needs held-out train sentences: all {len(ld.task.train)} calibrate")
    with stages.time("frontier: holdout"):
        holdout = encode(ld.tokenizer, split_train(ld.task, n_calib, n)[1], cfg.max_seq_len)
        fp32 = predict_logits(TorchRunner(ld.model, ld.input_names, work_threads), holdout, cfg.batch_size, ld.pad_id,
                              "frontier: fp32 holdout")
    with stages.time("frontier: sensitivity"), all_cores():
        sensitivity = q.amp(sensitivity_batches)
    pad_to = cfg.max_seq_len if engine.fixed_shapes else None
    points, builders = [], {}
    with tempfile.TemporaryDirectory(prefix="ptqkit-frontier-") as tmp:
        for k in (k for k in FRONTIER_KS if k <= len(sensitivity)):
            with stages.time("frontier: export and compile"):
                layers = list(q.fallback(sensitivity, k))
                q.quantize()
                converted = q.convert(ld.model)
                form = (export_onnx(converted, ld.input_names, export_example(ld.model, ld.input_names),
                                    Path(tmp) / f"k{k}.onnx") if engine.takes == ONNX
                        else LogitsOnly(converted, ld.input_names))
                runner = engine.compile(form, work_threads, precision)
            with stages.time("frontier: holdout"):
                logits = predict_logits(runner, holdout, cfg.batch_size, ld.pad_id, f"frontier: k={k}", pad_to)
            agreement = argmax_agreement(logits, fp32)
            points.append({"k": k, "float_layers": layers, "agreement_with_fp32": agreement,
                           "changed_vs_fp32": len(changed_rows(logits, fp32))})
            builders[f"k={k}"] = lambda t, form=form: engine.compile(form, t, precision)
        bench = replace(cfg.bench, shapes=cfg.bench.shapes[:1], threads=(threads,), profile_calls=0)
        with stages.time("frontier: timing"):
            latency = measure_latency(builders, ld.model.config.vocab_size, ld.input_names, bench)
    for p in points:
        p["median_ms"] = latency[f"k={p['k']}"]["latency_ms"][0]["median"]
        p["slowdown_pct"] = round(100 * (p["median_ms"] / points[0]["median_ms"] - 1), 2)
    chosen = choose(points, cfg.max_slowdown)
    q.fallback(sensitivity, chosen)
    q.quantize()
    print(f"frontier: k={chosen} op(s) in float within --max-slowdown {cfg.max_slowdown:g}%: "
          + "; ".join(f"k={p['k']} agreement {p['agreement_with_fp32']:.4f} {p['median_ms']:.2f} ms" for p in points))
    return {"engine": engine.name, "precision": precision, "shape": str(bench.shapes[0]), "threads": threads,
            "holdout_sentences": len(holdout), "max_slowdown_pct": cfg.max_slowdown, "chosen_k": chosen,
            "points": points}


def markdown_lines(rep: dict) -> list[str]:
    """report.md's section: one row per k, the chosen one in bold."""
    f = rep.get("quantization", {}).get("frontier")
    if not f:
        return []
    lines = [f"## Per-layer precision under --max-slowdown {f['max_slowdown_pct']:g}%: k = {f['chosen_k']} chosen", "",
             f"The k most sensitive quantized ops (linears, attention matmuls) left in float on "
             f"{f['engine']}-{f['precision']}; agreement with fp32 on "
             f"{f['holdout_sentences']} held-out train sentences (not the validation set); median ms at {f['shape']}, "
             f"{f['threads']} thread(s), the points timed interleaved.", ""]
    rows, previous_k = [], 0
    for p in f["points"]:  # each point's float ops extend the previous point's (the same ranking, cut further)
        mark = (lambda s: f"**{s}**") if p["k"] == f["chosen_k"] else str
        added = ", ".join(p["float_layers"][previous_k:]) or "(none)"
        previous_k = p["k"]
        rows.append([mark(p["k"]), added, mark(f"{p['agreement_with_fp32']:.4f}"),
                     p["changed_vs_fp32"], f"{p['median_ms']:.2f}", f"{p['slowdown_pct']:+.1f}%"])
    return lines + table(["k", "ops added in float", "agreement with fp32 (holdout)", "changed (holdout)", "median ms",
                          "slowdown vs k = 0"], rows) + [""]
