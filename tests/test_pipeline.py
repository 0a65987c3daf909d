"""The pipeline on a tiny model and the user's own CSV files: report files, kernel evidence, steps, fallback, and the
--backend auto selection rule on engines with set speeds and agreements."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ptqkit import selection
from ptqkit.backends.base import KernelEvidence, ModelForms
from ptqkit.bench import Shape
from ptqkit.config import RunConfig
from ptqkit.data import calibration_batches
from ptqkit.loading import load
from ptqkit.pipeline import run
from ptqkit.recipe import auto_fallback, calibrate
from ptqkit.stages import Stages

REPO = Path(__file__).resolve().parent.parent
VNNI_ISAS = ("avx_vnni", "avx512_vnni", "amx")  # x86 int8 levels whose pair sums do not saturate


def test_run_writes_reports_with_kernel_evidence(tiny, tiny_run: tuple[RunConfig, dict]) -> None:
    cfg, rep = tiny_run
    out = Path(cfg.output_dir)
    for name in ("report.json", "report.md", "report.png", "model_fp32.onnx", "model_int8_qdq.onnx",
                 "model_int8_fakequant.pt", "quant_state/quant_state.json", "quant_state/observers.safetensors"):
        assert (out / name).is_file(), name
    assert json.loads((out / "report.json").read_text()) == rep
    by_name = {v["name"]: v for v in rep["variants"]}
    assert rep["task"] == "custom" and rep["eval_examples"] == 40
    # --backend auto (the default) built every installed engine's int8 variants and kept one by the stated rule
    sel = rep["backend_selection"]
    cands = {c["name"]: c for c in sel["candidates"]}
    assert set(cands) == {"openvino-int8", "openvino-int8-bf16", "onnxruntime-int8"}
    # --int8-attention auto under --backend auto: on where x86 has VNNI, off where 16-bit pair sums saturate
    attention = rep["quantization"]["config"]["attention_matmuls"]
    assert attention == (rep["cpu"]["int8_isa"] in VNNI_ISAS)
    extra = tiny.ATTENTION_KERNELS if attention else dict.fromkeys(tiny.ATTENTION_KERNELS, 0)
    assert all(c["int8_kernels"] == tiny.LINEARS + extra[c["engine"]] for c in cands.values()), cands
    for c in cands.values():  # the rule itself is test_selection_*'s, on fixed inputs; here: every candidate was timed
        assert c["median_ms"] > 0 and c["engine_fp32_ms"] > 0 and isinstance(c["eligible"], bool), c
        if "not_checked" in c:  # slower than an eligible candidate, or unable to win: never checked
            assert not c["eligible"] and "agreement_with_fakequant" not in c, c
            continue
        assert c["agreement_sentences"] == 120 - 2 * 8 and 0 <= c["agreement_with_fakequant"] <= 1, c
        assert 0 <= c["mean_logit_error"] < 1, c
    assert sel["agreement_data"] == f"{120 - 2 * 8} held-out train sentences"  # all train rows but the calibration ones
    assert sel["fakequant_reference"] == "pytorch-fakequant"
    assert sum(c["eligible"] for c in cands.values()) <= 1  # checked fastest first: the first eligible one ends the check
    assert sel["chosen"] in cands and sel["reason"]
    ours = by_name[sel["chosen"]]
    engine = cands[sel["chosen"]]["engine"]
    assert [v["name"] for v in rep["variants"][:4]] == ["pytorch-fp32", "pytorch-fakequant", f"{engine}-fp32", sel["chosen"]]
    assert rep["quantization"]["points"] == tiny.LINEARS + (tiny.ATTENTION_POINTS if attention else 0)
    assert ours["int8_kernels"] == tiny.LINEARS + extra[engine]
    assert by_name[f"{engine}-fp32"]["int8_kernels"] == 0
    assert ours["agreement_with_fakequant"] >= 0.9
    assert rep["cpu"]["int8_isa"] == rep["quantization"]["config"]["isa"]
    assert "latency_ms" in by_name["pytorch-fp32"] and "latency_ms" not in by_name["pytorch-fakequant"]
    md = (out / "report.md").read_text()
    assert "## Kernel evidence" in md and f"## Engine selection (--backend auto): {sel['chosen']}" in md
    assert "| variant | agreement with fp32 | changed vs fp32 | accuracy |" in md  # fidelity is the first column
    # changed predictions: counted for every evaluated int8 variant, the first few of ours listed
    assert ours["changed_vs_fp32"] == round((1 - ours["agreement_with_fp32"]) * 40)
    assert len(ours["changed_examples"]) == min(5, ours["changed_vs_fp32"])
    assert f"## Changed predictions: {sel['chosen']} against PyTorch fp32 ({ours['changed_vs_fp32']} of 40" in md
    assert "## Throughput (sequences/s, from the same medians)" in md and "| variant | 2x16 1t |" in md
    # the engine's profiler beside the end-to-end median, for the engine's variants and the PyTorch baseline
    # (torch.profiler); the int8 GEMM limit
    for name in (f"{engine}-fp32", sel["chosen"], "pytorch-fp32"):
        cell = by_name[name]["profile"][0]
        assert (cell["batch"], cell["seq_len"], cell["threads"]) == (1, 16, 1) and cell["gemm"] > 0
        assert cell["end_to_end"] > 0 and cell["outside"] >= 0
    assert "profile" not in by_name["pytorch-fakequant"]  # not timed, not profiled
    (limit,) = rep["limits"]
    assert limit["engine"] == engine and limit["peaks"][0]["peak_gmac_s"] > 0
    assert [r["name"] for r in limit["rows"] if r["batch"] == 1] == [v["name"] for v in rep["variants"]
                                                   if v.get("engine") == engine and v.get("profile")
                                                   and v["precision"].startswith("int8")]
    assert "## Engine time" in md and "## Limit" in md
    # every stage timed: the stages cover the run, ours beside nothing (no peers here) in one printed line
    stages = {r["stage"] for r in rep["stages"]["seconds"]}
    assert {"load", "capture", "calibrate: observers", "export: int8 onnx", 
            "auto check: timing", f"compile: {engine}-fp32", f"evaluate: {sel['chosen']}", "timing"} <= stages
    assert 0 < rep["stages"]["to_int8_engine_s"] < rep["stages"]["total_s"]
    assert "## Where the time went" in md
    assert not list(out.glob(".*tmp*")), "temp files left behind"


POOL = 100  # held-out sentences: one argmax flip is agreement 0.99, exactly MIN_AGREEMENT
FAKEQUANT = np.tile([[1.0, 0.0]], (POOL, 1))  # the fake-quant model predicts class 0 for every sentence


class SetRunner:
    """A compiled variant with a set speed, set argmax flips against FAKEQUANT and a set int8 kernel count."""

    def __init__(self, clock, label: str, ms: float, flips: int, int8_kernels: int):
        self.call, self.flips, self.int8 = clock.runner(label, ms), flips, int8_kernels

    def __call__(self, inputs: dict) -> np.ndarray:
        self.call(inputs)
        logits = np.tile([[1.0, 0.0]], (len(inputs["input_ids"]), 1))
        logits[: self.flips] = [0.0, 1.0]
        return logits

    def kernels(self) -> KernelEvidence:
        return KernelEvidence(int8=self.int8)


class SetEngine:
    """An engine whose fp32 takes `fp32_ms` per call and whose int8 variants are (ms, flips, int8 kernels)."""

    takes = "onnx"

    def __init__(self, clock, name: str, fp32_ms: float, variants: dict[str, tuple[float, int, int]],
                 broken: bool = False):
        self.clock, self.name, self.fp32_ms, self.variants, self.broken = clock, name, fp32_ms, variants, broken
        self.int8_variants = tuple(variants)

    def compile(self, path: str, threads: int, precision: str = "fp32") -> SetRunner:
        if self.broken:
            raise RuntimeError("cannot compile this graph\nwith a long traceback")
        ms, flips, kernels = (self.fp32_ms, 0, 0) if precision == "fp32" else self.variants[precision]
        return SetRunner(self.clock, f"{self.name}-{precision}", ms, flips, kernels)


def _select(engines: list[SetEngine], clock, monkeypatch, work_threads: int | None = None) -> selection.Selection:
    by_name = {e.name: e for e in engines}
    monkeypatch.setattr(selection, "installed_engines", lambda: list(by_name))
    monkeypatch.setattr(selection, "get_backend", by_name.__getitem__)
    features = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1]}] * POOL
    reference = SetRunner(clock, "fake-quant reference", 20.0, 0, 0)  # FAKEQUANT's logits on every sentence
    return selection.select_engine(ModelForms(onnx={"fp32": "fp32.onnx", "int8": "int8.onnx"}), reference,
                                   "pytorch-fakequant", features, "held-out train sentences", POOL, 0,
                                   ("input_ids", "attention_mask"), 100, Shape(1, 8), 1, Stages(), work_threads)


def test_selection_keeps_the_fastest_eligible_candidate(fake_clock, monkeypatch) -> None:
    """Eligible: agreement >= 0.99 with the fake-quant model, int8 kernels, strictly faster than the engine's fp32.
    Candidates are checked fastest first and the first eligible one wins: slower ones are never checked."""
    engines = [
        SetEngine(fake_clock, "alpha", 10.0, {"int8": (4.0, 1, 14)}),  # eligible at exactly 0.99
        SetEngine(fake_clock, "beta", 10.0, {"int8": (3.0, 2, 14), "int8-bf16": (5.0, 0, 14)}),  # 0.98 / slower
        SetEngine(fake_clock, "gamma", 10.0, {"int8": (2.0, 0, 0)}),  # fastest, but no int8 kernels ran
        SetEngine(fake_clock, "delta", 9.0, {"int8": (9.0, 0, 14)}),  # no faster than its fp32
        SetEngine(fake_clock, "broken", 1.0, {"int8": (1.0, 0, 14)}, broken=True),
    ]
    sel = _select(engines, fake_clock, monkeypatch)
    rows = {c["name"]: c for c in sel.record["candidates"]}
    assert {n: c.get("eligible") for n, c in rows.items()} == {
        "alpha-int8": True, "beta-int8": False, "beta-int8-bf16": False, "gamma-int8": False, "delta-int8": False,
        "broken-int8": None}
    assert {n: c["agreement_with_fakequant"] for n, c in rows.items() if "agreement_with_fakequant" in c} == {
        "alpha-int8": 0.99, "beta-int8": 0.98}
    assert rows["beta-int8-bf16"]["not_checked"] == "not checked: the faster alpha-int8 is eligible"
    assert rows["gamma-int8"]["not_checked"].startswith("not checked: no int8 kernels")
    assert (rows["beta-int8-bf16"]["median_ms"], rows["beta-int8-bf16"]["engine_fp32_ms"]) == (5.0, 10.0)
    assert rows["broken-int8"]["status"] == "failed"
    assert rows["broken-int8"]["error"] == "RuntimeError: cannot compile this graph"
    assert sel.record["chosen"] == "alpha-int8" and sel.engine is engines[0] and sel.precision == "int8"
    assert sel.record["reason"].startswith("fastest of the candidates")
    assert set(sel.runners) == {"alpha-fp32", "alpha-int8", "beta-fp32", "beta-int8", "beta-int8-bf16", "gamma-fp32",
                                "gamma-int8", "delta-fp32", "delta-int8"}


def test_selection_checks_on_a_copy_compiled_for_the_work_threads(fake_clock, monkeypatch) -> None:
    """Timing runs at one thread; the untimed check on a copy compiled for the work threads, one per checked
    candidate (what evaluation then reuses)."""
    engines = [SetEngine(fake_clock, "alpha", 10.0, {"int8": (4.0, 1, 14)}),
               SetEngine(fake_clock, "beta", 10.0, {"int8": (3.0, 2, 14), "int8-bf16": (5.0, 0, 14)})]
    sel = _select(engines, fake_clock, monkeypatch, work_threads=2)
    assert sel.record["chosen"] == "alpha-int8"
    assert set(sel.work_runners) == {"alpha-int8", "beta-int8"}  # beta-int8-bf16 was never checked
    assert all(sel.work_runners[n] is not sel.runners[n] for n in sel.work_runners)
    assert _select(engines, fake_clock, monkeypatch, work_threads=1).work_runners == {}


def test_selection_without_an_eligible_candidate_keeps_the_most_faithful(fake_clock, monkeypatch) -> None:
    """No candidate passes: the highest agreement wins, the faster one among equals."""
    sel = _select([SetEngine(fake_clock, "fast", 10.0, {"int8": (2.0, 5, 14)}),  # fastest, least faithful
                   SetEngine(fake_clock, "slow", 9.0, {"int8": (9.5, 0, 14)}),  # faithful, slower than its fp32
                   SetEngine(fake_clock, "noint8", 10.0, {"int8": (4.0, 0, 0)})], fake_clock, monkeypatch)  # faithful, no int8
    assert sel.record["chosen"] == "noint8-int8"
    assert sel.record["reason"].startswith("no candidate met every condition")


def test_selection_with_no_working_engine_fails(fake_clock, monkeypatch) -> None:
    with pytest.raises(RuntimeError, match="no engine could run our int8 model: a-int8: RuntimeError: cannot compile"):
        _select([SetEngine(fake_clock, "a", 1.0, {"int8": (1.0, 0, 1)}, broken=True)], fake_clock, monkeypatch)


@pytest.fixture(scope="module")
def calibrated(user_cfg: RunConfig):
    """(loaded, calibration batches, quantizer) of the pipeline's calibration on user_cfg: copy the quantizer."""
    ld = load(user_cfg)
    calib = calibration_batches(ld.task, ld.tokenizer, 2, 8, 32)
    q, _ = calibrate(ld, user_cfg, calib)
    return ld, calib, q


@pytest.mark.parametrize("budget, everything", [(100.0, False), (-101.0, True)])
def test_auto_fallback_extremes(user_cfg: RunConfig, calibrated, budget: float, everything: bool) -> None:
    """A loose budget keeps every layer int8; an impossible one leaves every point (attention matmuls included)
    in fp32."""
    ld, calib, q = calibrated
    q = copy.deepcopy(q)
    auto_fallback(q, ld, replace(user_cfg, max_accuracy_drop=budget), calib, holdout_size=40)
    expected = len(q.points) if everything else 0
    assert len(q.fallback_layers) == expected
    assert len(q.quantized_points()) == len(q.points) - expected


@pytest.mark.slow  # three CLI processes, each loading torch and both engines: ~55 s on a 2-core AVX2 machine
def test_step_clis_calib_export_bench(user_cfg: RunConfig, tmp_path: Path) -> None:
    """calib.py -> export.py -> bench.py as separate, resumable processes."""
    common = ["--model", user_cfg.model, "--train-file", user_cfg.train_file, "--validation-file", user_cfg.validation_file,
              "--output-dir", str(tmp_path), "--batch-size", "8", "--max-seq-len", "32"]
    env = {**os.environ, "PTQKIT_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    steps = [["calib.py", "--calib-batches", "2", "--layer-report", "--int8-attention", "on"], ["export.py"],
             ["bench.py", "--shapes", "1x16", "--rounds", "2", "--backends", "openvino,onnxruntime"]]
    for script, *extra in steps:
        res = subprocess.run([sys.executable, str(REPO / script), *common, *extra], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, f"{script}: {res.stderr[-2000:]}"
    assert (tmp_path / "calib_summary.json").is_file() and (tmp_path / "model_int8_qdq.onnx").is_file()
    state = json.loads((tmp_path / "quant_state" / "quant_state.json").read_text())
    assert state["config"]["attention_matmuls"] and len(state["points"]) == 14 + 4  # export.py converted them too
    layers = json.loads((tmp_path / "layer_report.json").read_text())["layers"]
    assert len(layers) == 14 and layers[0]["local_sqnr"] <= layers[-1]["local_sqnr"]
    bench = json.loads((tmp_path / "bench.json").read_text())
    assert {v["name"] for v in bench["variants"]} == {"pytorch-fp32", "openvino-fp32", "openvino-int8",
                                                      "onnxruntime-fp32", "onnxruntime-int8"}
    # each variant's profiler split (torch.profiler for PyTorch) and each engine's int8 GEMM limit
    assert all(len(v.get("profile", [])) == 1 for v in bench["variants"])
    assert [(lim["engine"], [r["name"] for r in lim["rows"]]) for lim in bench["limits"]] == [
        ("openvino", ["openvino-int8"]), ("onnxruntime", ["onnxruntime-int8"])]
    assert "of the measured int8 peak" in res.stdout


def test_smoothquant_state_reloads_onto_checkpoint(user_cfg: RunConfig, tmp_path: Path) -> None:
    """Smoothing changes weights, not outputs; the saved state carries the smoothed weights."""
    import torch

    from ptqkit.quantizer import Quantizer

    ld = load(user_cfg)
    calib = calibration_batches(ld.task, ld.tokenizer, 2, 8, 32)
    batch = calib[0]
    with torch.no_grad():
        before = ld.model(**batch).logits
    q, steps = calibrate(ld, replace(user_cfg, smoothquant=0.5), calib)
    assert steps["smoothed"] == [f"bert.encoder.layer.{i}.attention.output.dense" for i in range(2)]
    with torch.no_grad():
        assert torch.allclose(ld.model(**batch).logits, before, rtol=1e-4, atol=1e-5)
        expected = q.quantize()(**batch).logits
    q.save(tmp_path / "state")
    checkpoint = load(user_cfg).model  # unsmoothed weights, as export.py would load them
    with torch.no_grad():
        assert torch.equal(Quantizer.load(tmp_path / "state", checkpoint).quantize()(**batch).logits, expected)


class _FailingRunner:
    """An engine that compiles but raises on inference, as OpenVINO did inside NNCF's DeBERTa-v2 model."""

    input_names = ("input_ids", "attention_mask", "token_type_ids")

    def __call__(self, inputs):
        raise RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:189:\nCheck '::getPort(port, name, "
                           "{...})' failed at src/inference/src/cpp/infer_request.cpp:191:\nPort for tensor name x was "
                           "not found.\n\n")

    def kernels(self):
        from ptqkit.backends.base import KernelEvidence

        return KernelEvidence(int8=1)


def test_failing_peers_are_reported_and_the_rest_still_runs(quick_cfg: RunConfig, tmp_path: Path, monkeypatch) -> None:
    from ptqkit import peers

    def nncf_raises(*args, **kwargs):
        raise ValueError("NNCF cannot quantize this graph\nwith a long traceback")

    monkeypatch.setattr(peers, "nncf_int8", nncf_raises)
    monkeypatch.setattr(peers, "openvino_bf16", lambda onnx: peers.Peer("openvino-bf16", "openvino", "bf16",
                                                                        lambda t: _FailingRunner()))
    val = tmp_path / "val.csv"  # with an empty text: counted in the report, not silently passed
    val.write_text(Path(quick_cfg.validation_file).read_text() + '"",1\n')
    rep = run(replace(quick_cfg, skip_peers=False, output_dir=str(tmp_path), validation_file=str(val), backend="openvino"))
    assert rep["empty_texts"] == {"validation": 1} and rep["eval_examples"] == 41
    by_name = {v["name"]: v for v in rep["variants"]}
    assert by_name["nncf-openvino-int8"]["status"] == "failed"
    assert by_name["nncf-openvino-int8"]["error"] == "ValueError: NNCF cannot quantize this graph"
    assert by_name["openvino-bf16"]["error"] == "RuntimeError: Port for tensor name x was not found."
    for name in ("nncf-openvino-int8", "openvino-bf16"):
        assert "metrics" not in by_name[name] and "latency_ms" not in by_name[name]
    for name in ("pytorch-fp32", "openvino-int8", "onnxruntime-dynamic-int8", "pytorch-dynamic-int8"):
        assert "metrics" in by_name[name] and by_name[name]["latency_ms"], name
        assert "status" not in by_name[name]
    md = (tmp_path / "report.md").read_text()
    assert "## Failed" in md and "| nncf-openvino-int8 (peer) | ValueError: NNCF cannot quantize this graph |" in md
    assert json.loads((tmp_path / "report.json").read_text()) == rep


def test_own_int8_failure_still_fails_the_run(quick_cfg: RunConfig, tmp_path: Path, monkeypatch) -> None:
    """Only peers and optional engines are isolated: our own int8 failing is the run failing."""
    from ptqkit.backends.openvino import OpenVINOBackend

    compile_ = OpenVINOBackend.compile
    monkeypatch.setattr(OpenVINOBackend, "compile", lambda self, path, t, precision="fp32": _FailingRunner()
                        if precision == "int8" else compile_(self, path, t, precision))
    with pytest.raises(RuntimeError, match="Port for tensor name x"):
        run(replace(quick_cfg, output_dir=str(tmp_path), backend="openvino"))  # forced: our int8 is this engine's


def test_auto_survives_a_failing_engine(quick_cfg: RunConfig, tmp_path: Path, monkeypatch) -> None:
    """--backend auto: an engine that cannot run our int8 is a failed candidate; another engine is chosen."""
    from ptqkit.backends.openvino import OpenVINOBackend

    compile_ = OpenVINOBackend.compile
    monkeypatch.setattr(OpenVINOBackend, "compile", lambda self, path, t, precision="fp32": _FailingRunner()
                        if precision.startswith("int8") else compile_(self, path, t, precision))
    rep = run(replace(quick_cfg, output_dir=str(tmp_path)))
    sel = rep["backend_selection"]
    assert sel["chosen"] == "onnxruntime-int8"
    failed = {c["name"]: c for c in sel["candidates"] if c.get("status") == "failed"}
    assert set(failed) == {"openvino-int8", "openvino-int8-bf16"}
    assert failed["openvino-int8"]["error"] == "RuntimeError: Port for tensor name x was not found."
    assert "metrics" in {v["name"]: v for v in rep["variants"]}["onnxruntime-int8"]
