"""QAT: continue from the PTQ state and learn LSQ scales (and weights) on the train split."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .data import TaskData, encode
from .models import train_steps
from .lsq import LSQQuantizer
from .quantizer import Quantizer


@dataclass(frozen=True)
class QATConfig:
    epochs: float = 1.0  # fractions allowed: 0.25 trains on a quarter of the train split
    batch_size: int = 32
    lr_scales: float = 1e-3  # relative: each scale's lr is this times its calibrated size (scales span 1e-4..1e-1)
    lr_weights: float = 1e-5
    max_seq_len: int = 128
    seed: int = 0


def train_qat(q: Quantizer, task: TaskData, tokenizer, cfg: QATConfig) -> int:
    """Fine-tune the fake-quant graph with task loss; write the learned scales back. Returns steps taken."""
    graph = q.qat()
    scales = [m.scale for m in q.observers().values() if isinstance(m, LSQQuantizer)]
    scale_ids = {id(p) for p in scales}
    weights = [p for p in graph.parameters() if id(p) not in scale_ids and p.requires_grad]
    # Adam moves every parameter by about lr per step, so one absolute lr would wipe out small weight scales.
    groups = [{"params": [s], "lr": cfg.lr_scales * float(s.detach().abs().mean()), "weight_decay": 0.0} for s in scales]
    opt = torch.optim.AdamW(groups + [{"params": weights, "lr": cfg.lr_weights}])
    features = encode(tokenizer, task.train, cfg.max_seq_len)
    steps = max(1, int(cfg.epochs * len(features) / cfg.batch_size))

    def clamp_scales() -> None:
        with torch.no_grad():
            for s in scales:
                s.clamp_(min=torch.finfo(torch.float32).eps)

    done = train_steps(lambda batch: graph(**batch).logits, features, [e.label for e in task.train], task.num_labels,
                       opt, steps, cfg.batch_size, tokenizer.pad_token_id or 0, cfg.seed, "QAT", after_step=clamp_scales)
    q.end_qat()
    q.quantize()
    return done
