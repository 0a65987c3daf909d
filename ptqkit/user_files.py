"""The user's own train/validation files (CSV, TSV, JSON lines): columns, label parsing, mapping to the model."""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

from .data import Example, TaskData
from .errors import UserError

CUSTOM_TASK = "custom"
USER_FILE_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl")
# Column names detected in user files when --label-column / --text-columns are omitted (first match wins).
LABEL_COLUMNS = ("label", "labels", "sentiment", "class", "target", "category", "score")
TEXT_COLUMN_PAIRS = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"))
TEXT_COLUMNS = ("sentence", "text", "review", "content", "comment", "tweet", "document", "body")


def load_user_files(train_file: str, validation_file: str, text_columns: tuple[str, ...] | None = None,
                    label_column: str | None = None, encoding: str = "utf-8") -> TaskData:
    """The user's own train/validation files, read the way HF's run_glue.py reads them.

    Label names ("positive") stay strings here: fit_labels maps them through the model's label2id."""
    train_rows, columns = read_rows(Path(train_file), encoding)
    val_rows, val_columns = read_rows(Path(validation_file), encoding)
    label = label_column or next((c for c in LABEL_COLUMNS if c in columns), None)
    if label not in columns:
        wanted = repr(label_column) if label_column else f"(looked for {', '.join(LABEL_COLUMNS)})"
        raise UserError(f"{train_file} has no label column {wanted} (columns found: {', '.join(columns)}): "
                        f"pass --label-column")
    texts = choose_text_columns(columns, label, text_columns, train_file)
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


def read_rows(path: Path, encoding: str = "utf-8") -> tuple[list[dict], list[str]]:
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


def choose_text_columns(columns: list[str], label: str, chosen: tuple[str, ...] | None, path: str) -> tuple[str, ...]:
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
