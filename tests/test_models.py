"""The bert-base-sized benchmark model: real bert-base work per call, reproducible, no hub."""
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
