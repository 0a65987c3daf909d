"""Every listed BERT-family type through the library path on a tiny random classifier, fed the inputs its own
tokenizer emits: capture -> calibrate -> QDQ export -> OpenVINO, int8 kernels counted, agreement with fake-quant."""
from __future__ import annotations

import pytest

from ptqkit.capture import model_input_names
from ptqkit.support import MODEL_TYPES, TYPES, check_model_type, tiny_classifier

CORE_LINEARS = 14  # 2 layers x 6 linears (Q, K, V, attention out, FFN in/out) + a 2-linear head, in every type


@pytest.mark.parametrize("name", [t.name for t in MODEL_TYPES])
def test_model_type_runs_int8_on_openvino(name, tmp_path):
    r = check_model_type(name, tmp_path)
    assert not r.error, r.error
    assert r.captured.startswith("dynamic")
    assert r.int8_kernels >= CORE_LINEARS, r
    assert r.agreement >= 0.95 and r.max_rel_error < 0.05, r
    if name == "mobilebert":  # its code rules out seq_len 2: the second capture derives that guard
        assert "derived" in r.captured


@pytest.mark.parametrize("name, expected", [
    ("bert", ("input_ids", "attention_mask", "token_type_ids")),
    ("distilbert", ("input_ids", "attention_mask")),  # forward has no token_type_ids
    ("roberta", ("input_ids", "attention_mask")),  # forward takes them, but it has one segment type
    ("mpnet", ("input_ids", "attention_mask")),
    ("deberta-v3", ("input_ids", "attention_mask")),  # type_vocab_size 0
])
def test_input_names_drop_what_the_model_cannot_take(name, expected):
    model = tiny_classifier(name)
    bert_tokenizer = ("input_ids", "token_type_ids", "attention_mask")
    assert model_input_names(model, bert_tokenizer) == expected
    # never invent an optional input the tokenizer does not emit
    assert model_input_names(model, TYPES["roberta"].tokenizer_inputs) == ("input_ids", "attention_mask")
