"""Where one call's time goes: the engine's own profiler time by op kind, beside the end-to-end time.

The split comes from a separately compiled, profiling copy of the model (Engine.op_times), since profiling slows
the calls it watches; the end-to-end median comes from the runner that is timed, called on the same inputs right
after. outside = end-to-end minus the engine's total: Python, the binding of inputs and outputs, the engine's own
dispatch between nodes.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .backends.base import OP_KINDS, Inputs, Runner
from .bench import Shape

OpTimes = Callable[[int, Inputs, int], list[dict[str, float]]]  # (threads, inputs, calls) -> per call ms by kind


def profile_cell(op_times: OpTimes, runner: Runner, inputs: Inputs, shape: Shape, threads: int, calls: int) -> dict:
    """Median ms per op kind over `calls` profiled calls, the engine total, the runner's end-to-end median over as
    many calls, and outside (never below 0: the two medians come from different calls)."""
    per_call = op_times(threads, inputs, calls)
    walls = []
    for _ in range(calls):
        t0 = time.perf_counter()
        runner(inputs)
        walls.append((time.perf_counter() - t0) * 1e3)
    engine = float(np.median([sum(c.values()) for c in per_call]))
    end_to_end = float(np.median(walls))
    return {"batch": shape.batch, "seq_len": shape.seq_len, "threads": threads, "calls": len(per_call),
            **{k: round(float(np.median([c[k] for c in per_call])), 3) for k in OP_KINDS},
            "engine": round(engine, 3), "end_to_end": round(end_to_end, 3),
            "outside": round(max(end_to_end - engine, 0.0), 3)}


def format_profile(name: str, cell: dict) -> str:
    """One printed line: the split of one variant at one cell."""
    split = ", ".join(f"{k} {cell[k]:.2f}" for k in (*OP_KINDS, "outside"))
    return (f"{name} {cell['batch']}x{cell['seq_len']}/{cell['threads']}t: end-to-end {cell['end_to_end']:.2f} ms, "
            f"engine {cell['engine']:.2f} ms ({split})")
