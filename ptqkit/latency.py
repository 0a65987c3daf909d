"""Latency of built variants: interleaved timing per thread count and shape, the engines' own profilers, and
the int8 GEMM peak each profiled int8 variant is measured against."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import roofline
from .backends.base import Engine, Runner
from .bench import BenchConfig, summarize, synthetic_inputs, time_interleaved
from .errors import one_line
from .profile import OpTimes, format_profile, profile_cell


def measure_latency(builders: dict[str, Callable[[int], Runner]], vocab_size: int, input_names: tuple[str, ...],
                    bench: BenchConfig, profilers: dict[str, OpTimes] | None = None) -> dict[str, dict[str, list[dict]]]:
    """Per thread count, build every variant's runner (builders: name -> threads -> runner); per shape, time them
    interleaved on random ids below `vocab_size`, then, for the variants in `profilers`, take the engine's profiler
    split (bench.profile_calls calls; none when 0).

    Returns name -> {"latency_ms": [...], "profile": [...]} (profile only for profiled variants). A profiler that
    fails leaves its one-line reason in "profile_error" and never takes the run down."""
    profilers = profilers if bench.profile_calls else {}
    out: dict[str, dict[str, list]] = {name: {"latency_ms": []} | ({"profile": []} if name in profilers else {})
                                       for name in builders}
    for threads in bench.threads:
        runners = {name: build(threads) for name, build in builders.items()}
        for shape in bench.shapes:
            inputs = synthetic_inputs(shape, vocab_size, input_names)
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
