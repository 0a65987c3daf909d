"""Timing flags: shape lists, thread lists and the `server` preset become the BenchConfig the pipeline times."""
from __future__ import annotations

import pytest

from ptqkit.bench import SERVER_SHAPES, BenchConfig, Shape, bench_config, summarize
from ptqkit.sysinfo import usable_cores
from ptqkit.cli import add_bench_flags, parser
from ptqkit.errors import UserError
from ptqkit.pipeline import config_from_args


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
