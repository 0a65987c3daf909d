"""An artefact dir like bert_ptq.py's (fp32 and int8 ONNX, runtime.json, tokenizer/) from a tiny classifier whose
labels vary with the text, built once per session in seconds: for the batcher and corpus benchmark tests."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def corpus_artefacts(tmp_path_factory, tiny_model_dir: Path, write_csv) -> tuple[Path, Path]:
    """(artefact dir, model dir): max_seq_len 32, calibrated on 2 batches of a seeded review CSV."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ptqkit.data import calibration_batches
    from ptqkit.pipeline import RunConfig, calibrate, export_artifacts, load, write_runtime_files

    d = tmp_path_factory.mktemp("corpus")
    val_csv = write_csv(d / "val.csv", 40, 1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # a random model's logits barely move with the input: widen and centre them (as test_runtime)
        model.classifier.weight.mul_(50)
        model.bert.embeddings.word_embeddings.weight.mul_(20)
        model.bert.pooler.dense.weight.mul_(10)
        for layer in model.bert.encoder.layer:
            layer.attention.self.value.weight.mul_(10)
            layer.attention.output.dense.weight.mul_(10)
        texts = [line.rsplit(",", 1)[0] for line in val_csv.read_text().splitlines()[1:]]
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
        model.classifier.bias.sub_(logits.median(0).values)
    model.save_pretrained(d / "model")
    tokenizer.save_pretrained(d / "model")
    cfg = RunConfig(model=str(d / "model"), train_file=str(write_csv(d / "train.csv", 80, 0)),
                    validation_file=str(val_csv), batch_size=8, max_seq_len=32)
    ld = load(cfg)
    q, _ = calibrate(ld, cfg, calibration_batches(ld.task, ld.tokenizer, 2, 8, 32))
    out = d / "out"
    out.mkdir()
    export_artifacts(ld.model, q.convert(ld.model), ld.input_names, out)
    write_runtime_files(ld, cfg, out)
    return out, d / "model"
