"""What a torch-free target (predict.py) needs beside the int8 ONNX: tokenizer/, runtime.json, and host_check.json
(the host's own answers, so that the target can check itself against them)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from . import artifacts, runtime

if TYPE_CHECKING:  # torch-free at import, like the runtime it writes for
    from .data import Example


def write_runtime_files(out_dir: Path, tokenizer, model_config, input_names: tuple[str, ...], max_seq_len: int,
                        text_pairs: bool, served: tuple[str, str] = ("", "")) -> None:
    """tokenizer/ (save_pretrained) and runtime.json: the input names, padding, length and label names predict.py
    tokenizes and reads the logits with, and `served`, the (engine, precision) the host chose for our int8."""
    layout = artifacts.Layout(out_dir)
    with artifacts.atomic_dir(layout.tokenizer_dir) as tmp:
        tokenizer.save_pretrained(str(tmp))
    num_labels = model_config.num_labels
    rc = runtime.RuntimeConfig(
        model_file=layout.int8_onnx.name, input_names=input_names, max_seq_len=max_seq_len,
        pad_id=tokenizer.pad_token_id or 0,
        id2label={} if num_labels == 1 else {int(k): str(v) for k, v in model_config.id2label.items()},
        text_pairs=text_pairs, engine=served[0], precision=served[1])
    artifacts.write_json(layout.runtime_json, rc.to_dict())


def write_host_check(examples: Sequence[Example], fq_logits: np.ndarray, int8_logits: np.ndarray, engine: str,
                     out_dir: Path, n: int = 200) -> None:
    """The first n validation sentences with the host's fake-quant logits and int8 engine labels, so that a
    target can check itself against the host (predict.py --check)."""
    rows = [{"text": e.text, "text_pair": e.text_pair, "fakequant_logits": [float(x) for x in fq],
             "int8_label": int(i8.argmax())}
            for e, fq, i8 in zip(examples[:n], fq_logits, int8_logits)]
    artifacts.write_json(artifacts.Layout(out_dir).host_check, {"int8_engine": engine, "examples": rows})
