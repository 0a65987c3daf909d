"""A model's inputs: their names, and how tokenized examples are padded into a batch. numpy only (no torch), so
the pipeline (data.py) and the deployment runtime (runtime.py) pad alike."""
from __future__ import annotations

from typing import Sequence

import numpy as np

# What a BERT-family tokenizer may emit, in the order our models take them (a model takes the ones its forward
# accepts: capture.model_input_names).
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")

# Batches are at least this long: MobileBERT's captured graph rules out seq_len 2 (a batch of empty texts is
# [CLS] [SEP]); the extra position is masked padding, so outputs do not change.
MIN_BATCH_SEQ_LEN = 3


def pad(features: Sequence[dict[str, list[int]]], pad_id: int, names: Sequence[str] | None = None,
        length: int | None = None) -> dict[str, np.ndarray]:
    """Right-pad tokenized examples to the longest one (at least MIN_BATCH_SEQ_LEN), or cut and pad them to
    `length`: one int64 array per input of `names` (default: the examples' own keys). input_ids are padded with
    the tokenizer's pad id, the others with 0."""
    n = length or max(MIN_BATCH_SEQ_LEN, *(len(f["input_ids"]) for f in features))
    out = {}
    for name in names or features[0]:
        fill = pad_id if name == "input_ids" else 0
        out[name] = np.array([f[name][:n] + [fill] * (n - len(f[name][:n])) for f in features], dtype=np.int64)
    return out
