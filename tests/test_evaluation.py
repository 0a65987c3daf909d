"""predict_logits: rows come back in input order whatever order they were batched in."""
from __future__ import annotations

import numpy as np

from ptqkit.evaluation import predict_logits


def test_logits_in_input_order_with_length_sorted_batches():
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 60, size=50)
    features = [{"input_ids": list(range(1, n + 1)), "attention_mask": [1] * n} for n in lengths]
    padded_widths = []

    def runner(batch: dict) -> np.ndarray:
        padded_widths.append(batch["input_ids"].shape[1])
        real = batch["attention_mask"].sum(1)  # a row's logits depend on its own tokens only
        return np.stack([real, -real], axis=1).astype(np.float32)

    logits = predict_logits(runner, features, batch_size=8, pad_id=0, desc="test")
    np.testing.assert_array_equal(logits[:, 0], lengths)
    # shortest first: 7 batches pad to far fewer positions than batches in file order would
    in_file_order = sum(max(lengths[i : i + 8]) for i in range(0, len(lengths), 8))
    assert sum(padded_widths) < 0.8 * in_file_order
