"""The torch-free deployment runtime (ptqkit/runtime.py, predict.py) on an artefact dir from a tiny model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptqkit import runtime
from ptqkit.artifacts import Layout
from ptqkit.backends import FILE_ENGINES
from ptqkit.data import Example, encode
from ptqkit.errors import UserError
from ptqkit.config import RunConfig
from ptqkit.loading import load

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def artefacts(tiny_run) -> tuple[Path, RunConfig]:
    """bert_ptq.py's artefact dir from a tiny classifier whose labels vary, and its config."""
    cfg, _ = tiny_run
    return Path(cfg.output_dir), cfg


def _host_check(out: Path) -> dict:
    return json.loads(Layout(out).host_check.read_text())


def test_artefact_dir_is_self_contained(artefacts) -> None:
    out, cfg = artefacts
    rc = json.loads(Layout(out).runtime_json.read_text())
    assert rc["model_file"] == "model_int8_qdq.onnx" and rc["max_seq_len"] == cfg.max_seq_len
    assert rc["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert rc["id2label"] == {"0": "LABEL_0", "1": "LABEL_1"} and rc["text_pairs"] is False
    assert (out / "tokenizer" / "tokenizer.json").is_file()
    host = _host_check(out)
    chosen = json.loads((out / "report.json").read_text())["backend_selection"]["chosen"]
    assert host["int8_engine"] == chosen and len(host["examples"]) == 40
    assert f"{rc['engine']}-{rc['precision']}" == chosen, "runtime.json names the variant the host served"
    assert len({e["int8_label"] for e in host["examples"]}) == 2, "labels must vary for the comparisons to mean anything"
    assert not list(out.glob(".*tmp*")) and not list(out.glob(".*.old")), "temp files left behind"


def test_the_served_engine_and_precision_follow_the_host_where_this_cpu_can(monkeypatch) -> None:
    from ptqkit.backends.openvino import OpenVINOBackend

    fields = {"model_file": "m.onnx", "input_names": ["input_ids"], "max_seq_len": 8, "pad_id": 0, "id2label": {},
              "text_pairs": False}
    old = runtime.RuntimeConfig.from_dict(fields)  # written before runtime.json named the engine
    assert (old.engine, old.precision) == ("", "") and old.served(None) == (FILE_ENGINES[0], "int8")
    rc = runtime.RuntimeConfig.from_dict(runtime.RuntimeConfig.from_dict(
        fields | {"engine": "openvino", "precision": "int8-bf16"}).to_dict())
    assert (rc.engine, rc.precision) == ("openvino", "int8-bf16")
    monkeypatch.setattr(OpenVINOBackend, "runs_here", classmethod(lambda cls, p: True))
    assert rc.served(None) == rc.served("openvino") == ("openvino", "int8-bf16")
    assert rc.served("onnxruntime") == ("onnxruntime", "int8"), "another engine runs its own plain int8"
    monkeypatch.setattr(OpenVINOBackend, "runs_here", classmethod(lambda cls, p: p == "int8"))
    assert rc.served(None) == ("openvino", "int8"), "a target without the host's bf16 runs f32 outside int8"
    with pytest.raises(UserError, match="unknown engine"):
        rc.served("tensorrt")


def test_tokenizer_matches_the_pipeline(artefacts) -> None:
    """Same ids as transformers' tokenizer, including truncation to max_seq_len."""
    out, cfg = artefacts
    ld = load(cfg)
    rc = runtime.RuntimeConfig.from_dict(json.loads(Layout(out).runtime_json.read_text()))
    tok = runtime.Tokenizer(out / "tokenizer" / "tokenizer.json", rc)
    texts = [e.text for e in ld.task.validation] + ["a " * 40 + "long one", "Émile's café, naïve!"]
    expected = encode(ld.tokenizer, [Example(t, 0) for t in texts], cfg.max_seq_len)
    assert tok.encode(texts) == expected
    assert max(len(f["input_ids"]) for f in expected) == cfg.max_seq_len


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_predict_cli_gives_the_host_int8_labels(artefacts, engine: str, tmp_path: Path) -> None:
    """predict.py over a file, JSON lines out, equals the labels of the pipeline's int8 variant."""
    out, _ = artefacts
    examples = _host_check(out)["examples"]
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(e["text"] for e in examples) + "\n")
    proc = subprocess.run([sys.executable, "predict.py", str(out), "--file", str(texts), "--engine", engine,
                           "--batch-size", "7", "--threads", "1"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["text"] for r in records] == [e["text"] for e in examples]
    assert [r["label_id"] for r in records] == [e["int8_label"] for e in examples]
    assert all(r["label"] == f"LABEL_{r['label_id']}" and len(r["logits"]) == 2 for r in records)


def test_predict_reads_arguments_and_stdin(artefacts) -> None:
    """Empty lines are kept, classified and counted, as the main command does with empty texts."""
    out, _ = artefacts
    args = subprocess.run([sys.executable, "predict.py", str(out), "good film", "", "dull plot"], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    stdin = subprocess.run([sys.executable, "predict.py", str(out)], input="good film\n \r\ndull plot\n", cwd=REPO,
                           env=ENV, capture_output=True, text=True, timeout=120)
    assert args.returncode == 0 and stdin.returncode == 0, args.stderr + stdin.stderr
    records = [json.loads(line) for line in args.stdout.splitlines()]
    assert [r["text"] for r in records] == ["good film", "", "dull plot"] and all("label" in r for r in records)
    assert [r["label_id"] for r in records] == [json.loads(line)["label_id"] for line in stdin.stdout.splitlines()]
    for proc in (args, stdin):
        assert "warning: 1 of 3 input(s) are empty" in proc.stderr


def test_empty_texts_are_counted_like_the_main_command() -> None:
    texts = runtime.read_texts([], None, ["a film\n", "\n", "  \t \r\n", "last"])
    assert texts == ["a film", "", "  \t ", "last"] and runtime.empty_texts(texts) == 2


def test_self_check_reports_kernels_and_agreement(tiny, artefacts, tmp_path: Path) -> None:
    out, _ = artefacts
    report = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, "predict.py", str(out), "--check", "--engine", "openvino,onnxruntime",
                           "--report", str(report)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=180)
    rep = json.loads(report.read_text())
    assert proc.returncode == (0 if rep["passed"] else 1), proc.stderr
    assert rep["cpu"]["arch"] and rep["sentences"] == 40
    ov, ort = rep["engines"]["openvino"], rep["engines"]["onnxruntime"]
    attention = json.loads((out / "report.json").read_text())["quantization"]["config"]["attention_matmuls"]
    assert ov["int8_kernels"] == tiny.int8_kernels("openvino", attention)
    assert ov["kernel_details"]["FullyConnected:u8"] == 14  # affine uint8 activations
    assert sum(v for k, v in ov["kernel_details"].items() if k.startswith("primitive:")) == 14
    assert ort["int8_kernels"] == tiny.int8_kernels("onnxruntime", attention)
    assert ort["kernel_details"]["MatMulIntegerToFloat"] >= 14
    assert ov["agreement_with_host_int8"] == 1.0
    for engine in (ov, ort):  # the verdict is the stated rule: int8 kernels ran and agreement >= 0.99
        assert engine["passed"] == (engine["int8_kernels"] > 0 and engine["agreement_with_host"] >= 0.99)
    assert rep["passed"] == (ov["passed"] and ort["passed"])


def test_runtime_runs_without_torch(artefacts) -> None:
    """Poison torch and transformers: importing predict.py and running the runtime must not need them."""
    out, _ = artefacts
    code = ("import sys\n"
            "for name in ('torch', 'transformers'):\n"
            "    sys.modules[name] = None\n"
            "import predict  # the CLI too: its flags (ptqkit.cli, config) load without torch\n"
            "from ptqkit.runtime import Classifier\n"
            f"print(next(Classifier({str(out)!r}, 'onnxruntime', 1).records(['good film']))['label'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() in ("LABEL_0", "LABEL_1")


@pytest.mark.parametrize("damage, message", [
    (lambda d: None, "does not exist"),
    (lambda d: d.mkdir(), "runtime.json not found"),
    (lambda d: (d.mkdir(), (d / "runtime.json").write_text("{")), "runtime.json is unreadable"),
])
def test_bad_artefact_dir_exits_2_with_one_line(tmp_path: Path, damage, message: str) -> None:
    bad = tmp_path / "bad"
    damage(bad)
    proc = subprocess.run([sys.executable, "predict.py", str(bad), "text"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_missing_model_file_is_a_user_error(artefacts, tmp_path: Path) -> None:
    out, _ = artefacts
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "runtime.json").write_text((out / "runtime.json").read_text())
    with pytest.raises(UserError, match="model_int8_qdq.onnx not found"):
        runtime.Classifier(partial, "onnxruntime", 1)


def test_arm64_check_rejects_a_dir_without_runtime_files(tmp_path: Path) -> None:
    """The emulated check refuses, in one line and before touching apt or mounts, what it cannot check."""
    proc = subprocess.run(["bash", "tools/arm64_check.sh", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "lacks runtime.json or host_check.json" in proc.stderr


def test_artefacts_are_readable_by_other_users(artefacts) -> None:
    """A service user on the target must read what root wrote on the host (mkstemp alone makes 0600)."""
    out, _ = artefacts
    for path in (out / "runtime.json", out / "host_check.json", out / "model_int8_qdq.onnx", out / "tokenizer"):
        assert path.stat().st_mode & 0o004, path
