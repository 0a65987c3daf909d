"""Models the pipeline builds itself: the bert-base-sized benchmark model (real bert-base work per call, reproducible,
no hub) and the default model, which carries its label names."""
from __future__ import annotations

import torch

from ptqkit import models
from ptqkit.data import TaskData

TASK = TaskData(name="rotten_tomatoes", train=[], validation=[], num_labels=2, metrics=("accuracy",))


def test_bert_base_random_is_bert_base_sized_and_seeded():
    model, tokenizer, name = models.load_model(models.BERT_BASE_RANDOM, TASK)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads) == (12, 768, 3072, 12)
    assert name == "bert-base-random" and cfg.num_labels == 2 and cfg._attn_implementation == "eager"
    assert len(tokenizer) == cfg.vocab_size  # every token id the tokenizer emits is a row of the embedding
    again, _ = models.bert_base_random(2)
    assert torch.equal(model.classifier.weight, again.classifier.weight)


def test_default_model_carries_its_label_names_even_from_an_older_cache(tmp_path, save_tiny_model):
    """predict.py prints negative/positive: a cache fine-tuned before the names were set gets them on load."""
    cached = save_tiny_model(tmp_path / "models" / models.DEFAULT_MODEL_NAME)
    assert models.load_model(str(cached), TASK)[0].config.id2label == {0: "LABEL_0", 1: "LABEL_1"}  # as a user's dir
    model, _, name = models.load_model(models.DEFAULT_MODEL, TASK, str(tmp_path))
    assert name == models.DEFAULT_MODEL_NAME
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
