"""Deployment runtime: classify text with an exported artefact directory, without torch or transformers.

What a target server needs is in the artefact directory (runtime.json, the int8 QDQ ONNX, tokenizer/); this
module needs only numpy, `tokenizers` and an engine (OpenVINO or ONNX Runtime). It reuses the engines' own
backends (ptqkit.backends, torch-free), so it compiles exactly as bert_ptq.py does, on the engine and in the
precision bert_ptq.py chose (runtime.json): OpenVINO int8 with the f32 inference-precision hint, or "int8-bf16"
only on a CPU whose default is bf16 (the engine's default on ARM runs everything outside int8 in f16); ONNX
Runtime with the QDQ-friendly optimizer settings. Nothing imported here may import torch: tests/test_runtime.py
checks it.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from . import batcher
from .artifacts import Layout
from .backends import FILE_ENGINES
from .backends.base import MIN_AGREEMENT
from .cpu import describe
from .errors import UserError, one_line, reason
from .inputs import INPUT_NAMES
from .sysinfo import usable_cores

RUNTIME_FORMAT = 1


@dataclass(frozen=True)
class RuntimeConfig:
    """What runtime.json records: enough to tokenize like the host and name the outputs."""

    model_file: str
    input_names: tuple[str, ...]
    max_seq_len: int
    pad_id: int
    id2label: dict[int, str]  # empty for regression
    text_pairs: bool  # inputs are "first<TAB>second" pairs
    # the int8 engine and precision the host served (bert_ptq.py's choice); "" where none was chosen (export.py)
    engine: str = ""
    precision: str = ""

    def to_dict(self) -> dict:
        return {"format": RUNTIME_FORMAT, "model_file": self.model_file, "input_names": list(self.input_names),
                "max_seq_len": self.max_seq_len, "truncation": "longest_first", "pad_id": self.pad_id,
                "tokenizer": Layout(Path()).tokenizer_json.as_posix(), "id2label": {str(k): v for k, v in self.id2label.items()},
                "text_pairs": self.text_pairs, "engine": self.engine, "precision": self.precision}

    @classmethod
    def from_dict(cls, d: dict) -> "RuntimeConfig":
        return cls(model_file=d["model_file"], input_names=tuple(d["input_names"]), max_seq_len=int(d["max_seq_len"]),
                   pad_id=int(d["pad_id"]), id2label={int(k): v for k, v in d["id2label"].items()},
                   text_pairs=bool(d["text_pairs"]), engine=str(d.get("engine", "")),
                   precision=str(d.get("precision", "")))

    def served(self, engine: str | None) -> tuple[str, str]:
        """The engine to run (the given one, else the host's, else the first file engine) and its precision: the
        host's where it is that engine and this CPU runs it as the host did, else the engine's plain int8."""
        from .backends import engine_class

        engine = engine or self.engine or FILE_ENGINES[0]
        if engine not in FILE_ENGINES:
            raise UserError(f"unknown engine {engine!r}; choose one of {', '.join(FILE_ENGINES)}")
        cls = engine_class(engine)
        wanted = self.precision if engine == self.engine else ""
        return engine, wanted if wanted in cls.int8_variants and cls.runs_here(wanted) else cls.int8_variants[0]


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found: {what}") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}); re-run export.py or bert_ptq.py") from None


class Tokenizer:
    """The host's fast tokenizer (tokenizer.json), truncating and padding as the pipeline does."""

    def __init__(self, path: Path, cfg: RuntimeConfig):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises a bare Exception on bad files
            raise UserError(f"{path} is not a readable tokenizer.json ({reason(e)}); re-run export.py") from None
        self.tok.no_padding()
        self.tok.enable_truncation(cfg.max_seq_len)  # the default strategy, longest_first, is transformers' too
        self.cfg = cfg

    def encode(self, texts: Sequence[str]) -> list[dict[str, list[int]]]:
        if self.cfg.text_pairs:
            inputs = [tuple((t.split("\t", 1) + [""])[:2]) for t in texts]
        else:
            inputs = list(texts)
        encs = self.tok.encode_batch(inputs)
        return [dict(zip(INPUT_NAMES, (e.ids, e.attention_mask, e.type_ids))) for e in encs]


class Classifier:
    """An artefact directory compiled on one engine: texts in, logits and labels out."""

    def __init__(self, artefact_dir: str | Path, engine: str | None = None, threads: int | None = None,
                 max_seq_len: int | None = None):
        """`engine`: default the one bert_ptq.py served (runtime.json), in its precision where this CPU has it.
        `max_seq_len`: truncate to this many tokens instead of the exported run's (runtime.json)."""
        self.dir = Path(artefact_dir)
        layout = Layout(self.dir)
        if not self.dir.is_dir():
            raise UserError(f"artefact dir {self.dir} does not exist; pass the --output-dir of bert_ptq.py or export.py")
        self.cfg = RuntimeConfig.from_dict(read_json(layout.runtime_json, "not an artefact dir of ptqkit >= runtime "
                                                      "format 1; re-run export.py or bert_ptq.py with this --output-dir"))
        if max_seq_len:
            self.cfg = replace(self.cfg, max_seq_len=max_seq_len)
        model = self.dir / self.cfg.model_file
        if not model.is_file():
            raise UserError(f"{model} not found: the artefact dir is incomplete; copy all of it")
        self.tokenizer = Tokenizer(layout.tokenizer_json, self.cfg)
        self.engine, self.precision = self.cfg.served(engine)
        # the throughput form: every core busy (batcher.make_pool); one call is one request on it
        self.runner = batcher.make_pool(self.engine, model, threads or usable_cores(), self.precision)

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Length-bucketed batches (batcher.classify), results in input order."""
        if not texts:
            return np.zeros((0, max(len(self.cfg.id2label), 1)), np.float32)
        return batcher.classify(texts, self.tokenizer.encode, self.runner, self.cfg.pad_id, self.cfg.input_names,
                                batch_size, self.cfg.max_seq_len)

    def records(self, texts: Sequence[str], batch_size: int = 32) -> Iterator[dict]:
        """One JSON-ready dict per text: label name and id (or the score of a regression model), logits."""
        for text, row in zip(texts, self.logits(texts, batch_size)):
            logits = [round(float(x), 6) for x in row]
            if not self.cfg.id2label:
                yield {"text": text, "score": logits[0]}
            else:
                label_id = int(np.argmax(row))
                yield {"text": text, "label": self.cfg.id2label.get(label_id, str(label_id)), "label_id": label_id, "logits": logits}


def read_texts(args: Sequence[str], file: str | None, stdin: Iterable[str]) -> list[str]:
    """Texts from arguments, else a file (one per line), else stdin. Every line is kept, empty ones too: as in the
    main command (user_files.py), an empty text is classified like any other and counted (empty_texts)."""
    if args:
        return list(args)
    if file:
        try:
            with open(file, encoding="utf-8") as f:
                return f.read().splitlines()
        except OSError as e:
            raise UserError(f"cannot read {file}: {e.strerror}") from None
    return [line.rstrip("\r\n") for line in stdin]


def empty_texts(texts: Sequence[str]) -> int:
    """How many texts are empty or blank (a pair "first<TAB>second" with both sides blank too)."""
    return sum(not t.strip() for t in texts)


def _int8_primitives(runner) -> dict[str, int]:
    """OpenVINO only: which implementation ran the int8 layers (e.g. gemm_acl_i8 = Arm Compute Library)."""
    if not hasattr(runner, "compiled"):
        return {}
    found: Counter = Counter()
    for op in runner.compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        get = lambda key: info[key].astype(str) if key in info else ""  # noqa: E731
        if get("layerType") in ("FullyConnected", "MatMul") and get("runtimePrecision") in ("i8", "u8"):
            found[f"primitive:{get('primitiveType')}"] += 1
    return dict(found)


def self_check(artefact_dir: str | Path, engines: Sequence[str | None], batch_size: int = 32,
               threads: int = 1) -> dict:
    """Run the host's stored sentences on each engine here (None: the one the host served): int8 kernel evidence
    and argmax agreement with the host's fake-quant logits (and with the host int8 engine's labels). `passed` needs
    both on every engine."""
    artefact_dir = Path(artefact_dir)
    host = read_json(Layout(artefact_dir).host_check, "bert_ptq.py writes it (export.py alone does not); run bert_ptq.py")
    texts = [e["text"] if e.get("text_pair") is None else f"{e['text']}\t{e['text_pair']}" for e in host["examples"]]
    fq = np.array([e["fakequant_logits"] for e in host["examples"]]).argmax(-1)
    host_int8 = np.array([e["int8_label"] for e in host["examples"]])
    report: dict = {"cpu": describe(), "sentences": len(texts), "host_int8_engine": host.get("int8_engine"),
                    "min_agreement": MIN_AGREEMENT, "engines": {}}
    for engine in engines:
        name = engine or "served"
        try:
            clf = Classifier(artefact_dir, engine, threads)
            name = clf.engine
            ev = clf.runner.kernels()
            pred = clf.logits(texts, batch_size).argmax(-1)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - one engine failing is reported, the other still runs
            report["engines"][name] = {"error": one_line(e), "passed": False}
            continue
        agree = round(float((pred == fq).mean()), 4)
        report["engines"][name] = {
            "precision": clf.precision, "int8_kernels": ev.int8, "fp32_kernels": ev.fp32,
            "kernel_details": ev.details | _int8_primitives(clf.runner),
            "agreement_with_host": agree, "agreement_with_host_int8": round(float((pred == host_int8).mean()), 4),
            "passed": ev.int8 > 0 and agree >= MIN_AGREEMENT,
        }
    report["passed"] = bool(report["engines"]) and all(e["passed"] for e in report["engines"].values())
    return report
