"""The corpus benchmark's variants, each run as its users run it, and the worker process that times one variant at
one thread count (`python -m ptqkit.corpus_variants SPEC.json`): a process of its own, so that its peak memory
(ru_maxrss) is its own and its tokenizer's thread pool is sized to the thread count.

A variant is a Predictor: `batch(texts)` classifies a corpus (text to logits, tokenization included) and `one(text)`
serves one request. Ours imports neither torch nor transformers; the peers load what their users load."""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import batcher
from .artifacts import Layout
from .inputs import pad

Logits = np.ndarray


@dataclass
class Predictor:
    batch: Callable[[Sequence[str]], Logits]
    one: Callable[[str], Logits]
    note: str = ""


@dataclass(frozen=True)
class Spec:
    """What the parent hands a worker (JSON)."""

    variant: str
    threads: int
    rows_file: str  # JSON list of texts
    artefacts: str
    model_dir: str  # the HF model the torch peers (and CTranslate2's converter) load
    engine: str  # our int8 engine
    max_seq_len: int
    batch_size: int
    latency_rows: int
    work_dir: str  # where converted peer models are cached
    result_file: str


def runtime_config(spec: Spec):
    """The artefacts' runtime.json, truncating at the corpus's --max-seq-len (not the exported run's): every
    variant truncates alike."""
    from .runtime import RuntimeConfig, read_json

    rc = RuntimeConfig.from_dict(read_json(Layout(Path(spec.artefacts)).runtime_json, "run bert_ptq.py first"))
    return replace(rc, max_seq_len=spec.max_seq_len)


def in_file_order(call: Callable[[Sequence[str]], Logits], texts: Sequence[str], batch_size: int) -> Logits:
    """`call` on consecutive batches of `texts`, in file order: how a transformers pipeline batches."""
    return np.concatenate([call(texts[s : s + batch_size]) for s in range(0, len(texts), batch_size)])


def _ours(spec: Spec, naive: bool) -> Predictor:
    from .backends import get_backend
    from .runtime import Classifier, Tokenizer

    layout = Layout(Path(spec.artefacts))
    cfg = runtime_config(spec)
    engine, precision = cfg.served(spec.engine)
    latency = get_backend(engine).compile(layout.root / cfg.model_file, spec.threads, precision)
    if naive:  # evaluate.py's old way: file order, every row padded to the maximum, one request at a time
        tokenizer, pool = Tokenizer(layout.tokenizer_json, cfg), batcher.SerialPool(latency)

        def batch(texts: Sequence[str]) -> Logits:
            return batcher.run_batches(tokenizer.encode(texts), batcher.file_order(len(texts), spec.batch_size), pool,
                                       cfg.pad_id, cfg.input_names, length=cfg.max_seq_len)

        def one(text: str) -> Logits:
            return latency(pad(tokenizer.encode([text]), cfg.pad_id, cfg.input_names, cfg.max_seq_len))

        return Predictor(batch, one, f"{engine}-{precision}, padded to max length")
    clf = Classifier(spec.artefacts, spec.engine, spec.threads, spec.max_seq_len)
    requests = batcher.Requests(latency, cfg.pad_id, cfg.input_names, cfg.max_seq_len)
    return Predictor(lambda texts: clf.logits(texts, spec.batch_size),
                     lambda text: requests(clf.tokenizer.encode([text])),
                     f"{engine}-{precision}, bucketed, async streams; requests on a static copy per bucket")


def pipeline_style(tokenizer, run: Callable[[dict], Logits], names: Sequence[str], spec: Spec,
                    tensors: str = "np") -> Predictor:
    """A transformers pipeline's batching: batches in file order, padded to the longest text in the batch."""
    def call(texts: Sequence[str]) -> Logits:
        enc = tokenizer(list(texts), padding=True, truncation=True, max_length=spec.max_seq_len, return_tensors=tensors)
        return np.asarray(run({n: enc[n] for n in names}))

    return Predictor(lambda texts: in_file_order(call, texts, spec.batch_size), lambda text: call([text]),
                     "file order, padded to the longest in the batch")


def hf_tokenizer(spec: Spec):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(Layout(Path(spec.artefacts)).tokenizer_dir))


def torch_model(spec: Spec):
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(spec.threads)
    return AutoModelForSequenceClassification.from_pretrained(spec.model_dir, attn_implementation="eager").eval()


def input_names(spec: Spec) -> tuple[str, ...]:
    return runtime_config(spec).input_names


def pytorch_fp32(spec: Spec) -> Predictor:
    import torch

    model = torch_model(spec)

    def run(inputs: dict) -> Logits:
        with torch.inference_mode():
            return model(**inputs).logits.numpy()

    return pipeline_style(hf_tokenizer(spec), run, input_names(spec), spec, "pt")


def nncf_openvino(spec: Spec) -> Predictor:
    """NNCF's int8 IR (bert_ptq.py's peer) at OpenVINO's default precision, served as Optimum-Intel serves it."""
    from .backends.openvino import OpenVINOBackend, default_int8_precision

    xml = Layout(Path(spec.artefacts)).peer_nncf_xml
    if not xml.is_file():
        raise FileNotFoundError(f"{xml.name} missing: run bert_ptq.py without --skip-peers into this --output-dir")
    runner = OpenVINOBackend().compile(xml, spec.threads, default_int8_precision())
    return pipeline_style(hf_tokenizer(spec), runner, runner.input_names, spec)


def ort_dynamic(spec: Spec) -> Predictor:
    from .backends.onnxruntime import ORTBackend, quantize_dynamic_file

    layout = Layout(Path(spec.artefacts))
    path = layout.peer_ort_dynamic_onnx
    if not path.is_file():  # bert_ptq.py --skip-peers: quantize the fp32 model here, as bert_ptq.py's peer does
        path = Path(spec.work_dir) / path.name
        if not path.is_file():
            quantize_dynamic_file(layout.fp32_onnx, path)
    runner = ORTBackend(fuse_attention=False).compile(path, spec.threads, "int8")
    return pipeline_style(hf_tokenizer(spec), runner, runner.input_names, spec)


def ctranslate2_int8(spec: Spec) -> Predictor:
    """CTranslate2's int8 encoder (converted once, cached in work_dir; it skips padding itself) and the
    classifier head (pooler output x weight + bias) in numpy."""
    import ctranslate2
    from safetensors.numpy import load_file

    out = Path(spec.work_dir) / "ctranslate2-int8"
    if not (out / "model.bin").is_file():
        from ctranslate2.converters import TransformersConverter

        class Converter(TransformersConverter):
            def load_model(self, model_class, model_name_or_path, **kwargs):
                # transformers 5 dropped config.position_embedding_type (BERT's is always absolute), which the
                # converter asserts on
                model = super().load_model(model_class, model_name_or_path, **kwargs)
                model.config.position_embedding_type = "absolute"
                return model

        Converter(spec.model_dir).convert(str(out), quantization="int8", force=True)
    weights = load_file(str(Path(spec.model_dir) / "model.safetensors"))
    w, b = weights["classifier.weight"].T, weights["classifier.bias"]
    encoder = ctranslate2.Encoder(str(out), compute_type="int8", intra_threads=spec.threads)
    tokenizer = hf_tokenizer(spec)
    pairs = "token_type_ids" in input_names(spec)

    def call(texts: Sequence[str]) -> Logits:
        enc = tokenizer(list(texts), truncation=True, max_length=spec.max_seq_len)
        types = enc["token_type_ids"] if pairs else None
        pooled = np.asarray(encoder.forward_batch(enc["input_ids"], token_type_ids=types).pooler_output)
        return pooled @ w + b

    return Predictor(lambda texts: in_file_order(call, texts, spec.batch_size), lambda text: call([text]),
                     "its own batching: no padding computed")


def torchao_pt2e(spec: Spec) -> Predictor:
    from .corpus_torchao import build

    return build(spec)


VARIANTS: dict[str, Callable[[Spec], Predictor]] = {
    "ours-int8": lambda s: _ours(s, naive=False),
    "ours-int8-padded": lambda s: _ours(s, naive=True),
    "pytorch-fp32": pytorch_fp32,
    "nncf-openvino-int8": nncf_openvino,
    "onnxruntime-dynamic-int8": ort_dynamic,
    "ctranslate2-int8": ctranslate2_int8,
    "torchao-pt2e-int8": torchao_pt2e,
}
FP32 = "pytorch-fp32"  # what agreement is measured against


def measure(spec: Spec) -> dict:
    """Build, one warm-up pass over a few rows, rows/s over every row, then batch-1 latency in file order."""
    texts = json.loads(Path(spec.rows_file).read_text(encoding="utf-8"))
    start = time.perf_counter()
    predictor = VARIANTS[spec.variant](spec)
    predictor.batch(texts[: 2 * spec.batch_size])
    for text in texts[:2]:  # first calls at batch 1 (Inductor compiles for it)
        predictor.one(text)
    build_s = time.perf_counter() - start
    _reset_peak_rss()  # from here on the peak is the serving process's, not the build's (e.g. a conversion)
    start = time.perf_counter()
    logits = predictor.batch(texts)
    wall = time.perf_counter() - start
    latencies = []
    for text in texts[: spec.latency_rows]:
        t0 = time.perf_counter()
        predictor.one(text)
        latencies.append((time.perf_counter() - t0) * 1e3)
    return {"rows_per_s": len(texts) / wall, "wall_s": wall, "build_s": build_s,
            "latency_ms": {"p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99)),
                           "requests": len(latencies)} if latencies else None,
            "peak_rss_mb": _peak_rss_mb(),
            "predictions": logits.argmax(-1).tolist(), "note": predictor.note}


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the peak then includes the build


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(path: str) -> None:
    spec = Spec(**json.loads(Path(path).read_text()))
    if hasattr(os, "sched_setaffinity"):  # n threads means n cores for everything, the tokenizer's thread included
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: spec.threads])
    Path(spec.result_file).write_text(json.dumps(measure(spec)))


if __name__ == "__main__":
    main(sys.argv[1])
