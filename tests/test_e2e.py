"""End-to-end on the default model (fine-tuned once, cached under $PTQKIT_CACHE): the report contract and bars."""
from __future__ import annotations

import json

import pytest

from ptqkit.bench import BenchConfig, Shape
from ptqkit.pipeline import RunConfig, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("e2e")
    cfg = RunConfig(output_dir=str(out), skip_peers=True, bench=BenchConfig(shapes=(Shape(1, 128),), rounds=3, warmup=1))
    run(cfg)
    return json.loads((out / "report.json").read_text())


def test_report_contract(report: dict) -> None:
    assert report["device"] == "x86" and report["task"] == "rotten_tomatoes" and report["eval_examples"] == 1000
    assert isinstance(report["cpu"]["model"], str) and isinstance(report["cpu"]["flags"], list)
    assert "torch" in report["versions"]
    names = [v["name"] for v in report["variants"]]
    assert names[:2] == ["pytorch-fp32", "pytorch-fakequant"] and report["backend_selection"]["chosen"] in names
    for v in report["variants"]:
        assert {"name", "engine", "precision", "metrics"} <= set(v)
        assert 0.0 <= v["metrics"]["accuracy"] <= 1.0
    lat = report["variants"][0]["latency_ms"][0]
    assert (lat["batch"], lat["seq_len"], lat["threads"]) == (1, 128, 1) and 0 < lat["median"] <= lat["p90"]


def test_fp32_accuracy_bar(report: dict) -> None:
    assert report["variants"][0]["metrics"]["accuracy"] >= 0.80


def test_int8_runs_int8_kernels_and_agrees(report: dict) -> None:
    int8 = next(v for v in report["variants"] if v["name"] == report["backend_selection"]["chosen"])
    assert int8["int8_kernels"] == report["quantization"]["points"] == 38
    assert int8["agreement_with_fakequant"] >= 0.97
    assert int8["latency_ms"][0]["median"] < next(v for v in report["variants"] if v["name"] == f"{int8['engine']}-fp32")["latency_ms"][0]["median"]
    fp32 = report["variants"][0]["metrics"]["accuracy"]
    assert int8["metrics"]["accuracy"] >= fp32 - 0.01
