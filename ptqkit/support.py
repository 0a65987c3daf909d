"""Which BERT-family model types go through the main command's default path, checked on tiny random classifiers.

Used by tools/support_table.py (docs/model-support.md) and by the tests: each type is built from a tiny config,
fed the inputs its own tokenizer emits, and quantized exactly as `bert_ptq.py --device x86` does with default
flags on this host (recipe.calibrate with RunConfig's defaults: the host ISA's contract, runtime SmoothQuant,
int8 attention as --int8-attention auto chooses, with its fallback); the converted model is exported as QDQ ONNX
and compiled int8 on every --backend auto candidate, whose int8 kernels are counted and whose logits are compared
with the torch fake-quant graph's.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from . import artifacts
from .capture import example_inputs, model_input_names
from .config import RunConfig
from .errors import UserError, one_line
from .inputs import INPUT_NAMES

NO_TOKEN_TYPES = INPUT_NAMES[:2]  # RoBERTa-style tokenizers emit no token types
_SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
_ROBERTA = dict(_SMALL, type_vocab_size=1)  # as in the released RoBERTa-family checkpoints
# DeBERTa-v3 checkpoints: relative attention with shared keys, no absolute positions, one segment type.
_DEBERTA_V3 = dict(relative_attention=True, position_biased_input=False, pos_att_type=["p2c", "c2p"],
                   norm_rel_ebd="layer_norm", share_att_key=True, position_buckets=256, max_relative_positions=-1,
                   type_vocab_size=0)


@dataclass(frozen=True)
class ModelType:
    """A tiny stand-in for one model type: its config and what its own tokenizer emits."""

    name: str
    config_class: str
    config: dict
    tokenizer_inputs: tuple[str, ...]
    max_positions: int = 512


MODEL_TYPES = (
    ModelType("bert", "BertConfig", _SMALL, INPUT_NAMES),
    ModelType("distilbert", "DistilBertConfig", dict(dim=32, n_layers=2, n_heads=2, hidden_dim=64), NO_TOKEN_TYPES),
    ModelType("roberta", "RobertaConfig", _ROBERTA, NO_TOKEN_TYPES, 514),
    ModelType("xlm-roberta", "XLMRobertaConfig", _ROBERTA, NO_TOKEN_TYPES, 514),
    ModelType("camembert", "CamembertConfig", _ROBERTA, NO_TOKEN_TYPES, 514),
    ModelType("electra", "ElectraConfig", dict(_SMALL, embedding_size=16), INPUT_NAMES),
    ModelType("albert", "AlbertConfig", dict(_SMALL, embedding_size=16), INPUT_NAMES),
    ModelType("mpnet", "MPNetConfig", _SMALL, NO_TOKEN_TYPES, 514),
    ModelType("mobilebert", "MobileBertConfig", dict(_SMALL, embedding_size=16, intra_bottleneck_size=16,
                                                     true_hidden_size=16, num_feedforward_networks=2), INPUT_NAMES),
    ModelType("deberta-v2", "DebertaV2Config", dict(_SMALL, relative_attention=True, pos_att_type=["p2c", "c2p"],
                                                    conv_kernel_size=3, position_buckets=256), INPUT_NAMES),
    ModelType("deberta-v3", "DebertaV2Config", dict(_SMALL, **_DEBERTA_V3), INPUT_NAMES),
)
TYPES = {t.name: t for t in MODEL_TYPES}


def tiny_classifier(name: str, vocab_size: int = 100, seed: int = 0, classifier_gain: float = 50.0) -> torch.nn.Module:
    """A seeded 2-layer random classifier (2 labels, eager attention) of model type `name`.

    The last linear is scaled up so that random-weight logits vary with the input (argmax agreement means
    something); real checkpoints need no such help."""
    import transformers

    t = TYPES[name]
    config = getattr(transformers, t.config_class)(vocab_size=vocab_size, max_position_embeddings=t.max_positions,
                                                   num_labels=2, **t.config)
    torch.manual_seed(seed)
    model = transformers.AutoModelForSequenceClassification.from_config(config, attn_implementation="eager").eval()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(classifier_gain)
    return model


def random_batch(model: torch.nn.Module, names: tuple[str, ...], n: int, seq: int, seed: int) -> dict[str, torch.Tensor]:
    """Random ids; odd rows padded over their last quarter; token types 1 over the second half."""
    g = torch.Generator().manual_seed(seed)
    batch = example_inputs(model, names, n, seq)
    batch["input_ids"] = torch.randint(5, model.config.vocab_size, (n, seq), generator=g)
    if "attention_mask" in names:
        batch["attention_mask"][1::2, seq * 3 // 4:] = 0
    if "token_type_ids" in names:
        batch["token_type_ids"][:, seq // 2:] = 1
    return batch


# The flags of bert_ptq.py that take a model off the default path the support table checks, and what they change.
PATH_FLAGS = (
    ("--int8-attention on|off", "forces the attention matmuls (Q.K^T, P.V) int8 or float; auto (default) is on under "
                                "--backend auto (and openvino) on x86 with VNNI"),
    ("--backend NAME", "one engine instead of the faster faithful one of OpenVINO and ONNX Runtime; --int8-attention "
                       "auto then follows that engine (on for openvino only)"),
    ("--isa ISA", "the target's int8 ISA instead of this host's: without VNNI (sse, avx2, avx512) 7-bit weights and "
                  "float attention"),
    ("--device aarch64", "the ARM contract: per-tensor weights, symmetric int8 activations with percentile ranges, "
                         "no runtime smoothing, float attention"),
    ("--calib-method NAME", "another activation range method (entropy switches to a symmetric grid)"),
    ("--smoothquant ALPHA", "SmoothQuant folded into the weights before the runtime smoothing"),
    ("--max-accuracy-drop PTS", "leaves the most sensitive layers in fp32"),
    ("--qat-epochs N", "QAT after PTQ (LSQ scales and weights)"),
)


@dataclass
class EngineCheck:
    """Our int8 model on one --backend auto candidate, in the engine's default int8 precision."""

    engine: str
    int8_kernels: int = 0
    agreement: float = 0.0  # argmax agreement with the torch fake-quant graph
    max_rel_error: float = 0.0  # max |engine - fake-quant| logit error over the largest fake-quant logit
    error: str = ""  # the one-line reason where the engine failed


@dataclass
class Support:
    """One model type's outcome on the default path."""

    model_type: str
    inputs: tuple[str, ...] = ()
    captured: str = ""
    linears: int = 0  # quantized linear calls in the graph (a module called twice counts twice)
    shared: int = 0  # quantization points fed by more than one call (modules shared across depth)
    attention: str = ""  # "int8", or "off: why" (float attention)
    engines: tuple[EngineCheck, ...] = ()
    error: str = ""  # the one-line reason where the type failed


def check_model_type(name: str, work_dir: str | Path | None = None, samples: int = 64) -> Support:
    """The main command's default path on a tiny random `name` classifier: calibrate with recipe.calibrate and
    RunConfig's defaults, convert, export QDQ ONNX, compile it int8 on each installed --backend auto candidate."""
    from transformers import AutoModelForSequenceClassification

    from .backends import get_backend, installed_engines
    from .data import TaskData
    from .export import export_onnx
    from .loading import Loaded
    from .recipe import calibrate

    cfg = RunConfig()  # `bert_ptq.py --device x86` with default flags
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:  # a user's model arrives through save_pretrained
        tiny_classifier(name).save_pretrained(tmp)
        model = AutoModelForSequenceClassification.from_pretrained(tmp, attn_implementation="eager").eval()
    result = Support(name, model_input_names(model, TYPES[name].tokenizer_inputs))
    names = result.inputs
    # calibrate reads only the model and its inputs on the default path (no auto-fallback, no QAT)
    ld = Loaded(TaskData("random ids", [], [], 2, ("accuracy",)), model, None, name, names, [], [])
    try:
        q, steps = calibrate(ld, cfg, [random_batch(model, names, 8, 16, 100 + i) for i in range(2)])
        converted = q.convert(model)
    except UserError as e:
        result.error = str(e)
        return result
    result.captured = q.captured_how
    result.linears = sum(len(p.nodes) for p in q.points if p.kind == "linear")
    result.shared = sum(len(p.nodes) > 1 for p in q.points)
    result.attention = "int8" if q.config.attention_matmuls else steps.get(
        "int8_attention", f"off: --int8-attention {cfg.int8_attention} on {cfg.device} {q.config.isa}")
    batch = random_batch(model, names, samples, 24, 7)
    with torch.no_grad():
        expected = q.quantize()(**batch).logits.numpy()
    checks = []
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        path = artifacts.Layout(Path(tmp)).int8_onnx
        onnx = export_onnx(converted, names, example_inputs(model, names, 1, 32), path)
        for engine_name in installed_engines():
            check = EngineCheck(engine_name)
            try:
                engine = get_backend(engine_name)
                runner = engine.compile(onnx, 1, engine.int8_variants[0])
                got = runner({k: v.numpy() for k, v in batch.items()})
                check.int8_kernels = runner.kernels().int8
                check.agreement = round(float((got.argmax(-1) == expected.argmax(-1)).mean()), 4)
                check.max_rel_error = round(float(np.abs(got - expected).max() / np.abs(expected).max()), 4)
            except Exception as e:  # noqa: BLE001 - one engine failing is a row entry, as in the main command
                check.error = one_line(e)
            checks.append(check)
    result.engines = tuple(checks)
    return result
