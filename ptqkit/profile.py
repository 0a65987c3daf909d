"""Where one call's time goes: the engine's own profiler time by op kind, beside the end-to-end time.

The split comes from a separately compiled, profiling copy of the model (Engine.op_times): profiling can slow the
calls it watches (ORT writes an event per node) and must not touch the timed runner. The end-to-end median comes
from the timed runner, called on the same inputs right after each profiled call. outside = end-to-end minus the
engine's total: Python, the binding of inputs and outputs, the engine's own dispatch between nodes.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .backends.base import OP_KINDS, Inputs, Runner
from .bench import Shape

# (threads, inputs, calls, between) -> per call ms by kind: Engine.op_times with the model and precision bound
OpTimes = Callable[[int, Inputs, int, Callable[[], None]], list[dict[str, float]]]


def profile_cell(op_times: OpTimes, runner: Runner, inputs: Inputs, shape: Shape, threads: int, calls: int) -> dict:
    """Median ms per op kind over `calls` profiled calls, the engine total, the end-to-end median of the timed
    runner called once right after each profiled call, and outside: the median of those pairs' end-to-end minus
    engine (clamped at 0: the two are different calls)."""
    walls = []

    def timed_call() -> None:
        t0 = time.perf_counter()
        runner(inputs)
        walls.append((time.perf_counter() - t0) * 1e3)

    per_call = op_times(threads, inputs, calls, timed_call)
    engines = [sum(c.values()) for c in per_call]
    engine, end_to_end = float(np.median(engines)), float(np.median(walls))
    # each timed call right after its profiled one: their difference cancels most of a shared machine's swings
    outside = float(np.median([w - e for w, e in zip(walls, engines)]))
    return {"batch": shape.batch, "seq_len": shape.seq_len, "threads": threads, "calls": len(per_call),
            **{k: round(float(np.median([c[k] for c in per_call])), 3) for k in OP_KINDS},
            "engine": round(engine, 3), "end_to_end": round(end_to_end, 3),
            "outside": round(max(outside, 0.0), 3)}


def format_profile(name: str, cell: dict) -> str:
    """One printed line: the split of one variant at one cell."""
    split = ", ".join(f"{k} {cell[k]:.2f}" for k in (*OP_KINDS, "outside"))
    return (f"{name} {cell['batch']}x{cell['seq_len']}/{cell['threads']}t: end-to-end {cell['end_to_end']:.2f} ms, "
            f"engine {cell['engine']:.2f} ms ({split})")
