"""What a sweep writes: sweep.json, sweep.md (the recipes and the re-timed Pareto front) and sweep.png."""
from __future__ import annotations

from pathlib import Path

from . import artifacts
from .markdown import table
from .sysinfo import cpu_label


def write_outputs(rep: dict, out: Path) -> None:
    """sweep.json, sweep.md and sweep.png (holdout accuracy vs latency), each written atomically."""
    layout = artifacts.Layout(out)
    artifacts.write_json(layout.sweep_json, rep)
    artifacts.write_text(layout.sweep_md, markdown(rep))
    if any(r["status"] == "ok" for r in rep["recipes"]):
        plot(rep, layout.sweep_png)
    for path in (layout.sweep_json, layout.sweep_md, layout.sweep_png):
        if path.is_file():
            print(f"wrote {path}")


def markdown(rep: dict) -> str:
    m = rep["metric"]
    chosen = rep["chosen"]["label"] if rep["chosen"] else None
    lines = [f"# Recipe sweep: {rep['model']} on {rep['task']} ({rep['device']}), {rep['workers']} worker(s)", "",
             f"CPU of the driver's node, where the Pareto front is re-timed: {cpu_label(rep['cpu'])}.", "",
             f"Holdout: {rep['holdout_examples']} train examples (never validation); fp32 {m} "
             f"{rep['fp32']['holdout'][m]:.4f}. Trial latency: int8 median ms at {rep['retimed']['shape']}, one "
             f"thread per CPU of the trial, on whichever node ran it (not comparable across nodes).", ""]
    rows = []
    for r in rep["recipes"]:
        label = r["label"]
        if r["status"] != "ok":
            rows.append([label, f"{r['status']}: {r.get('error', '')}", "", "", "", "", ""])
            continue
        h = r["holdout"]
        mark = " **(chosen)**" if label == chosen else " (front)" if label in rep["pareto_front"] else ""
        rows.append([f"{label}{mark}", "ok", f"{h[m]:.4f}", f"{h['drop_pt']:+.2f}", f"{h['agreement_with_fp32']:.4f}",
                     h["fallback_layers"], f"{h['latency_ms']:.2f}"])
    lines += table(["recipe", "status", f"holdout {m}", "drop (pt)", "agreement with fp32", "fallback layers", "trial ms"],
                   rows)
    lines += ["", f"Pareto front re-timed on the driver's node, interleaved, {rep['retimed']['rounds']} rounds, "
              f"1 thread, {rep['retimed']['shape']} (validation: {rep['validation_examples']} examples):", ""]
    rows = [[name, f"{rep['fp32']['validation'][name][m]:.4f}", f"{ms:.2f}"] for name, ms in rep["retimed"]["fp32_ms"].items()]
    rows += [[f"{r['label']}{' **(chosen)**' if r['label'] == chosen else ''}", f"{r['final']['validation'][m]:.4f}",
              f"{r['final']['latency_ms']:.2f}"] for r in rep["recipes"] if r.get("label") in rep["pareto_front"]]
    lines += table(["model", f"validation {m}", "median ms"], rows)
    if chosen is None:
        lines += ["", f"No recipe is within {rep['choose_within_pt']} pt of fp32 on the holdout."]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = rep["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in (r for r in rep["recipes"] if r["status"] == "ok"):
        h, label = r["holdout"], r["label"]
        on_front = label in rep["pareto_front"]
        ax.scatter(h["latency_ms"], h[m], marker="o" if on_front else "x", color="C1" if on_front else "C0")
        ax.annotate(label, (h["latency_ms"], h[m]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.axhline(rep["fp32"]["holdout"][m], color="grey", linestyle="--", linewidth=1, label="fp32 (PyTorch)")
    ax.set_xlabel(f"int8 median latency in the trial, ms ({rep['retimed']['shape']})")
    ax.set_ylabel(f"holdout {m}")
    ax.set_title(f"{rep['model']}: recipe sweep (o = Pareto front)\ndriver: {cpu_label(rep['cpu'])}", fontsize=10)
    ax.margins(x=0.15)  # room for the rightmost point's label
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
