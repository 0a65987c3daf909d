"""The report: report.json (the contract later steps extend), a printed summary."""
from __future__ import annotations

from dataclasses import asdict

from .bench import BenchConfig
from .sysinfo import cpu_info, versions


def build(device: str, model: str, task: str, eval_examples: int, variants: list[dict], bench: BenchConfig) -> dict:
    import os

    return {
        "device": device,
        "model": model,
        "task": task,
        "eval_examples": eval_examples,
        "cpu": cpu_info(),
        "versions": versions(),
        "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS",) if k in os.environ},
        "bench": {**asdict(bench), "shapes": [str(s) for s in bench.shapes]},
        "variants": variants,
    }


def summary(rep: dict) -> str:
    """The reference example's closing summary: an evaluation block per model type, then avg ms per model type."""
    lines = [f"model {rep['model']} on task {rep['task']} ({rep['eval_examples']} validation examples), device {rep['device']}"]
    for v in rep["variants"]:
        lines.append(f"***** eval results: {v['name']} *****")
        lines += [f"  {k} = {val:.4f}" for k, val in v.get("metrics", {}).items()]
    for v in (v for v in rep["variants"] if v.get("latency_ms")):
        cells = ", ".join(f"{r['batch']}x{r['seq_len']}/{r['threads']}t {r['median']:.2f} ms" for r in v.get("latency_ms", []))
        lines.append(f"{v['name']} avg ms (median): {cells}")
    return "\n".join(lines)
