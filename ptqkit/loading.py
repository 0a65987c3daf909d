"""What every step starts from: the task, the model, its tokenizer and the tokenized validation split (Loaded)."""
from __future__ import annotations

from dataclasses import dataclass

from .capture import model_input_names
from .config import RunConfig
from .data import TaskData, encode
from .tasks import check_labels, load_task
from .user_files import fit_labels
from .errors import UserError
from .models import load_model


@dataclass
class Loaded:
    """Task, model and tokenized validation data: what every step starts from."""

    task: TaskData
    model: object
    tokenizer: object
    model_name: str
    input_names: tuple[str, ...]
    val_features: list
    val_labels: list

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id or 0

    @property
    def text_pairs(self) -> bool:
        """Whether the task's inputs are sentence pairs (runtime.json tells predict.py to split them)."""
        return any(e.text_pair is not None for e in self.task.validation)


def load(cfg: RunConfig) -> Loaded:
    task = load_task(cfg.task, cfg.data_dir, cfg.train_file, cfg.validation_file, cfg.text_columns, cfg.label_column,
                     cfg.encoding)
    model, tokenizer, name = load_model(cfg.model, task, cfg.cache_dir)
    task = fit_labels(task, model.config.num_labels, model.config.label2id)
    check_labels(task, model.config.num_labels)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and cfg.max_seq_len > max_pos:
        raise UserError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's {max_pos} positions; use <= {max_pos}")
    val = task.validation[: cfg.eval_limit] if cfg.eval_limit else task.validation
    input_names = feed_inputs(model, tokenizer)
    features = encode(tokenizer, val, cfg.max_seq_len)
    return Loaded(task, model, tokenizer, name, input_names, features, [e.label for e in val])


def feed_inputs(model, tokenizer) -> tuple[str, ...]:
    """The tokenizer outputs the model's forward takes; the tokenizer is set to emit only those from now on
    (a BERT tokenizer saved with a DistilBERT or RoBERTa emits token types that model cannot take)."""
    names = model_input_names(model, tokenizer.model_input_names)
    if "input_ids" not in names:
        raise UserError(f"the tokenizer emits {', '.join(tokenizer.model_input_names)} but a "
                        f"{model.config.model_type} model needs input_ids: save the model's own tokenizer with it")
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the {model.config.model_type} model embeds only "
                        f"{model.config.vocab_size}: save the tokenizer the model was trained with")
    tokenizer.model_input_names = list(names)
    return names
