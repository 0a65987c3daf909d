"""Timing flags: shape lists, thread lists and the `server` preset become the BenchConfig the pipeline times; the
interleaved timing loop."""
from __future__ import annotations


import pytest

from ptqkit.bench import SERVER_SHAPES, SETTLE_S, BenchConfig, Shape, bench_config, summarize, time_interleaved
from ptqkit.cli import add_bench_flags, config_from_args, parser
from ptqkit.errors import UserError
from ptqkit.latency import measure_latency
from ptqkit.sysinfo import usable_cores


def _cfg(*argv: str):
    p = parser("test")
    add_bench_flags(p)
    return config_from_args(p.parse_args(list(argv)))


def test_server_preset_times_long_documents_and_a_batch_at_one_thread_and_all_cores(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the preset's thread counts do not come from the environment
    bench = _cfg("--shapes", "server").bench
    assert bench.shapes == (Shape(1, 128), Shape(1, 512), Shape(32, 128)) == SERVER_SHAPES
    assert bench.threads == tuple(sorted({1, usable_cores()}))
    assert bench.time_budget_s is not None and bench.rounds == BenchConfig().rounds
    assert _cfg("--shapes", "server", "--threads", "2", "--rounds", "4").bench.threads == (2,)
    assert _cfg("--shapes", "server", "--rounds", "4").bench.rounds == 4


def test_shape_lists_and_thread_lists(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    bench = _cfg("--shapes", "1x128,32x64").bench
    assert bench.shapes == (Shape(1, 128), Shape(32, 64)) and bench.threads == (3,) and bench.time_budget_s is None
    assert bench_config(None, "1,2", None) == BenchConfig(threads=(1, 2))


@pytest.mark.parametrize("argv, message", [(("--shapes", "1x"), "bad shape"), (("--shapes", "servers"), "bad shape"),
                                           (("--threads", "0"), "thread counts must be >= 1"),
                                           (("--profile-calls", "-1"), "bad --profile-calls")])
def test_bad_timing_flags_are_one_line_errors(argv, message) -> None:
    with pytest.raises(UserError, match=message):
        _cfg(*argv)


def test_throughput_is_computed_from_the_printed_median() -> None:
    """A reader dividing by the report's median must get the report's throughput (41.1606 ms printed as 41.161)."""
    rec = summarize([41.1606], Shape(1, 128), 1)
    assert rec["median"] == 41.161 and rec["throughput_seq_s"] == round(1e3 / 41.161, 2) == 24.29
    batch = summarize([300.0004, 300.0006], Shape(32, 128), 2)
    assert batch["median"] == 300.0 and batch["throughput_seq_s"] == round(32e3 / 300.0, 2)


def test_settle_pause_idles_before_each_timed_call_and_is_not_timed(fake_clock) -> None:
    """Warm-up calls run back to back; every timed call waits settle_s first; a call's time excludes the pause."""
    runners = {"a": fake_clock.runner("a", 2.0), "b": fake_clock.runner("b", 3.0)}
    samples = time_interleaved(runners, {}, BenchConfig(warmup=1, rounds=3), settle_s=0.02)
    assert samples == {"a": pytest.approx([2.0] * 3), "b": pytest.approx([3.0] * 3)}
    pause = ("sleep", 0.02)
    assert fake_clock.events == [("a", 2.0), ("b", 3.0)] + [pause, ("a", 2.0), pause, ("b", 3.0)] * 3


def test_time_budget_ends_the_cell_after_the_round_that_passes_it(fake_clock) -> None:
    """The `server` preset's cap: whole rounds only (each variant keeps the same number of samples)."""
    runners = {"a": fake_clock.runner("a", 10.0), "b": fake_clock.runner("b", 10.0)}
    samples = time_interleaved(runners, {}, BenchConfig(warmup=0, rounds=100, time_budget_s=0.05))
    assert [len(v) for v in samples.values()] == [3, 3]  # 20 ms a round: past 50 ms after the third
    assert len(time_interleaved(runners, {}, BenchConfig(warmup=0, rounds=4))["a"]) == 4  # no budget: every round


def test_only_multi_thread_cells_settle(fake_clock) -> None:
    """bert_ptq.py pauses settle_s before each call of a multi-thread cell; one-thread cells run back to back."""
    bench = BenchConfig(shapes=(Shape(1, 8),), threads=(1, 2), warmup=0, rounds=2, profile_calls=0)
    out = measure_latency({"x": lambda threads: fake_clock.runner(f"x@{threads}", 1.0)}, 100, ("input_ids",), bench)
    pause = ("sleep", SETTLE_S)
    assert SETTLE_S > 0 and fake_clock.events == [("x@1", 1.0)] * 2 + [pause, ("x@2", 1.0)] * 2
    assert [(c["threads"], c["median"]) for c in out["x"]["latency_ms"]] == [(1, 1.0), (2, 1.0)]
