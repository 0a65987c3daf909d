"""Which task a run's flags name, loaded, and whether a model's outputs fit its labels."""
from __future__ import annotations

from .data import DEFAULT_TASK, TaskData, load_rotten_tomatoes
from .errors import UserError
from .glue import GLUE_TASKS, load_glue_hub, load_glue_tsv
from .user_files import CUSTOM_TASK, load_user_files


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
