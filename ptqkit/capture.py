"""Capture an HF sequence classifier as a torch.export graph with dynamic batch and sequence dimensions.

This replaces the HF fx tracer (HFTracer) that transformers 5 removed: the frontend inserts observers into
this graph, calibrates it and turns it into the fake-quant graph.
"""
from __future__ import annotations

import traceback

import torch

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")


class CaptureError(Exception):
    """The model could not be captured; the message names the failing op or source line."""


def model_input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The tokenizer inputs this model's forward takes (DistilBERT/RoBERTa-style models lack token types)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    names = tuple(n for n in INPUT_NAMES if n in params)
    if model.config.model_type in ("roberta", "distilbert", "xlm-roberta", "camembert"):
        names = tuple(n for n in names if n != "token_type_ids")
    return names


def example_inputs(model: torch.nn.Module, input_names: tuple[str, ...], batch: int = 2, seq_len: int = 16) -> dict:
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    ex = {"input_ids": torch.randint(5, vocab, (batch, seq_len), generator=g)}
    if "attention_mask" in input_names:
        ex["attention_mask"] = torch.ones(batch, seq_len, dtype=torch.long)
    if "token_type_ids" in input_names:
        ex["token_type_ids"] = torch.zeros(batch, seq_len, dtype=torch.long)
    return ex


def capture(model: torch.nn.Module, input_names: tuple[str, ...] | None = None) -> torch.fx.GraphModule:
    """torch.export the model (eval mode, eager attention) with dynamic batch and seq dims; return its module."""
    model.eval()
    names = input_names or model_input_names(model)
    max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    batch = torch.export.Dim("batch", min=1, max=4096)
    seq = torch.export.Dim("seq_len", min=2, max=max_len)
    ex = example_inputs(model, names)
    try:
        ep = torch.export.export(model, (), ex, dynamic_shapes={n: {0: batch, 1: seq} for n in names}, strict=False)
    except Exception as e:  # noqa: BLE001 - report where capture failed, in one line
        raise CaptureError(f"cannot capture {type(model).__name__} with torch.export: {_where(e)}") from e
    return ep.module()


def _where(e: Exception) -> str:
    """The failing op (first line of the message) and the deepest frame in model code."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename]
    loc = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"{type(e).__name__}: {first}{loc}"
