"""GLUE metrics against values worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ptqkit.metrics import compute_metrics, predictions_from_logits

PREDS = [1, 1, 0, 1, 0, 0, 1, 0]
GOLD = [1, 0, 0, 1, 1, 0, 1, 0]
TP, FP, FN, TN = 3, 1, 1, 3


def test_accuracy_and_f1():
    m = compute_metrics(("accuracy", "f1"), PREDS, GOLD)
    assert m["accuracy"] == pytest.approx((TP + TN) / 8)
    precision, recall = TP / (TP + FP), TP / (TP + FN)
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_f1_counts_class_one_as_positive():
    # Only class 0 is ever right: no true positives for class 1, so F1 is 0 although accuracy is not.
    m = compute_metrics(("accuracy", "f1"), [0, 0, 1], [0, 1, 0])
    assert m == {"accuracy": pytest.approx(1 / 3), "f1": 0.0}


def test_matthews_correlation():
    expected = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))
    assert compute_metrics(("matthews_correlation",), PREDS, GOLD)["matthews_correlation"] == pytest.approx(expected)


def test_regression_metrics():
    preds, gold = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 7.0]
    mp, mg = np.mean(preds), np.mean(gold)
    cov = sum((p - mp) * (g - mg) for p, g in zip(preds, gold))
    expected = cov / math.sqrt(sum((p - mp) ** 2 for p in preds) * sum((g - mg) ** 2 for g in gold))
    m = compute_metrics(("pearson", "spearmanr"), np.array(preds), np.array(gold))
    assert m["pearson"] == pytest.approx(expected)
    assert m["spearmanr"] == pytest.approx(1.0)  # same order
    assert compute_metrics(("spearmanr",), [3.0, 1.0, 2.0], [1.0, 2.0, 3.0])["spearmanr"] == pytest.approx(-0.5)


def test_metrics_are_python_floats():
    assert all(type(v) is float for v in compute_metrics(("accuracy", "f1"), PREDS, GOLD).values())


def test_rejects_unknown_metric_and_mismatched_lengths():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(("bleu",), PREDS, GOLD)
    with pytest.raises(ValueError, match="do not match"):
        compute_metrics(("accuracy",), PREDS[:3], GOLD)


def test_predictions_from_logits():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.5]], dtype=np.float32)
    assert predictions_from_logits(logits, 3).tolist() == [1, 0]
    scores = predictions_from_logits(np.array([[0.25], [4.5]], dtype=np.float32), 1)
    assert scores.shape == (2,) and scores.tolist() == [0.25, 4.5]
