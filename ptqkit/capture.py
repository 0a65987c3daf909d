"""Capture an HF sequence classifier as a torch.export graph with dynamic batch and sequence dimensions.

This replaces the HF fx tracer (HFTracer) that transformers 5 removed: the frontend inserts observers into
this graph, calibrates it and turns it into the fake-quant graph.
"""
from __future__ import annotations

import inspect
import re
import traceback
from dataclasses import dataclass

import torch

from .errors import one_line
from .inputs import INPUT_NAMES


class CaptureError(Exception):
    """The model could not be captured; the message names the failing op or source line."""


@dataclass
class Captured:
    """The captured graph and how it was captured (for the report)."""

    module: torch.fx.GraphModule
    how: str


def model_input_names(model: torch.nn.Module, available: tuple[str, ...] | list[str] = INPUT_NAMES) -> tuple[str, ...]:
    """The inputs to feed: those of `available` (the tokenizer's outputs) that the model's forward takes.

    Missing optional inputs are never invented. Token types are dropped where the model has a single segment
    type (type_vocab_size < 2, e.g. RoBERTa, DeBERTa-v3): there they can only be zero, and a pair-encoding
    tokenizer's ones would index past the embedding table.
    """
    params = inspect.signature(model.forward).parameters
    names = tuple(n for n in INPUT_NAMES if n in available and n in params)
    if getattr(model.config, "type_vocab_size", 2) < 2:
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


def capture(model: torch.nn.Module, input_names: tuple[str, ...] | None = None) -> Captured:
    """torch.export the model (eval mode, eager attention) with dynamic batch and seq dims.

    First with the full range seq_len 2..max positions; if the model's code constrains the length (MobileBERT
    guards seq_len != 2), again with a sequence dimension whose constraints torch.export derives itself, which
    the graph then checks on every call. Which capture was used is in the result's `how`.
    """
    model.eval()
    names = input_names or model_input_names(model)
    max_len = int(getattr(model.config, "max_position_embeddings", 512) or 512)
    batch = torch.export.Dim("batch", min=1, max=4096)
    ex = example_inputs(model, names)
    seq = torch.export.Dim("seq_len", min=2, max=max_len)
    try:
        return Captured(_export(model, ex, names, batch, seq), f"dynamic (batch, seq_len 2..{max_len})")
    except Exception as e:  # noqa: BLE001 - retried below or reported in one line
        guard = re.search(r"satisfy the generated guard (.+?)\.\s*$", str(e), re.MULTILINE)
        if guard is None:
            raise CaptureError(f"cannot capture {type(model).__name__} with torch.export: {_where(e)}") from e
    try:
        module = _export(model, ex, names, batch, torch.export.Dim.DYNAMIC(max=max_len))
    except Exception as e:  # noqa: BLE001
        raise CaptureError(f"cannot capture {type(model).__name__} with torch.export, even with derived "
                           f"seq_len constraints: {_where(e)}") from e
    rule = guard.group(1).replace(f"L['{names[0]}'].size()[1]", "seq_len")
    return Captured(module, f"dynamic (batch, seq_len <= {max_len}) with the guard torch.export derived: {rule}")


def _export(model, ex: dict, names: tuple[str, ...], batch, seq) -> torch.fx.GraphModule:
    ep = torch.export.export(model, (), ex, dynamic_shapes={n: {0: batch, 1: seq} for n in names}, strict=False)
    return ep.module()


def _where(e: Exception) -> str:
    """The failing op (first line of the message) and the deepest frame in model code."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if "/torch/" not in f.filename]
    loc = f" at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno} ({frames[-1].line})" if frames else ""
    return f"{one_line(e)}{loc}"
