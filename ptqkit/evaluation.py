"""Task evaluation of any runner on the validation split."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from .backends.base import Runner
from .data import batches
from .metrics import compute_metrics, predictions_from_logits


def predict_logits(run: Runner, features: Sequence[dict], batch_size: int, pad_id: int, desc: str,
                   pad_to: int | None = None) -> np.ndarray:
    """Logits of every row, in input order. Rows are batched shortest first, so a batch pads to texts of about
    its own length rather than to the longest of a random few (0.59x the tokens on 512-token IMDB reviews, issue
    #31); padding is masked, so a row's logits do not depend on its batch beyond fp32 rounding."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    out = []
    total = (len(features) + batch_size - 1) // batch_size
    rows = batches([features[i] for i in order], batch_size, pad_id, pad_to)
    for batch in tqdm(rows, total=total, desc=desc, unit="batch", leave=False):
        out.append(run({k: v.numpy() for k, v in batch.items()}))
    logits = np.concatenate(out)
    restored = np.empty_like(logits)
    restored[order] = logits
    return restored


def argmax_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of rows whose predicted class (argmax) is the same in both logit arrays."""
    return round(float((a.argmax(-1) == b.argmax(-1)).mean()), 4)


def evaluate(logits: np.ndarray, labels: Sequence, metric_names: Sequence[str], num_labels: int) -> dict[str, float]:
    preds = predictions_from_logits(logits, num_labels)
    return {k: round(float(v), 4) for k, v in compute_metrics(metric_names, preds, np.asarray(labels)).items()}
