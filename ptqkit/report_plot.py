"""report.png: accuracy and agreement with fp32 against latency, at the first timed cell."""
from __future__ import annotations

from .sysinfo import cpu_label


def points(rep: dict) -> list[dict]:
    """What report.png draws: every evaluated and timed variant at the first timed cell, with its task metric (the
    first one) and its agreement with fp32 (1 for PyTorch fp32, the reference; None where not compared)."""
    shown = [v for v in rep["variants"] if v.get("metrics") and v.get("latency_ms")]
    metric = next(iter(shown[0]["metrics"])) if shown else None
    out = []
    for v in shown:
        r = v["latency_ms"][0]
        kind = "peer" if v.get("peer") else "fp32" if v["precision"] == "fp32" else "ours"
        agreement = 1.0 if v["name"] == "pytorch-fp32" else v.get("agreement_with_fp32")
        out.append({"name": v["name"], "kind": kind, "ms": r["median"], "metric": metric,
                    "value": v["metrics"].get(metric), "agreement": agreement,
                    "cell": f"{r['batch']}x{r['seq_len']}, {r['threads']} thread(s)"})
    return out


def plot(rep: dict, path) -> None:
    """Accuracy (left) and, for classification, agreement with fp32 (right) against latency at the first timed
    cell. Names go in a legend (no labels to overlap); ours are filled circles, peers hollow squares, fp32
    variants diamonds; dashed lines mark PyTorch fp32 (the reference)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import artifacts

    pts = points(rep)
    classes = any("changed_vs_fp32" in v for v in rep["variants"])  # regression: argmax agreement means nothing
    panels = [("value", pts[0]["metric"])] + ([("agreement", "agreement with fp32")] if classes else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6 + 4.5 * len(panels), 4.8), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for ax, (key, ylabel) in zip(axes[0], panels):
        for i, p in enumerate(pts):
            if p[key] is None:
                continue
            if p["name"] == "pytorch-fp32":
                ax.axhline(p[key], color="grey", ls="--", lw=0.8)
                ax.axvline(p["ms"], color="grey", ls="--", lw=0.8)
            color = colors[i % 10]
            style = {"peer": {"marker": "s", "facecolors": "none", "edgecolors": color, "label": f"{p['name']} (peer)"},
                     "fp32": {"marker": "D", "color": color, "label": f"{p['name']} (fp32"
                              + (" reference)" if p["name"] == "pytorch-fp32" else ")")},
                     "ours": {"marker": "o", "color": color, "label": f"{p['name']} (ours)"}}[p["kind"]]
            ax.scatter(p["ms"], p[key], s=60, linewidths=1.5, **style)
        ax.set_xlabel(f"median latency, ms ({pts[0]['cell']})")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    what = "accuracy and agreement" if classes else "accuracy"
    fig.suptitle(f"{rep['model']} on {rep['task']}: {what} vs latency\n{cpu_label(rep['cpu'])}", fontsize=11)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    with artifacts.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
