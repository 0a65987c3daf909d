"""Recipe sweeps on a local Ray with 2 CPUs: a 2-recipe sweep on the tiny model, a failing recipe, resume."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptqkit.errors import UserError
from ptqkit.sweep import pareto_front
from ptqkit.sweep_grid import Recipe, parse_grid
from ptqkit.sysinfo import SATURATING_ISAS, host_int8_isa

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def task_files(tmp_path_factory, write_csv) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("sweep-data")
    return write_csv(d / "train.csv", 200, 0), write_csv(d / "val.csv", 40, 1)


def _sweep(out: Path, model: Path, files: tuple[Path, Path], *grid: str, wait: bool = True):
    cmd = [sys.executable, str(REPO / "sweep.py"), "--model", str(model), "--train-file", str(files[0]),
           "--validation-file", str(files[1]), "--output-dir", str(out), "--batch-size", "8", "--max-seq-len", "32",
           "--calib-batches", "2", "--holdout", "40", "--rounds", "3", "--workers", "2", *grid]
    env = {**os.environ, "PTQKIT_CACHE": str(out / "cache"), "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_grid_from_flags_and_file(tmp_path: Path) -> None:
    recipes = parse_grid({"calib_method": "minmax,entropy", "smoothquant": "off,0.5", "backend": "openvino,onnxruntime"}, None)
    assert len(recipes) == 8 and Recipe("minmax", 0.5, None, "onnxruntime") in recipes
    path = tmp_path / "grid.yaml"
    path.write_text("- {calib_method: mse, backend: onnxruntime}\n- {max_accuracy_drop: 0.3}\n")
    assert parse_grid({}, str(path)) == [Recipe("mse", backend="onnxruntime"), Recipe(max_accuracy_drop=0.3)]
    rounding = parse_grid({"weight_rounding": "nearest,gptq"}, None)
    assert [r.weight_rounding for r in rounding] == ["nearest", "gptq"] and rounding[1].label() == "openvino/default/gptq"
    for bad in ({"backend": "inductor"}, {"smoothquant": "strong"}, {"weight_rounding": "adaround"}):
        with pytest.raises(UserError):
            parse_grid(bad, None)
    path.write_text('[{"calib": "mse"}]')
    with pytest.raises(UserError, match="unknown recipe key"):
        parse_grid({}, str(path))


def test_pareto_front_keeps_undominated() -> None:
    def rec(acc, ms):
        return {"status": "ok", "holdout": {"accuracy": acc, "latency_ms": ms}}
    a, b, c, d = rec(0.8, 10), rec(0.82, 12), rec(0.79, 11), rec(0.9, 30)
    assert pareto_front([a, b, c, d, {"status": "failed"}], "accuracy") == [a, b, d]


@pytest.mark.slow  # a local Ray cluster and three Tune trials: ~65 s on a 2-core AVX2 machine
def test_two_recipe_sweep_and_a_failing_recipe(tiny, tmp_path: Path, tiny_model_dir: Path, task_files) -> None:
    """Two good recipes and one with a bad calibration method: the bad one fails alone, with its one-line error."""
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([{"calib_method": "minmax"}, {"calib_method": "minmax", "backend": "onnxruntime"},
                                {"calib_method": "bogus"}]))
    res = _sweep(tmp_path, tiny_model_dir, task_files, "--grid", str(grid), "--choose-within", "100")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rep = json.loads((tmp_path / "sweep.json").read_text())
    status = {r["label"]: r["status"] for r in rep["recipes"]}
    assert status == {"openvino/minmax": "ok", "onnxruntime/minmax": "ok", "openvino/bogus": "failed"}
    failed = next(r for r in rep["recipes"] if r["status"] == "failed")
    assert "bogus" in failed["error"] and "\n" not in failed["error"]
    ok = [r for r in rep["recipes"] if r["status"] == "ok"]
    # --int8-attention auto follows each recipe's engine (OpenVINO: on where the ISA has VNNI; ONNX Runtime: off)
    attention = host_int8_isa() not in SATURATING_ISAS
    for r in ok:
        engine = r["recipe"]["backend"]
        assert r["holdout"]["int8_kernels"] == tiny.int8_kernels(engine, attention and engine == "openvino")
        assert r["holdout"]["threads"] == 1
    assert rep["workers"] == 2 and rep["chosen"]["label"] in rep["pareto_front"]
    assert set(rep["chosen"]["final"]) == {"validation", "latency_ms"}
    assert {"openvino-fp32", "onnxruntime-fp32"} >= set(rep["retimed"]["fp32_ms"])
    assert (tmp_path / "sweep.md").is_file() and (tmp_path / "sweep.png").is_file()
    assert f"re-timed: {rep['cpu']['model']} (" in (tmp_path / "sweep.md").read_text()  # where latencies came from


def _trial_results(out: Path) -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in (out / "ray" / "sweep").glob("*/result.json") if p.read_text().strip()}


@pytest.mark.slow
def test_interrupted_sweep_resumes_only_unfinished(tmp_path: Path, tiny_model_dir: Path, task_files) -> None:
    """Ctrl+C after the first recipe finished; the rerun keeps that one (its result untouched) and runs the rest."""
    grid = ["--calib-method", "minmax,percentile,mse", "--workers", "1", "--choose-within", "100"]
    proc = _sweep(tmp_path, tiny_model_dir, task_files, *grid, wait=False)
    deadline = time.time() + 300
    while not _trial_results(tmp_path) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    first = _trial_results(tmp_path)
    assert proc.returncode != 0 and "rerun the same command to resume" in out, out[-3000:]
    assert 1 <= len(first) < 3
    res = _sweep(tmp_path, tiny_model_dir, task_files, *grid)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming the sweep" in res.stdout
    after = _trial_results(tmp_path)
    assert len(after) == 3 and all(after[name] == text for name, text in first.items())
    rep = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["status"] for r in rep["recipes"]] == ["ok"] * 3
