"""evaluate.py's library: fp32 vs int8 over a generated 10,000-row file through Ray Data (2 actors on a local Ray
with 2 CPUs) equals the single-process run row for row; JSON lines and Parquet inputs; bad input; an actor's
OpenVINO engine is not pinned to cores it may share."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from ptqkit.backends import get_backend
from ptqkit.bulk_eval import EvalConfig, run_eval
from ptqkit.errors import UserError


@pytest.fixture(scope="module")
def artefacts(tiny_run) -> Path:
    """bert_ptq.py's output dir of a tiny model (the fp32 and int8 ONNX files evaluate.py compares)."""
    cfg, _ = tiny_run
    return Path(cfg.output_dir)


def _cfg(artefacts: Path, tiny_model_dir: Path, path: Path, out: Path, **kw) -> EvalConfig:
    return EvalConfig(artifacts_dir=str(artefacts), input=str(path), output_dir=str(out), model=str(tiny_model_dir),
                      max_seq_len=32, batch_size=64, predictions=True, **kw)


@pytest.mark.slow  # a local Ray cluster and 10,000 rows twice: ~35 s on a 2-core AVX2 machine
def test_ray_data_equals_single_process_row_for_row(artefacts, tiny_model_dir, tmp_path: Path, words) -> None:
    rng = random.Random(3)
    path = tmp_path / "rows.csv"
    path.write_text("review,label\n" + "".join(
        f"{' '.join(rng.choice(words) for _ in range(rng.randint(1, 40)))},{rng.randint(0, 1)}\n" for _ in range(10_000)))
    ray_rep = run_eval(_cfg(artefacts, tiny_model_dir, path, tmp_path / "ray", actors=2))
    local_rep = run_eval(_cfg(artefacts, tiny_model_dir, path, tmp_path / "local", local=True))
    ray_pred = (tmp_path / "ray" / "predictions.csv").read_text().splitlines()
    assert len(ray_pred) == 10_001 and ray_pred == (tmp_path / "local" / "predictions.csv").read_text().splitlines()
    assert ray_rep["rows"] == 10_000 and ray_rep["first_batch_s"] <= ray_rep["wall_s"]
    assert ray_rep["workers"] == {"mode": "ray data", "actors": 2, "cpus_per_actor": 1, "engine_threads": 1,
                                  "cluster_cpus": 3}
    assert local_rep["workers"] == {"mode": "single process", "actors": 0, "engine_threads": 1}
    for key in ("agreement", "disagreements", "metrics"):
        assert ray_rep[key] == local_rep[key]
    rows = [json.loads(line) for line in (tmp_path / "ray" / "disagreements.jsonl").read_text().splitlines()]
    assert len(rows) == ray_rep["disagreements"] and all(r["fp32"] != r["int8"] and r["text"] for r in rows)
    assert set(ray_rep["metrics"]["int8"]) == {"accuracy", "f1"}


def test_jsonl_and_parquet_without_labels(artefacts, tiny_model_dir, tmp_path: Path, monkeypatch, words) -> None:
    import pandas as pd

    scratch = tmp_path / "scratch"  # where the engines' model copies go while they load
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))

    df = pd.DataFrame({"text": [" ".join(random.Random(i).choice(words) for _ in range(8)) for i in range(50)],
                       "source": ["a", "b"] * 25})
    df.to_json(tmp_path / "rows.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "rows.parquet")
    reps = [run_eval(_cfg(artefacts, tiny_model_dir, tmp_path / name, tmp_path / name.replace(".", "_"), local=True,
                          where="source=b")) for name in ("rows.jsonl", "rows.parquet")]
    assert reps[0]["rows"] == reps[1]["rows"] == 25 and "metrics" not in reps[0]
    assert reps[0]["agreement"] == reps[1]["agreement"]
    assert list(scratch.iterdir()) == []  # no model copies left behind


def test_bad_input_is_one_line(artefacts, tiny_model_dir, tmp_path: Path, write_csv) -> None:
    (tmp_path / "rows.txt").write_text("x")
    with pytest.raises(UserError, match="unsupported file type"):
        run_eval(_cfg(artefacts, tiny_model_dir, tmp_path / "rows.txt", tmp_path / "o"))
    csv = write_csv(tmp_path / "rows.csv", 5, 0)
    with pytest.raises(UserError, match="model_fp32.onnx not found"):
        run_eval(_cfg(tmp_path, tiny_model_dir, csv, tmp_path / "o"))
    with pytest.raises(UserError, match="--where"):
        run_eval(_cfg(artefacts, tiny_model_dir, csv, tmp_path / "o", where="nope=1"))


def test_openvino_pins_only_when_it_has_every_core(artefacts) -> None:
    """OpenVINO pins to the first cores of the process's mask: two one-thread actors on a 2-core node both ran on
    core 0 (2 actors were no faster than 1). An engine with fewer threads than the usable cores must not pin."""
    import os

    cores = len(os.sched_getaffinity(0))
    for threads in (1, cores):
        runner = get_backend("openvino").compile(artefacts / "model_fp32.onnx", threads)
        assert runner.compiled.get_property("ENABLE_CPU_PINNING") is (threads >= cores)
