"""End-to-end on the default model (fine-tuned once, cached under $PTQKIT_CACHE): the report contract and bars."""
from __future__ import annotations

import json

import pytest

from ptqkit.bench import BenchConfig, Shape
from ptqkit.config import RunConfig
from ptqkit.pipeline import run

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
    fp32 = report["variants"][0]["metrics"]["accuracy"]
    for v in report["variants"][1:]:  # every variant is evaluated and predicts (almost) what fp32 predicts
        assert {"name", "engine", "precision", "metrics"} <= set(v)
        assert v["agreement_with_fp32"] >= 0.95 and abs(v["metrics"]["accuracy"] - fp32) <= 0.02, v["name"]
    lat = report["variants"][0]["latency_ms"][0]
    assert (lat["batch"], lat["seq_len"], lat["threads"], lat["samples"]) == (1, 128, 1, 3)
    assert lat["throughput_seq_s"] == round(1e3 / lat["median"], 2)


def test_fp32_accuracy_bar(report: dict) -> None:
    assert report["variants"][0]["metrics"]["accuracy"] >= 0.80


def test_int8_runs_int8_kernels_and_agrees(report: dict) -> None:
    int8 = next(v for v in report["variants"] if v["name"] == report["backend_selection"]["chosen"])
    # 38 linears; int8 attention (--int8-attention) adds 12 matmul points, run by OpenVINO as 6 int8
    # attention subgraphs and by ONNX Runtime as 12 int8 matmuls
    attention = report["quantization"]["config"]["attention_matmuls"]
    assert report["quantization"]["points"] == 38 + (12 if attention else 0)
    assert int8["int8_kernels"] == 38 + (({"openvino": 6, "onnxruntime": 12}[int8["engine"]]) if attention else 0)
    assert int8["agreement_with_fakequant"] >= 0.97
    assert int8["latency_ms"][0]["median"] < next(v for v in report["variants"] if v["name"] == f"{int8['engine']}-fp32")["latency_ms"][0]["median"]
    fp32 = report["variants"][0]["metrics"]["accuracy"]
    assert int8["metrics"]["accuracy"] >= fp32 - 0.01
    assert int8["agreement_with_fp32"] >= 0.985  # the fidelity bar; measured 0.993 (affine, runtime-smoothed)


def test_engine_profile_and_limit(report: dict) -> None:
    """The chosen int8's profiler split is coherent on the real model: the 38 int8 GEMMs take the largest share,
    and its GEMM MACs (from the config) over the GEMM time land near the measured peak. Loose bounds: a shared
    machine moves timings, a wrong MAC count or op-kind mapping moves them by multiples."""
    chosen = next(v for v in report["variants"] if v["name"] == report["backend_selection"]["chosen"])
    (cell,) = chosen["profile"]
    assert cell["gemm"] == max(cell[k] for k in ("gemm", "attention", "norm_act", "other")), cell
    assert 0.5 < cell["engine"] / cell["end_to_end"] < 1.5, cell
    (limit,) = report["limits"]
    row = next(r for r in limit["rows"] if r["name"] == chosen["name"])
    assert row["gemm_macs"] == 1_359_102_720  # MiniLM-L6 at 1x128: 6 x 128 x (4 x 384^2 + 2 x 384 x 1536) + head
    assert 0.2 < row["gemm_share_of_peak"] < 1.5, row
