"""Per-layer precision under a speed budget (--max-slowdown, issue #29 item 2): the budget rule on fixed points, and
the frontier through the pipeline on a tiny model (held-out train sentences, the chosen layers in the artefacts)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from ptqkit import frontier
from ptqkit.config import RunConfig
from ptqkit.errors import UserError
from ptqkit.passes import MATMUL_NAMES
from ptqkit.pipeline import run
from ptqkit.quantizer import Quantizer


def point(k: int, agreement: float, ms: float) -> dict:
    return {"k": k, "agreement_with_fp32": agreement, "median_ms": ms}


POINTS = [point(0, 0.990, 10.0), point(1, 0.993, 10.3), point(2, 0.996, 10.8), point(3, 0.996, 10.9),
          point(4, 0.998, 12.0)]


@pytest.mark.parametrize("budget, k", [(0, 0), (3, 1), (5, 1), (8, 2), (9, 2), (19, 2), (20, 4)])
def test_budget_keeps_the_most_faithful_k_within_it(budget: float, k: int) -> None:
    """Ties in agreement go to the fewer float layers (k = 2, not 3)."""
    assert frontier.choose(POINTS, budget) == k


def test_k0_is_kept_when_timing_noise_puts_every_point_over_budget() -> None:
    assert frontier.choose([point(0, 0.99, 10.0), point(1, 1.0, 11.0)], 0) == 0
    assert frontier.choose([point(0, 0.99, 10.0), point(1, 0.99, 9.0)], 0) == 0  # faster but no more faithful


def test_frontier_through_the_pipeline(quick_cfg: RunConfig, tiny, tmp_path: Path, monkeypatch) -> None:
    """Five points k = 0, 1, 2, 4, 8, each adding the next most sensitive ops; the chosen k (set here: on a random tiny
    model the agreements tie) is what the artefacts carry: that many fewer int8 kernels on the engine."""
    monkeypatch.setattr(frontier, "choose", lambda points, budget: 2)
    rep = run(replace(quick_cfg, backend="onnxruntime", max_slowdown=5.0, fallback_holdout=40,
                      bench_only=True, int8_attention="off", output_dir=str(tmp_path)))
    f = rep["quantization"]["frontier"]
    assert (f["engine"], f["precision"], f["shape"], f["threads"]) == ("onnxruntime", "int8", "1x16", 1)
    assert f["holdout_sentences"] == 40 and f["chosen_k"] == 2 and f["max_slowdown_pct"] == 5.0
    assert [p["k"] for p in f["points"]] == list(frontier.FRONTIER_KS)
    layers = [p["float_layers"] for p in f["points"]]
    assert [len(x) for x in layers] == list(frontier.FRONTIER_KS)
    assert all(a == b[: len(a)] for a, b in zip(layers, layers[1:]))
    assert all(0 <= p["agreement_with_fp32"] <= 1 and p["median_ms"] > 0 for p in f["points"])
    assert f["points"][0]["slowdown_pct"] == 0
    assert rep["quantization"]["fallback"] == layers[2]
    ours = next(v for v in rep["variants"] if v["name"] == "onnxruntime-int8")
    attention = rep["quantization"]["config"]["attention_matmuls"]
    assert ours["int8_kernels"] == tiny.int8_kernels("onnxruntime", attention) - 2
    md = (tmp_path / "report.md").read_text()
    assert "## Per-layer precision under --max-slowdown 5%: k = 2 chosen" in md
    assert f"| **2** | {layers[2][1]} |" in md


def test_attention_matmuls_are_ranked_with_the_linears(quick_cfg: RunConfig, tiny, tmp_path: Path,
                                                       monkeypatch) -> None:
    """Under int8 attention the attention matmuls are candidates too (at 512 tokens they lead the ranking): ranked
    first here, k = 2 leaves two of them in float and ONNX Runtime runs two fewer int8 attention matmuls."""
    real_amp = Quantizer.amp

    def matmuls_first(self: Quantizer, batches) -> dict[str, float]:
        kinds = {p.name: p.kind for p in self.points}
        return {name: s + (kinds[name] == "matmul") for name, s in real_amp(self, batches).items()}

    monkeypatch.setattr(Quantizer, "amp", matmuls_first)
    monkeypatch.setattr(frontier, "choose", lambda points, budget: 2)
    rep = run(replace(quick_cfg, backend="onnxruntime", max_slowdown=5.0, fallback_holdout=40,
                      bench_only=True, int8_attention="on", output_dir=str(tmp_path)))
    chosen = rep["quantization"]["frontier"]["points"][2]["float_layers"]
    assert len(chosen) == 2 and all(name.rpartition(".")[2] in MATMUL_NAMES for name in chosen)
    ours = next(v for v in rep["variants"] if v["name"] == "onnxruntime-int8")
    assert ours["int8_kernels"] == tiny.int8_kernels("onnxruntime", True) - 2


def test_one_layer_budget_at_a_time(quick_cfg: RunConfig, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--max-slowdown and --max-accuracy-drop"):
        run(replace(quick_cfg, max_slowdown=5.0, max_accuracy_drop=0.5, output_dir=str(tmp_path)))
