"""--backend auto's cheap check (the stopping rule, the fastest-first order) and the stage timer the report reads."""
from __future__ import annotations

import numpy as np
import pytest

from ptqkit.report import stage_groups, stage_line
from ptqkit.selection import (LOOK, MIN_AGREEMENT, PoolLogits, _check_fastest_first, agreement_verdict,
                              check_agreement, wilson_bounds)
from ptqkit.stages import Stages

POOL = 2000


def test_wilson_bounds_match_the_textbook_interval() -> None:
    low, high = wilson_bounds(95, 100, z=1.96)  # Wilson (1927) / Newcombe (1998): 95/100 -> 0.8882 to 0.9785
    assert (round(low, 4), round(high, 4)) == (0.8882, 0.9785)
    assert wilson_bounds(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("agree, n, pool, verdict", [
    (800, 800, POOL, True),  # no disagreement in 800: the bound clears 0.99
    (600, 600, POOL, None),  # ...in 600 it does not yet: score more
    (797, 800, POOL, None),  # 3 disagreements in 800: undecided
    (190, 200, POOL, False),  # 10 in 200: clearly below
    (1980, 2000, POOL, True),  # the whole pool, undecided by the bound: the point estimate, as the old rule
    (1979, 2000, POOL, False),
    (104, 104, 104, True),  # a small pool is judged on its point estimate
    (102, 104, 104, False),
])
def test_agreement_verdict_on_fixed_counts(agree: int, n: int, pool: int, verdict: bool | None) -> None:
    assert agreement_verdict(agree, n, pool) is verdict


def _features(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"input_ids": [int(rng.integers(5, 100)), 3], "attention_mask": [1, 1]} for _ in range(n)]


class Classifier:
    """A runner whose argmax is the parity of the first token id; `flip` inverts it on every `flip`-th row it
    sees. Counts the sentences it ran."""

    def __init__(self, flip: int = 0):
        self.flip, self.seen = flip, 0
        self.input_names = ("input_ids", "attention_mask")

    def __call__(self, inputs: dict) -> np.ndarray:
        odd = (inputs["input_ids"][:, 0] % 2).astype(np.float32)
        rows = np.arange(self.seen, self.seen + len(odd))
        self.seen += len(odd)
        if self.flip:
            odd = np.where(rows % self.flip == 0, 1 - odd, odd)
        return np.stack([odd, 1 - odd], axis=1)


def test_check_stops_as_soon_as_the_bound_decides() -> None:
    reference = Classifier()
    pool = PoolLogits(reference, _features(POOL), 32, 0, "ref")
    ok = check_agreement(Classifier(), pool, "same")
    assert ok["agreement_ok"] is True and ok["agreement_sentences"] == 4 * LOOK  # 800, not the pool of 2000
    assert reference.seen == 4 * LOOK  # the reference ran on those sentences only
    bad = check_agreement(Classifier(flip=10), pool, "10% flipped")
    assert bad["agreement_ok"] is False and bad["agreement_sentences"] == LOOK
    assert bad["agreement_with_fakequant"] == 0.9 and bad["mean_logit_error"] == 0.1
    assert reference.seen == 4 * LOOK  # the looks it had scored are reused
    close = check_agreement(Classifier(flip=150), pool, "0.67% flipped")  # never separated: the whole pool
    assert close["agreement_sentences"] == POOL and close["agreement_ok"] is (close["agreement_with_fakequant"] >= MIN_AGREEMENT)


def _rows(*specs: tuple[str, float, int]) -> list[dict]:
    return [{"name": name, "engine": name.split("-")[0], "precision": "int8", "median_ms": ms, "engine_fp32_ms": 10.0,
             "int8_kernels": kernels} for name, ms, kernels in specs]


def test_fastest_eligible_candidate_is_checked_first_and_slower_ones_not_at_all() -> None:
    pool = PoolLogits(Classifier(), _features(POOL), 32, 0, "ref")
    runners = {"a-int8": Classifier(flip=5), "b-int8": Classifier(), "c-int8": Classifier(), "d-int8": Classifier()}
    # d: fastest but no int8 kernels; a: next, unfaithful; b: eligible; c: slower than b
    rows, failed = _check_fastest_first(_rows(("a-int8", 2.0, 14), ("b-int8", 3.0, 14), ("c-int8", 4.0, 14),
                                              ("d-int8", 1.0, 0)), [], runners, lambda r: runners[r["name"]], pool)
    by = {r["name"]: r for r in rows}
    assert not failed
    assert by["a-int8"]["eligible"] is False and by["a-int8"]["agreement_ok"] is False
    assert by["b-int8"]["eligible"] is True
    assert "agreement_with_fakequant" not in by["c-int8"] and "b-int8" in by["c-int8"]["not_checked"]
    assert "agreement_with_fakequant" not in by["d-int8"] and by["d-int8"]["eligible"] is False
    assert runners["c-int8"].seen == 0 and runners["d-int8"].seen == 0


def test_without_an_eligible_candidate_every_one_is_checked() -> None:
    pool = PoolLogits(Classifier(), _features(POOL), 32, 0, "ref")
    runners = {"a-int8": Classifier(flip=5), "b-int8": Classifier(flip=20)}
    rows, _ = _check_fastest_first(_rows(("a-int8", 2.0, 14), ("b-int8", 30.0, 14)), [], runners, lambda r: runners[r["name"]], pool)
    by = {r["name"]: r for r in rows}
    assert not any(r["eligible"] for r in rows)
    assert by["b-int8"]["agreement_with_fakequant"] > by["a-int8"]["agreement_with_fakequant"]  # both measured
    assert "not_checked" not in by["b-int8"]


def test_a_candidate_failing_on_the_pool_is_reported_failed() -> None:
    def broken(inputs):
        raise RuntimeError("kernel crashed")

    pool = PoolLogits(Classifier(), _features(POOL), 32, 0, "ref")
    runners = {"a-int8": broken, "b-int8": Classifier()}
    rows, failed = _check_fastest_first(_rows(("a-int8", 2.0, 14), ("b-int8", 3.0, 14)), [], runners, lambda r: runners[r["name"]], pool)
    assert [r["name"] for r in rows] == ["b-int8"] and rows[0]["eligible"]
    assert failed == [{"name": "a-int8", "engine": "a", "precision": "int8", "status": "failed",
                       "error": "RuntimeError: kernel crashed"}]


def test_stages_add_up_in_order_and_count_a_failed_stage(fake_clock) -> None:
    stages = Stages()
    with stages.time("load"):
        fake_clock.sleep(0.02)
    with pytest.raises(ValueError), stages.time("peers: broken"):
        fake_clock.sleep(0.01)
        raise ValueError("peer failed")
    with stages.time("load"):  # timed again: adds up
        fake_clock.sleep(0.03)
    assert stages.seconds == {"load": pytest.approx(0.05), "peers: broken": pytest.approx(0.01)}
    assert list(stages.seconds) == ["load", "peers: broken"]
    assert stages.total() == pytest.approx(0.06)
    assert stages.to_list() == [{"stage": "load", "seconds": 0.05}, {"stage": "peers: broken", "seconds": 0.01}]


def test_stage_line_sums_groups_and_compares_with_nncf() -> None:
    record = {"seconds": [{"stage": "load", "seconds": 2.0}, {"stage": "compile: a", "seconds": 1.5},
                          {"stage": "compile: b", "seconds": 0.5}], "total_s": 4.0, "to_int8_engine_s": 3.0,
              "nncf_quantize_compile_s": 2.0}
    assert stage_groups(record) == {"load": 2.0, "compile": 2.0}
    assert stage_line(record) == ("stages (s): load 2.0, compile 2.0; total 4.0; loaded model -> selected int8 "
                                  "engine 3.0 s (NNCF quantize + compile 2.0 s; ours / NNCF's 1.50x)")
