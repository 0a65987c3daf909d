"""The corpus benchmark's report: corpus.json (every figure), corpus.md (the table) and corpus.png (rows/s per
variant and thread count), each written atomically."""
from __future__ import annotations

from .artifacts import Layout, atomic_path, write_json, write_text
from .corpus_variants import FP32
from .sysinfo import cpu_label


def build(cfg, rows, threads: tuple[int, ...], engine: str, results: dict[str, dict[int, dict]], cpu: dict) -> dict:
    """Per variant: per thread count rows/s, batch-1 latency and peak RSS; accuracy and agreement with fp32 from
    its one-thread predictions (a variant's predictions do not depend on its thread count)."""
    from .sysinfo import versions

    preds = {v: next((r["predictions"] for r in by_t.values() if "predictions" in r), None)
             for v, by_t in results.items()}
    fp32 = preds.get(FP32)
    variants = []
    for name, by_t in results.items():
        p = preds[name]
        errors = [r["error"] for r in by_t.values() if "error" in r]
        rec: dict = {"name": name, "status": "failed" if errors else "ok"}
        if errors:
            rec["reason"] = errors[0]
        rec["note"] = next((r["note"] for r in by_t.values() if "note" in r), "")
        rec["threads"] = {str(t): {k: r[k] for k in ("rows_per_s", "wall_s", "build_s", "latency_ms", "peak_rss_mb")}
                          for t, r in by_t.items() if "error" not in r}
        if p is not None and rows.labels is not None:
            rec["accuracy"] = round(sum(a == b for a, b in zip(p, rows.labels)) / max(len(p), 1), 4)
        if p is not None and fp32 is not None:
            rec["agreement_with_fp32"] = round(sum(a == b for a, b in zip(p, fp32)) / max(len(p), 1), 4)
        variants.append(rec)
    return {
        "cpu": cpu, "versions": {**versions(), **_ctranslate2_version()},
        "corpus": {"name": rows.name, "rows": len(rows.texts), "labelled": rows.labels is not None,
                   "empty_texts": rows.empty, "truncated": rows.truncated, "mean_tokens": rows.mean_tokens,
                   "max_seq_len": cfg.max_seq_len},
        "threads": list(threads), "batch_size": cfg.batch_size, "latency_requests": min(cfg.latency_rows, len(rows.texts)),
        "our_engine": engine, "fp32_reference": FP32, "variants": variants,
        "method": "each variant and thread count in a worker process of its own, one after another; rows/s over every "
                  "row, text to label (tokenization included) after a warm-up pass; batch-1 latency over the first "
                  "rows in file order; peak RSS of the worker while serving",
    }


def _ctranslate2_version() -> dict:
    import importlib.metadata

    try:
        return {"ctranslate2": importlib.metadata.version("ctranslate2")}
    except importlib.metadata.PackageNotFoundError:
        return {}


def markdown(rep: dict) -> str:
    c = rep["corpus"]
    return f"# Corpus benchmark: {c['name']}\n\n" + table(rep)


def table(rep: dict) -> str:
    """The corpus, CPU and engine line, one row per variant, the failed ones, the method: corpus.md's body and
    the docs' corpus blocks."""
    c, ts = rep["corpus"], rep["threads"]
    head = ["variant", *(f"rows/s @{t}t" for t in ts), *(f"p50/p99 ms @{t}t" for t in ts), "accuracy",
            "agreement w/ fp32", "peak RSS MiB"]
    lines = [f"{c['name']}: {c['rows']} rows, mean {c['mean_tokens']} tokens, max {c['max_seq_len']} ({c['truncated']} "
             f"truncated, {c['empty_texts']} empty); batch {rep['batch_size']}; {rep['latency_requests']} batch-1 "
             f"requests; CPU: {cpu_label(rep['cpu'])}, "
             f"{rep['cpu'].get('cpus', '?')} cpus, flags {' '.join(rep['cpu'].get('flags', []))}; our engine: {rep['our_engine']}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in rep["variants"]:
        if v["status"] != "ok":
            continue
        by_t = v["threads"]
        lat = [by_t[str(t)]["latency_ms"] for t in ts]
        cells = [v["name"], *(f"{by_t[str(t)]['rows_per_s']:.1f}" for t in ts),
                 *(f"{x['p50']:.2f} / {x['p99']:.2f}" if x else "-" for x in lat),
                 f"{v['accuracy']:.4f}" if "accuracy" in v else "-",
                 f"{v['agreement_with_fp32']:.4f}" if "agreement_with_fp32" in v else "-",
                 f"{max(x['peak_rss_mb'] for x in by_t.values()):.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [v for v in rep["variants"] if v["status"] != "ok"]
    if failed:
        lines += ["", "Failed:"] + [f"- {v['name']}: {v['reason']}" for v in failed]
    lines += ["", f"Method: {rep['method']}."]
    return "\n".join(lines) + "\n"


def plot(rep: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [v for v in rep["variants"] if v["status"] == "ok"]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.6 * max(len(ok), 1)))
    height = 0.8 / max(len(rep["threads"]), 1)
    for k, t in enumerate(rep["threads"]):
        ax.barh([i + k * height for i in range(len(ok))], [v["threads"][str(t)]["rows_per_s"] for v in ok],
                height, label=f"{t} thread(s)")
    ax.set_yticks([i + height * (len(rep["threads"]) - 1) / 2 for i in range(len(ok))], [v["name"] for v in ok])
    ax.invert_yaxis()
    ax.set_xlabel("rows/s, text to label")
    ax.set_title(f"{rep['corpus']['name']}, max {rep['corpus']['max_seq_len']} tokens; {rep['cpu'].get('model', '?')}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def write(rep: dict, layout: Layout) -> None:
    """Each file complete or absent: PNG, then Markdown, then the JSON that names the run."""
    with atomic_path(layout.corpus_png) as tmp:
        plot(rep, tmp)
    write_text(layout.corpus_md, markdown(rep))
    write_json(layout.corpus_json, rep)


