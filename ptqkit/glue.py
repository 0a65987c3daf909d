"""GLUE tasks: GLUE's original TSV files (--data-dir) or, online, the Hugging Face hub's copy."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from .data import Example, TaskData
from .errors import UserError


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
