"""GLUE's evaluation metrics, computed with scikit-learn and scipy (no network, no `evaluate`)."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": lambda p, y: accuracy_score(y, p),
    "f1": lambda p, y: f1_score(y, p, pos_label=1, average="binary"),  # GLUE's F1: class 1 is the positive one
    "matthews_correlation": lambda p, y: matthews_corrcoef(y, p),
    "pearson": lambda p, y: pearsonr(p, y)[0],
    "spearmanr": lambda p, y: spearmanr(p, y)[0],
}


def compute_metrics(names: Sequence[str], predictions, labels) -> dict[str, float]:
    """Each named metric of predictions against labels: class ids for classification, floats for regression."""
    unknown = [n for n in names if n not in _METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(_METRICS)}")
    preds, gold = np.asarray(predictions), np.asarray(labels)
    if preds.shape != gold.shape:
        raise ValueError(f"predictions of shape {preds.shape} do not match labels of shape {gold.shape}")
    return {n: float(_METRICS[n](preds, gold)) for n in names}


def predictions_from_logits(logits: np.ndarray, num_labels: int) -> np.ndarray:
    """Class ids (argmax), or the single output column as scores when num_labels == 1 (regression)."""
    logits = np.asarray(logits)
    if num_labels == 1:
        return logits.reshape(len(logits)).astype(np.float64)
    return logits.argmax(axis=-1)
