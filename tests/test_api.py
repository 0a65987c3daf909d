"""The public API on a tiny classifier: quantize -> export -> compile -> evaluate, benchmark, and a light import."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ptqkit
from ptqkit import runtime
from ptqkit.artifacts import Layout
from ptqkit.backends import FILE_ENGINES
from ptqkit.bench import BenchConfig, Shape
from ptqkit.config import RunConfig
from ptqkit.errors import UserError

SEQ = 16


def _batches(tokenizer, words: list[str], n: int, size: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n * size)]
    return [dict(tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=SEQ, return_tensors="pt"))
            for i in range(0, len(texts), size)]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory, tiny_model_dir, words, widen):
    """A tiny BERT (conftest's BertConfig) whose weights are widened so that its labels vary, quantized on 4 train
    batches and exported; 4 other batches to evaluate on."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # a random model's logits barely move with the input
        widen(model)
    calib, held_out = _batches(tokenizer, words, 4, 8, 0), _batches(tokenizer, words, 4, 16, 1)
    with torch.no_grad():
        float_logits = torch.cat([model(**b).logits for b in held_out])
        model.classifier.bias.sub_(float_logits.median(0).values)  # centred: both labels occur
    qm = ptqkit.quantize(model, calib, RunConfig(max_seq_len=SEQ), tokenizer=tokenizer)
    out = tmp_path_factory.mktemp("api") / "out"
    return qm, qm.export(out), out, held_out


def test_export_writes_what_the_export_step_writes(quantized) -> None:
    qm, paths, out, _ = quantized
    layout = Layout(out)
    expected = {"fp32_onnx": layout.fp32_onnx, "int8_onnx": layout.int8_onnx,
                "int8_torchscript": layout.int8_torchscript, "quant_state": layout.quant_state,
                "runtime_json": layout.runtime_json, "tokenizer": layout.tokenizer_dir}
    assert paths == expected
    for name in ("fp32_onnx", "int8_onnx", "int8_torchscript", "runtime_json"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0, name
    assert (layout.quant_state / "quant_state.json").is_file() and layout.tokenizer_json.is_file()
    rc = json.loads(layout.runtime_json.read_text())
    assert rc["input_names"] == list(qm.input_names) == ["input_ids", "attention_mask", "token_type_ids"]
    assert rc["max_seq_len"] == SEQ and rc["model_file"] == layout.int8_onnx.name


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_compiled_int8_computes_what_fake_quant_computes(quantized, tiny, engine: str) -> None:
    qm, _, out, held_out = quantized
    int8 = ptqkit.compile(out, engine)
    assert int8.kernels().int8 == tiny.int8_kernels(engine, qm.quantizer.config.attention_matmuls)
    reference = qm.reference()
    labels = np.concatenate([reference({k: v.numpy() for k, v in b.items()}).argmax(-1) for b in held_out])
    ev = ptqkit.evaluate(int8, held_out, labels, reference=reference)
    assert ev.logits.shape == (64, 2) and 0 < labels.mean() < 1  # both labels occur
    assert ev.agreement >= 0.95 and ev.metrics["accuracy"] == ev.agreement  # the labels are the reference's argmax
    scale = float(np.abs(ptqkit.evaluate(reference, held_out).logits).max())
    assert ev.max_logit_diff < 0.02 * scale, (ev.max_logit_diff, scale)  # measured: 1e-6 on a VNNI host
    fp32 = ptqkit.compile(out, engine, "fp32")
    assert fp32.kernels().int8 == 0
    assert ptqkit.evaluate(fp32, held_out, reference=reference).agreement >= 0.9


def test_artefact_dir_runs_on_the_torch_free_runtime(quantized) -> None:
    """export's tokenizer/ and runtime.json are what predict.py reads: its logits are the compiled int8 model's on
    the same texts, tokenized by the HF tokenizer."""
    qm, _, out, _ = quantized
    texts = ["good film", "boring plot and dull acting", "fun movie great story"]
    engine = FILE_ENGINES[-1]
    got = runtime.Classifier(out, engine, 1).logits(texts)
    batch = qm.tokenizer(texts, padding=True, truncation=True, max_length=SEQ, return_tensors="np")
    np.testing.assert_allclose(got, ptqkit.compile(out, engine)(dict(batch)), rtol=1e-4, atol=1e-4)


def test_benchmark_times_compiled_runners(quantized) -> None:
    qm, _, out, _ = quantized
    bench = BenchConfig(shapes=(Shape(1, SEQ),), warmup=1, rounds=3, profile_calls=0)
    cells = ptqkit.benchmark({"int8": lambda t: ptqkit.compile(out, "onnxruntime", threads=t),
                              "fake-quant": qm.reference}, qm.model.config.vocab_size, qm.input_names, bench)
    assert set(cells) == {"int8", "fake-quant"}
    for (cell,) in cells.values():
        assert (cell["batch"], cell["seq_len"], cell["threads"]) == (1, SEQ, 1) and cell["median"] > 0


def test_quantize_refuses_what_needs_labelled_data(quantized) -> None:
    qm, *_ = quantized
    with pytest.raises(UserError, match="auto-fallback"):
        ptqkit.quantize(qm.model, [], RunConfig(max_accuracy_drop=1.0))
    with pytest.raises(UserError, match="calibration batch"):
        ptqkit.quantize(qm.model, [])
    with pytest.raises(UserError, match="not found"):
        ptqkit.compile(Path(qm.quantizer.__class__.__name__), "onnxruntime")


def test_import_ptqkit_stays_light() -> None:
    code = ("import sys, ptqkit\nassert 'torch' not in sys.modules\n"
            "ptqkit.quantize\nassert 'torch' in sys.modules and 'ptqkit.api' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
