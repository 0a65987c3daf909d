#!/usr/bin/env python
"""Regenerate the results tables: run the measurement sets on this CPU, keep each report as
results/<int8 ISA>[.<set>].json, and rewrite the generated blocks from every results/*.json.

    python tools/results.py                       # runs the sets below on this CPU, then renders
    python tools/results.py --only default        # one set
    python tools/results.py --from-report DIR --set default   # keep an existing bert_ptq.py output dir instead
    python tools/results.py --render-only         # only rebuild the blocks from results/*.json (seconds)

Blocks: `headline` in README.md (one row per CPU class, the default model), `results` in docs/results.md (every
variant of every set, per CPU class), `time-split` in docs/performance.md (where one thread's time goes).
The sets: "default", the default model with evaluation at the server shapes (1x128 and 1x512 latency, 32x128
throughput, one thread and every core); "bert-base", a bert-base-sized model (random weights) timed at 1x128.
Reports from other CPUs stay as they were measured: run this script on an AVX2, AVX-512 VNNI or AMX machine to add
or refresh that machine's tables.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from ptqkit import artifacts
from ptqkit.docblocks import replace_block
from ptqkit.markdown import cell_key, cell_name, table as md_table
from ptqkit.selection import describe
from ptqkit.sysinfo import ARM_INT8_ISAS, X86_INT8_ISAS

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "results"
WRITER = "python tools/results.py"  # the command named in every block's begin marker
ORDER = X86_INT8_ISAS + ARM_INT8_ISAS
HEADLINE_CELL = (1, 128, 1)  # batch, seq_len, threads of the headline latency column
THROUGHPUT_CELL = (32, 128, 1)


COMMANDS = {  # set -> bert_ptq.py flags (OMP_NUM_THREADS=1, as README's main command)
    "default": ["--device", "x86", "--shapes", "server"],
    "bert-base": ["--device", "x86", "--model", "bert-base-random", "--bench-only", "--shapes", "1x128"],
}


def command_line(flags: list[str]) -> str:
    return " ".join(["OMP_NUM_THREADS=1 python bert_ptq.py", *flags])


def run_set(flags: list[str]) -> Path:
    out = Path(tempfile.mkdtemp(prefix="ptqkit-results-"))
    cmd = [sys.executable, str(REPO / "bert_ptq.py"), *flags, "--output-dir", str(out)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


def git(*args: str) -> str:
    """A git query on this checkout ("" outside a git checkout)."""
    res = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True)
    return res.stdout.strip() if res.returncode == 0 else ""


def keep(report_dir: Path, name: str, command: str) -> Path:
    rep = json.loads(artifacts.Layout(report_dir).report_json.read_text())
    rep["command"], rep["results_set"], rep["commit"] = command, name, git("rev-parse", "--short", "HEAD")
    suffix = "" if name == "default" else f".{name}"
    path = RESULTS / f"{rep['cpu']['int8_isa']}{suffix}.json"
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(path, rep)
    return path


def load_reports() -> list[dict]:
    """Every kept report, in ISA order then set order, each with the commit that measured it (reports kept before
    `keep` recorded it: the commit that added the file)."""
    reports = []
    for path in RESULTS.glob("*.json"):
        rep = json.loads(path.read_text())
        rep.setdefault("commit", git("log", "-1", "--format=%h", "--", str(path.relative_to(REPO))) or "unknown")
        reports.append(rep)
    return sorted(reports, key=_order)


def cpu_heading(rep: dict) -> str:
    cpu = rep["cpu"]
    task = f" on {rep['task']}" if rep["eval_examples"] else ""  # a timing-only set has no task
    return (f"### {cpu['int8_isa']}, {rep['model']}{task}: {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])}), "
            f"commit {rep['commit']}")


def baseline(rep: dict) -> dict[tuple, float]:
    """PyTorch eager fp32 median ms per cell: every speedup's yardstick."""
    return {cell_key(r): r["median"] for v in rep["variants"] if v["name"] == "pytorch-fp32" for r in v.get("latency_ms", [])}


def ours(rep: dict) -> dict | None:
    """Our int8 variant: the one `--backend auto` chose, else the forced engine's first int8 variant."""
    chosen = (rep.get("backend_selection") or {}).get("chosen")
    int8 = [v for v in rep["variants"] if not v.get("peer") and v["precision"].startswith("int8")
            and "fakequant" not in v["precision"] and v.get("latency_ms")]
    return next((v for v in int8 if chosen is None or v["name"] == chosen), None)


def changed(v: dict | None, rep: dict) -> int | None:
    """Validation rows whose predicted class differs from fp32's (None where not compared). Reports kept before
    changed_vs_fp32 existed: from agreement_with_fp32 (4 decimals, exact up to 10,000 examples)."""
    v = v or {}
    if "changed_vs_fp32" in v or "agreement_with_fp32" not in v or not rep["eval_examples"]:
        return v.get("changed_vs_fp32")
    return round((1 - v["agreement_with_fp32"]) * rep["eval_examples"])


def accuracy(v: dict | None) -> float | None:
    return next(iter((v or {}).get("metrics", {}).values()), None)


def headline(reports: list[dict]) -> str:
    """One row per CPU class: the default model's accuracy, fidelity and one-thread speed, ours beside NNCF's."""
    rows = []
    for rep in (r for r in reports if r.get("results_set", "default") == "default"):
        mine, base = ours(rep), baseline(rep)
        fp32 = next(v for v in rep["variants"] if v["name"] == "pytorch-fp32")
        nncf = next((v for v in rep["variants"] if v["name"].startswith("nncf")), None)

        def ms(v: dict | None, cell: tuple) -> float | None:
            return next((r["median"] for r in (v or {}).get("latency_ms", []) if cell_key(r) == cell), None)

        def seq_s(v: dict | None, cell: tuple) -> str:
            return next((f"{r['throughput_seq_s']:.0f}" for r in (v or {}).get("latency_ms", []) if cell_key(r) == cell), "")

        int8_ms, fp32_ms, nncf_ms = ms(mine, HEADLINE_CELL), ms(fp32, HEADLINE_CELL), ms(nncf, HEADLINE_CELL)
        speed = f" ({fp32_ms / int8_ms:.1f}x)" if int8_ms and fp32_ms else ""
        fp32_t, int8_t = ms(fp32, THROUGHPUT_CELL), ms(mine, THROUGHPUT_CELL)
        gain = f" ({fp32_t / int8_t:.1f}x)" if fp32_t and int8_t else ""
        acc = f"{accuracy(fp32):.3f} / {accuracy(mine):.3f}" if accuracy(fp32) is not None and accuracy(mine) is not None else ""
        cpu = rep["cpu"]
        rows.append([f"{cpu['model']} ({cpu['arch']})", cpu["int8_isa"], mine["name"] if mine else "none", acc,
                     agreement_cell(mine, rep),
                     f"{'' if fp32_ms is None else f'{fp32_ms:.2f}'} / {'' if int8_ms is None else f'{int8_ms:.2f}'}{speed}",
                     f"{seq_s(fp32, THROUGHPUT_CELL)} / {seq_s(mine, THROUGHPUT_CELL)}{gain}",
                     agreement_cell(nncf, rep), "" if nncf_ms is None else f"{nncf_ms:.2f}", rep["commit"]])
    return "\n".join(md_table(["CPU", "int8 ISA", "our int8", "accuracy fp32 / int8", "agreement with fp32",
                                "1x128 ms: eager fp32 / int8", "32x128 sequences/s: eager fp32 / int8",
                                "NNCF int8 agreement with fp32", "NNCF int8 1x128 ms", "commit"], rows))


def agreement_cell(v: dict | None, rep: dict) -> str:
    """Agreement with fp32 and the changed predictions behind it: "0.9930 (7 of 1000 changed)"."""
    if not v or "agreement_with_fp32" not in v:
        return ""
    n = changed(v, rep)
    return f"{v['agreement_with_fp32']:.4f}" + ("" if n is None else f" ({n} of {rep['eval_examples']} changed)")


def table(rep: dict) -> str:
    """One CPU class and set: its CPU and command, `--backend auto`'s choice, and every variant's accuracy, fidelity
    and latency (speedup vs eager fp32)."""
    timed = [v for v in rep["variants"] if v.get("latency_ms") or v.get("metrics")]
    cells = [cell_key(r) for v in timed[:1] for r in v.get("latency_ms", [])]
    base = baseline(rep)
    sel = rep.get("backend_selection")
    versions = ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if k != "python")
    bench = rep["bench"]
    rounds = f"up to {bench['rounds']}" if bench.get("time_budget_s") else bench["rounds"]
    lines = [cpu_heading(rep), "",
             f"`{rep.get('command', 'bert_ptq.py')}`; {versions}; "
             + (f"{rep['eval_examples']} validation sentences; " if rep["eval_examples"] else "timing only (no evaluation); ")
             + f"median ms of {rounds} interleaved rounds"
             + (f", {bench['settle_s'] * 1e3:.0f} ms idle before each call of a multi-thread cell"
                if bench.get("settle_s") and max(bench["threads"]) > 1 else "")
             + " (batched cells also in sequences/s).", ""]
    if sel:
        lines += [f"`--backend auto` chose **{sel['chosen']}**: " + "; ".join(describe(c) for c in sel["candidates"]) + ".", ""]
    rows = []
    for v in timed:
        row = {cell_key(r): r for r in v.get("latency_ms", [])}
        lat = [f"{row[c]['median']:.2f}" + (f" = {row[c]['throughput_seq_s']:.0f}/s" if c[0] > 1 else "")
               + (f" ({base[c] / row[c]['median']:.2f}x)" if c in base and v["name"] != "pytorch-fp32" else "")
               if c in row else "" for c in cells]
        acc = accuracy(v)
        kind = " (peer)" if v.get("peer") else " (ours)" if v["precision"].startswith("int8") and "fakequant" not in v["precision"] else ""
        name = f"**{v['name']}**" if kind == " (ours)" else v["name"]
        agreement = "1 (reference)" if v["name"] == "pytorch-fp32" and acc is not None else v.get("agreement_with_fp32", "")
        n = changed(v, rep)
        rows.append([f"{name}{kind}", "" if acc is None else f"{acc:.3f}", agreement, "" if n is None else n,
                     v.get("int8_kernels", ""), *lat])
    lines += md_table(["variant", "accuracy", "agreement with fp32", "changed vs fp32", "int8 kernels",
                       *map(cell_name, cells)], rows)
    return "\n".join(lines) + "\n"


def time_split(rep: dict) -> str:
    """Where one thread's time goes for the PyTorch fp32 baseline, our chosen int8 and the int8 peers: the engine's
    profiler split by op kind, and the GEMMs' rate as a share of the engine's measured int8 GEMM peak (report.json
    `profile`, `limits`). Empty when the report has no profile."""
    share = {(r["name"], *cell_key(r)): r for lim in rep.get("limits", []) for r in lim.get("rows", [])}
    peaks = {(lim["engine"], p["threads"]): p["peak_gmac_s"] for lim in rep.get("limits", []) for p in lim.get("peaks", [])}
    mine = ours(rep)
    shown = [v for v in rep["variants"] if v.get("profile") and (v["name"] == "pytorch-fp32" or v is mine
                                                                  or (v.get("peer") and "int8" in v["precision"]))]
    if not shown:
        return ""
    rows = []
    for v in shown:
        for c in (c for c in v["profile"] if c["threads"] == 1):
            row = share.get((v["name"], *cell_key(c)))
            peak = peaks.get((v.get("engine"), c["threads"]))
            cell = f"{row['gemm_share_of_peak']:.0%} of {peak} GMAC/s" if row and peak else ""
            rows.append([v["name"], f"{c['batch']}x{c['seq_len']}", *(f"{c[k]:.2f}" for k in (
                "end_to_end", "engine", "gemm", "attention", "norm_act", "other", "outside")), cell])
    lines = [cpu_heading(rep), "", f"`{rep.get('command', 'bert_ptq.py')}`; median ms, one thread.", "",
             *md_table(["variant", "cell", "end-to-end", "engine", "GEMM", "attention", "norm/act", "other", "outside",
                        "GEMM share of peak"], rows)]
    return "\n".join(lines) + "\n"


def _order(rep: dict) -> tuple[int, int]:
    isa = rep["cpu"]["int8_isa"]
    return (ORDER.index(isa) if isa in ORDER else len(ORDER), list(COMMANDS).index(rep.get("results_set", "default")))


def render() -> None:
    reports = load_reports()
    replace_block(REPO / "README.md", "headline", WRITER, headline(reports))
    replace_block(REPO / "docs" / "results.md", "results", WRITER, "\n".join(table(r) for r in reports))
    replace_block(REPO / "docs" / "performance.md", "time-split", WRITER, "\n".join(filter(None, map(time_split, reports))))
    print(f"rendered {len(reports)} report(s) into README.md, docs/results.md, docs/performance.md")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=list(COMMANDS), help="run one measurement set (default: all)")
    p.add_argument("--from-report", type=Path, help="an existing bert_ptq.py --output-dir to keep (with --set)")
    p.add_argument("--set", choices=list(COMMANDS), default="default", help="the set --from-report was run as")
    p.add_argument("--command", help="the command line to print above a --from-report table (default: the set's)")
    p.add_argument("--render-only", action="store_true", help="only rebuild the blocks from results/*.json")
    args = p.parse_args()
    if args.from_report:
        print(f"kept {keep(args.from_report, args.set, args.command or command_line(COMMANDS[args.set]))}")
    elif not args.render_only:
        for name in [args.only] if args.only else list(COMMANDS):
            print(f"kept {keep(run_set(COMMANDS[name]), name, command_line(COMMANDS[name]))}")
    render()


if __name__ == "__main__":
    main()
