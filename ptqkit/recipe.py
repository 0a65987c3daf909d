"""The quantization recipe a run applies, in order: the device's contract, folded SmoothQuant, capture, runtime
smoothing and calibration, then the optional auto-fallback and QAT steps (calibrate)."""
from __future__ import annotations

import sys
from dataclasses import replace

from .backends import get_backend
from .backends.pytorch import TorchRunner
from .calibration import METHODS
from .config import INT8_ATTENTION, WEIGHT_ROUNDINGS, QuantConfig, RunConfig
from .data import encode, split_train
from .errors import UserError
from .evaluation import evaluate, predict_logits
from .loading import Loaded
from .qat import QATConfig, train_qat
from .quantizer import Quantizer, run_calibration
from .rounding import round_weights
from .smoothquant import collect_input_absmax, linear_input_absmax, smooth, smooth_runtime, track_linear_inputs
from .stages import Stages
from .sysinfo import SATURATING_ISAS, host_int8_isa

# --int8-attention auto under --backend auto, where OpenVINO and ONNX Runtime compete on one exported file: on (on
# VNNI x86; see int8_attention). OpenVINO, the faster engine there, gains most from it; ONNX Runtime runs it
# at the same speed (docs/attention.md has the figures)
AUTO_INT8_ATTENTION = True
# ... but only up to this --max-seq-len. Over longer rows the softmax output P spreads over many keys and its uint8
# grid (one scale per tensor) rounds the small probabilities away: on IMDB at 512 tokens (AMD EPYC Zen 4) int8
# attention changed 26 of 2,000 corpus reviews against fp32 (accuracy -0.40 pt, NNCF 23) where float attention
# changed 17 (-0.25 pt), for 4% of latency at 1x512 (48.6 vs 50.6 ms, bf16 outside int8); docs/attention.md
INT8_ATTENTION_MAX_SEQ_LEN = 128


def calibrate(ld: Loaded, cfg: RunConfig, data: list[dict], stages: Stages | None = None) -> tuple[Quantizer, dict]:
    """PTQ on train batches (never validation), then the optional auto-fallback and QAT steps, each a stage.

    Returns the quantizer and what the optional steps did (for the report)."""
    stages = stages or Stages()
    try:
        config = QuantConfig.for_device(cfg.device, isa=cfg.isa, attention_matmuls=int8_attention(cfg))
    except ValueError as e:
        raise UserError(str(e)) from None
    if cfg.calib_method:
        config = config.with_calib_method(cfg.calib_method)
    if cfg.weight_rounding not in WEIGHT_ROUNDINGS:
        raise UserError(f"--weight-rounding must be one of {', '.join(WEIGHT_ROUNDINGS)}, not {cfg.weight_rounding!r}")
    steps: dict = {}
    if cfg.smoothquant is not None:
        # In place on the float model: its outputs do not change, only where the range sits.
        with stages.time("calibrate: smoothquant"):
            steps["smoothed"] = smooth(ld.model, collect_input_absmax(ld.model, data), cfg.smoothquant)
    with stages.time("capture"):
        q = Quantizer(device=cfg.device, config=config)
        calib_model = q.calib(ld.model, ld.input_names, weights_changed=bool(steps.get("smoothed")))
        if long_rows_off(cfg):
            steps["int8_attention"] = f"off: --max-seq-len over {INT8_ATTENTION_MAX_SEQ_LEN} (docs/attention.md)"
        obstacle = q.attention_obstacle(ld.model) if config.attention_matmuls and cfg.int8_attention == "auto" else ""
        if obstacle:
            steps["int8_attention"] = f"off: {obstacle}"
            print(f"warning: int8 attention off (float attention): {obstacle}", file=sys.stderr)
            q = Quantizer(device=cfg.device, config=replace(config, attention_matmuls=False))
            calib_model = q.calib(ld.model, ld.input_names, weights_changed=bool(steps.get("smoothed")))
    steps["capture"] = q.captured_how
    one_pass = (config.smooth_alpha is not None and config.activation.ch_axis is None
                and not METHODS[config.activation.method].histogram)
    if config.smooth_alpha is not None and not one_pass:  # histogram ranges: smoothing statistics first
        with stages.time("calibrate: runtime smoothing statistics"):
            absmax = collect_input_absmax(ld.model, data)
            steps["runtime_smoothed"] = len(smooth_runtime(q, absmax, config.smooth_alpha))
    with stages.time("calibrate: observers"):
        if one_pass:  # the contract's runtime smoothing, its statistics gathered in the same pass as the ranges
            track_linear_inputs(q, ld.model)
        run_calibration(calib_model, data, total=len(data))
        if one_pass:
            steps["runtime_smoothed"] = len(smooth_runtime(q, linear_input_absmax(q), config.smooth_alpha))
        q.quantize()
    if cfg.max_accuracy_drop is not None:
        with stages.time("fallback"):
            steps["holdout_drop"] = auto_fallback(q, ld, cfg, data, cfg.fallback_holdout)
    if cfg.weight_rounding == "gptq":  # after the fallback choice: only the layers that stay int8 are rounded
        with stages.time("calibrate: weight rounding"):
            steps["rounded_linears"] = round_weights(q, data)
    if cfg.qat_epochs:
        with stages.time("qat"):
            steps["qat_steps"] = train_qat(q, ld.task, ld.tokenizer, QATConfig(
                epochs=cfg.qat_epochs, batch_size=cfg.batch_size, max_seq_len=cfg.max_seq_len))
    return q, steps


def int8_attention(cfg: RunConfig) -> bool:
    """Whether to quantize the attention matmuls: --int8-attention on/off, else (auto) the forced engine's
    preference (Engine.int8_attention), AUTO_INT8_ATTENTION under --backend auto. Auto is off over
    INT8_ATTENTION_MAX_SEQ_LEN tokens, on aarch64 (its contract was checked on ARM without it) and on x86 without
    VNNI (measured only on a VNNI CPU; there the engines' int8 kernels saturate or are slower than fp32, see
    docs/isa.md)."""
    if cfg.int8_attention not in INT8_ATTENTION:
        raise UserError(f"--int8-attention must be one of {', '.join(INT8_ATTENTION)}, not {cfg.int8_attention!r}")
    if cfg.int8_attention != "auto":
        return cfg.int8_attention == "on"
    if cfg.device != "x86" or (cfg.isa or host_int8_isa()) in SATURATING_ISAS:
        return False
    if long_rows_off(cfg):
        return False
    return AUTO_INT8_ATTENTION if cfg.backend == "auto" else get_backend(cfg.backend).int8_attention


def long_rows_off(cfg: RunConfig) -> bool:
    """--int8-attention auto over INT8_ATTENTION_MAX_SEQ_LEN tokens: float attention (the report says why)."""
    return cfg.int8_attention == "auto" and cfg.max_seq_len > INT8_ATTENTION_MAX_SEQ_LEN


def auto_fallback(q: Quantizer, ld: Loaded, cfg: RunConfig, calib: list[dict], holdout_size: int = 1000) -> float:
    """Leave the fewest, most sensitive layers in fp32 until the fake-quant drop on a held-out slice of the
    train split is within cfg.max_accuracy_drop points of the task's first metric (validation is never used).
    Returns the holdout drop reached; the chosen layers are in q.fallback_layers."""
    _, holdout = split_train(ld.task, len(calib) * cfg.batch_size, holdout_size)
    features = encode(ld.tokenizer, holdout, cfg.max_seq_len)
    labels = [e.label for e in holdout]
    metric = ld.task.metrics[0]

    def score(model) -> float:
        logits = predict_logits(TorchRunner(model, ld.input_names, 1), features, cfg.batch_size, ld.pad_id, desc="holdout")
        return 100 * evaluate(logits, labels, ld.task.metrics, ld.task.num_labels)[metric]

    baseline = score(ld.model)
    sensitivity = q.amp(calib[:4])
    for n in range(len(q.points) + 1):
        q.fallback(sensitivity, n)
        drop = baseline - score(q.quantize())
        print(f"auto-fallback: {n} layer(s) in fp32, holdout {metric} drop {drop:.2f} pt")
        if drop <= cfg.max_accuracy_drop:
            break
    return round(drop, 3)
