"""Changed predictions: the validation rows whose predicted class an int8 model changes against fp32. Every
variant's report entry counts them (changed_vs_fp32, beside agreement_with_fp32); ours also lists the first few,
so that a user can read what quantization changed. Classification only: a regression score has no class to change.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .data import Example
from .markdown import table

LISTED = 5  # changed examples of our int8 variant kept in report.json and shown in report.md


def changed_rows(logits: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Indices of the rows whose argmax differs between the two logit arrays, in row order."""
    return np.flatnonzero(np.asarray(logits).argmax(-1) != np.asarray(reference).argmax(-1))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def changed_examples(examples: Sequence[Example], reference: np.ndarray, logits: np.ndarray,
                     id2label: dict[int, str], n: int = LISTED) -> list[dict]:
    """The first n changed rows: text (and pair), the fp32 and int8 labels, each model's confidence in its own label
    (softmax probability)."""
    p_ref, p = softmax(reference), softmax(logits)
    out = []
    for i in changed_rows(logits, reference)[:n]:
        a, b = int(p_ref[i].argmax()), int(p[i].argmax())
        e = examples[i]
        out.append({"row": int(i), "text": e.text, **({"text_pair": e.text_pair} if e.text_pair is not None else {}),
                    "fp32_label": id2label.get(a, str(a)), "int8_label": id2label.get(b, str(b)),
                    "fp32_confidence": round(float(p_ref[i, a]), 4), "int8_confidence": round(float(p[i, b]), 4)})
    return out


def markdown_lines(rep: dict) -> list[str]:
    """report.md's section: the changed examples of the variant that lists them (ours), if any."""
    lines = []
    for v in (v for v in rep["variants"] if "changed_examples" in v):
        n, listed = v["changed_vs_fp32"], v["changed_examples"]
        lines += [f"## Changed predictions: {v['name']} against PyTorch fp32 ({n} of {rep['eval_examples']} "
                  f"validation examples{f'; the first {len(listed)}' if listed else ''})", ""]
        if listed:
            lines += table(["row", "text", "fp32 -> int8", "confidence fp32 / int8"],
                           [[e["row"], _text(e), f"{e['fp32_label']} -> {e['int8_label']}",
                             f"{e['fp32_confidence']:.3f} / {e['int8_confidence']:.3f}"] for e in listed])
            lines.append("")
    return lines


def _text(e: dict, limit: int = 200) -> str:
    """One table cell: the text (and its pair after ' [SEP] '), on one line, cut to `limit` characters."""
    text = e["text"] + (f" [SEP] {e['text_pair']}" if "text_pair" in e else "")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
