"""Interleaved latency harness: every variant runs once per round, so machine noise hits all of them alike."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

from .backends.base import Inputs, Runner
from .sysinfo import usable_cores

# Pause before each timed call of a multi-thread cell. An engine's idle worker threads keep spinning for a while after
# its call (PyTorch's OpenMP pool does by default), and on a machine with no spare core they steal from the engine
# timed next: OpenVINO's 2-thread call right after a PyTorch call is far slower without the pause than with it
# (docs/performance.md). A real deployment runs one engine, so each call should start with the others idle.
SETTLE_S = 0.01


@dataclass(frozen=True)
class Shape:
    batch: int
    seq_len: int

    def __str__(self) -> str:
        return f"{self.batch}x{self.seq_len}"


DEFAULT_SHAPES = (Shape(1, 128), Shape(6, 64))  # the reference example's shapes
# `--shapes server`: what a server sees (a short and a long document, and a batch for throughput), timed at one
# thread and at every usable core. A 32x128 call of an fp32 variant takes seconds, so each cell's timing is capped.
SERVER = "server"
SERVER_SHAPES = (Shape(1, 128), Shape(1, 512), Shape(32, 128))
SERVER_CELL_BUDGET_S = 60.0


@dataclass(frozen=True)
class BenchConfig:
    shapes: tuple[Shape, ...] = DEFAULT_SHAPES
    threads: tuple[int, ...] = (1,)
    warmup: int = 5
    rounds: int = 30
    time_budget_s: float | None = None  # stop a (shape, threads) cell early once this much time has passed
    profile_calls: int = 10  # profiled calls per cell for the engine-time split and the int8 limit (0: none)
    settle_s: float = SETTLE_S  # idle before each timed call of a multi-thread cell (see SETTLE_S)


def parse_shapes(text: str) -> tuple[Shape, ...]:
    """'1x128,6x64' -> shapes; raises ValueError with the offending item."""
    shapes = []
    for item in text.split(","):
        try:
            b, s = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise ValueError(f"bad shape {item!r}: use BATCHxSEQ, e.g. 1x128") from None
        if b < 1 or s < 2:
            raise ValueError(f"bad shape {item!r}: batch must be >= 1 and seq_len >= 2")
        shapes.append(Shape(b, s))
    return tuple(shapes)


def bench_config(shapes: str | None, threads: str | None, rounds: int | None = None,
                 profile_calls: int | None = None) -> BenchConfig:
    """The timing flags as a BenchConfig: a shape list or the `server` preset (whose threads, unless given, are one
    and every usable core); raises ValueError on bad values."""
    if profile_calls is not None and profile_calls < 0:
        raise ValueError(f"bad --profile-calls {profile_calls}: use 0 (no profiling) or more")
    base = BenchConfig(**({"rounds": rounds} if rounds else {}),
                       **({"profile_calls": profile_calls} if profile_calls is not None else {}))
    if shapes == SERVER:
        cores = usable_cores()
        return replace(base, shapes=SERVER_SHAPES, threads=parse_threads(threads) if threads else tuple(sorted({1, cores})),
                       time_budget_s=SERVER_CELL_BUDGET_S)
    return replace(base, threads=parse_threads(threads), **({"shapes": parse_shapes(shapes)} if shapes else {}))


def parse_threads(text: str | None) -> tuple[int, ...]:
    """Thread counts from a flag, else OMP_NUM_THREADS, else 1."""
    text = text or os.environ.get("OMP_NUM_THREADS") or "1"
    try:
        threads = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise ValueError(f"bad thread list {text!r}: use e.g. 1,2") from None
    if any(t < 1 for t in threads):
        raise ValueError(f"bad thread list {text!r}: thread counts must be >= 1")
    return threads


def synthetic_inputs(shape: Shape, vocab_size: int, input_names: tuple[str, ...], seed: int = 0) -> Inputs:
    """Random token ids at a fixed shape: latency depends on the shape, not on the words."""
    rng = np.random.default_rng(seed)
    inputs = {"input_ids": rng.integers(1000 if vocab_size > 2000 else 1, vocab_size, (shape.batch, shape.seq_len))}
    if "attention_mask" in input_names:
        inputs["attention_mask"] = np.ones((shape.batch, shape.seq_len), dtype=np.int64)
    if "token_type_ids" in input_names:
        inputs["token_type_ids"] = np.zeros((shape.batch, shape.seq_len), dtype=np.int64)
    inputs["input_ids"] = inputs["input_ids"].astype(np.int64)
    return inputs


def time_interleaved(runners: Mapping[str, Runner], inputs: Inputs, cfg: BenchConfig,
                     settle_s: float = 0.0) -> dict[str, list[float]]:
    """Milliseconds per call for each runner, round-robin after a warm-up; `settle_s` idles before each timed call
    (BenchConfig.settle_s in multi-thread cells). Runners that can `prepare` for a shape (OpenVINO's static-shape
    copy) do so first, outside the timing."""
    for run in runners.values():
        if hasattr(run, "prepare"):
            run.prepare(inputs)
        for _ in range(cfg.warmup):
            run(inputs)
    samples: dict[str, list[float]] = {name: [] for name in runners}
    start = time.perf_counter()
    for _ in range(cfg.rounds):
        for name, run in runners.items():
            if settle_s:
                time.sleep(settle_s)
            t0 = time.perf_counter()
            run(inputs)
            samples[name].append((time.perf_counter() - t0) * 1e3)
        if cfg.time_budget_s is not None and time.perf_counter() - start > cfg.time_budget_s:
            break
    return samples


def summarize(samples: list[float], shape: Shape, threads: int) -> dict:
    """The report's latency record: median and p90 in ms, and throughput in sequences per second."""
    median = round(float(np.median(samples)), 3)  # throughput from the printed median, so the record is self-consistent
    return {
        "batch": shape.batch,
        "seq_len": shape.seq_len,
        "threads": threads,
        "median": median,
        "p90": round(float(np.percentile(samples, 90)), 3),
        "samples": len(samples),
        "throughput_seq_s": round(shape.batch * 1e3 / median, 2),
    }
