"""Tiny random BERTs and batches shared by the frontend, export and backend tests."""
from __future__ import annotations

import torch

NAMES = ("input_ids", "attention_mask", "token_type_ids")
N_LINEARS = 14  # 2 layers x 6 linears + pooler + classifier
# int8 kernels that int8 attention adds per engine to a 2-layer BERT: OpenVINO fuses each
# layer's attention into one int8 subgraph, ONNX Runtime runs its two matmuls as int8 ops
ATTENTION_KERNELS = {"openvino": 2, "onnxruntime": 4}
N_ATTENTION_POINTS = 4  # 2 layers x (Q.K^T, P.V)


def int8_kernels(engine: str, attention: bool, linears: int = N_LINEARS) -> int:
    """int8 kernels an engine reports for a 2-layer BERT with `linears` quantized linears."""
    return linears + (ATTENTION_KERNELS[engine] if attention else 0)


def tiny_bert(seed: int = 0, classifier_gain: float = 50.0, layers: int = 2) -> torch.nn.Module:
    """2-layer BERT (the counts above; `layers` less where a test needs only one layer of each op, e.g. to halve an
    Inductor compile); the classifier is scaled up so that random-weight logits are informative (argmax varies)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64, num_labels=2, attn_implementation="eager")
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(classifier_gain)
    return model


def make_batch(n: int, seq: int, seed: int, names: tuple[str, ...] = NAMES) -> dict[str, torch.Tensor]:
    """Random ids; odd rows padded over their last quarter; second half of each row is segment 1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 100, (n, seq), generator=g)
    mask = torch.ones(n, seq, dtype=torch.long)
    mask[1::2, seq * 3 // 4:] = 0
    batch = {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}
    if "token_type_ids" in names:
        tt = torch.zeros(n, seq, dtype=torch.long)
        tt[:, seq // 2:] = 1
        batch["token_type_ids"] = tt
    return batch


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if hasattr(out, "logits") else out
