"""Changed predictions against fp32 (issue #29, item 3): counted per variant, listed for ours, shown in report.md,
the printed summary and report.png's points; skipped for regression. Synthetic logits, no model."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ptqkit.changes import changed_examples, changed_rows, markdown_lines
from ptqkit.config import RunConfig
from ptqkit.data import Example, TaskData
from ptqkit.report_plot import points
from ptqkit.stages import Stages
from ptqkit.variants import Variant, evaluate_variants

FP32 = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0], [1.0, 1.5], [0.5, 0.0]])
INT8 = np.array([[1.9, 0.1], [0.2, 0.0], [1.0, 0.1], [1.0, 0.0], [1.2, 1.4], [0.0, 0.5]])  # rows 1, 3, 5 change
EXAMPLES = [Example(f"sentence {i}", 0) for i in range(6)]


def test_changed_rows_and_examples() -> None:
    assert changed_rows(INT8, FP32).tolist() == [1, 3, 5]
    listed = changed_examples(EXAMPLES, FP32, INT8, {0: "negative", 1: "positive"}, n=2)
    assert listed == [
        {"row": 1, "text": "sentence 1", "fp32_label": "positive", "int8_label": "negative",
         "fp32_confidence": 0.7311, "int8_confidence": 0.5498},
        {"row": 3, "text": "sentence 3", "fp32_label": "positive", "int8_label": "negative",
         "fp32_confidence": 0.9526, "int8_confidence": 0.7311},
    ]


def test_pair_text_is_kept_and_shown_on_one_line() -> None:
    pairs = [Example("a\nquestion", 0, "an | answer")] * 6
    (first,) = changed_examples(pairs, FP32, INT8, {}, n=1)
    assert first["text_pair"] == "an | answer" and first["fp32_label"] == "1" and first["int8_label"] == "0"
    rep = {"eval_examples": 6, "variants": [{"name": "ours", "changed_vs_fp32": 3, "changed_examples": [first]}]}
    lines = markdown_lines(rep)
    assert lines[0] == "## Changed predictions: ours against PyTorch fp32 (3 of 6 validation examples; the first 1)"
    assert lines[4] == "| 1 | a question [SEP] an / answer | 1 -> 0 | 0.731 / 0.550 |"


class TableRunner:
    """Logits looked up by the row id each feature carries as its one token."""

    def __init__(self, logits: np.ndarray) -> None:
        self.logits = logits

    def __call__(self, inputs: dict) -> np.ndarray:
        return self.logits[inputs["input_ids"][:, 0] - 1]


def run_variants(num_labels: int, fp32: np.ndarray, int8: np.ndarray) -> list[dict]:
    task = TaskData("t", [], EXAMPLES, num_labels, ("accuracy",) if num_labels > 1 else ("pearson",))
    ld = SimpleNamespace(task=task, val_features=[{"input_ids": [i + 1], "attention_mask": [1]} for i in range(6)],
                         val_labels=[0, 1, 0, 1, 1, 0], pad_id=0,
                         model=SimpleNamespace(config=SimpleNamespace(id2label={0: "neg", 1: "pos"})))
    variants = [Variant({"name": "pytorch-fp32"}, lambda t: TableRunner(fp32), reference="fp32", compare=(), measured=False),
                Variant({"name": "ours"}, lambda t: TableRunner(int8), measured=False),
                Variant({"name": "peer", "peer": True}, lambda t: TableRunner(fp32), measured=False)]
    variants[1].host_check = False  # host_check.json needs the fake-quant reference; the listing is tested apart
    evaluate_variants(variants, ld, RunConfig(batch_size=4), {}, 1, Path("."), Stages())
    return [v.record for v in variants]


def test_every_variant_counts_its_changes() -> None:
    fp32, ours, peer = run_variants(2, FP32, INT8)
    assert "changed_vs_fp32" not in fp32
    assert (ours["agreement_with_fp32"], ours["changed_vs_fp32"]) == (0.5, 3)
    assert (peer["agreement_with_fp32"], peer["changed_vs_fp32"]) == (1.0, 0)
    assert "changed_examples" not in peer


def test_regression_has_no_changed_predictions() -> None:
    records = run_variants(1, FP32[:, :1], INT8[:, :1])
    assert not any("changed_vs_fp32" in r for r in records)


def test_report_shows_changes_and_plots_agreement() -> None:
    from ptqkit.report import markdown, summary

    lat = [{"batch": 1, "seq_len": 16, "threads": 1, "median": 2.0, "p90": 2.0, "throughput_seq_s": 500.0}]
    rep = {"model": "m", "task": "t", "device": "x86", "eval_examples": 6, "versions": {},
           "cpu": {"model": "cpu", "arch": "x86_64", "flags": [], "int8_isa": "avx512_vnni"},
           "variants": [{"name": "pytorch-fp32", "engine": "pytorch", "precision": "fp32",
                         "metrics": {"accuracy": 0.5}, "latency_ms": lat},
                        {"name": "ov-int8", "engine": "openvino", "precision": "int8", "metrics": {"accuracy": 0.6},
                         "agreement_with_fp32": 0.5, "changed_vs_fp32": 3, "latency_ms": lat,
                         "changed_examples": changed_examples(EXAMPLES, FP32, INT8, {0: "neg", 1: "pos"})}]}
    md = markdown(rep)
    assert "| ov-int8 | **0.5000** | 3 | 0.6000 |  |" in md
    assert "## Changed predictions: ov-int8 against PyTorch fp32 (3 of 6 validation examples; the first 3)" in md
    assert "| 5 | sentence 5 | neg -> pos | 0.623 / 0.623 |" in md
    assert "  changed_vs_fp32 = 3 of 6" in summary(rep)
    assert [(p["name"], p["value"], p["agreement"]) for p in points(rep)] == [("pytorch-fp32", 0.5, 1.0),
                                                                              ("ov-int8", 0.6, 0.5)]
