#!/usr/bin/env python
"""Regenerate README's results: run the measurement set on this CPU, keep each report as results/<int8 ISA>[.<set>].json,
and rewrite the README block between the results markers from every results/*.json (tables per CPU class).

    python tools/results.py                       # runs the sets below on this CPU
    python tools/results.py --only default        # one set
    python tools/results.py --from-report DIR --set default   # format an existing bert_ptq.py output dir instead
    python tools/results.py --render-only         # rebuild README's block from results/*.json

The sets: "default", the default model with evaluation at the server shapes (1x128 and 1x512 latency, 32x128
throughput, one thread and every core); "bert-base", a bert-base-sized model (random weights) timed at 1x128.
Tables from other CPUs stay as they were measured: run this script on an AVX2, AVX-512 VNNI or AMX machine to add
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ptqkit import artifacts  # noqa: E402
from ptqkit.markdown import cell_key, cell_name, table as md_table  # noqa: E402
from ptqkit.selection import describe  # noqa: E402
from ptqkit.sysinfo import ARM_INT8_ISAS, X86_INT8_ISAS  # noqa: E402

RESULTS = REPO / "results"
BEGIN, END = "<!-- results:begin (tools/results.py writes this block) -->", "<!-- results:end -->"
ORDER = X86_INT8_ISAS + ARM_INT8_ISAS


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


def keep(report_dir: Path, name: str, command: str) -> Path:
    rep = json.loads(artifacts.Layout(report_dir).report_json.read_text())
    rep["command"], rep["results_set"] = command, name
    suffix = "" if name == "default" else f".{name}"
    path = RESULTS / f"{rep['cpu']['int8_isa']}{suffix}.json"
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(path, rep)
    return path


def table(rep: dict) -> str:
    """One CPU class: header with the CPU, the variants' accuracy, fidelity and latency (speedup vs eager fp32)."""
    cpu = rep["cpu"]
    timed = [v for v in rep["variants"] if v.get("latency_ms") or v.get("metrics")]
    cells = [cell_key(r) for v in timed[:1] for r in v.get("latency_ms", [])]
    base = {cell_key(r): r["median"] for v in rep["variants"] if v["name"] == "pytorch-fp32" for r in v.get("latency_ms", [])}
    sel = rep.get("backend_selection")
    versions = ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if k != "python")
    bench = rep["bench"]
    rounds = f"up to {bench['rounds']}" if bench.get("time_budget_s") else bench["rounds"]
    lines = [f"#### {cpu['int8_isa']}, {rep['model']}: {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])})", "",
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
        acc = next(iter(v.get("metrics", {}).values()), None)
        kind = " (peer)" if v.get("peer") else " (ours)" if v["precision"].startswith("int8") and "fakequant" not in v["precision"] else ""
        name = f"**{v['name']}**" if kind == " (ours)" else v["name"]
        agreement = v.get("agreement_with_fp32", 1.0 if v["name"] == "pytorch-fp32" and acc is not None else "")
        rows.append([f"{name}{kind}", "" if acc is None else f"{acc:.3f}", agreement, v.get("int8_kernels", ""), *lat])
    lines += md_table(["variant", "accuracy", "agreement with fp32", "int8 kernels", *map(cell_name, cells)], rows)
    return "\n".join(lines + time_split(rep)) + "\n"


def time_split(rep: dict) -> list[str]:
    """Where one thread's time goes for the PyTorch fp32 baseline, our chosen int8 and the int8 peers: the engine's
    profiler split by op kind, and the GEMMs' rate as a share of the engine's measured int8 GEMM peak (report.json
    `profile`, `limits`)."""
    share = {(r["name"], r["batch"], r["seq_len"], r["threads"]): r for lim in rep.get("limits", []) for r in lim.get("rows", [])}
    peaks = {(lim["engine"], p["threads"]): p["peak_gmac_s"] for lim in rep.get("limits", []) for p in lim.get("peaks", [])}
    chosen = (rep.get("backend_selection") or {}).get("chosen")
    ours = [v["name"] for v in rep["variants"] if not v.get("peer") and v["precision"].startswith("int8")
            and v.get("latency_ms") and (chosen is None or v["name"] == chosen)]
    shown = [v for v in rep["variants"] if v.get("profile") and (v["name"] in ("pytorch-fp32", *ours)
                                                                  or (v.get("peer") and "int8" in v["precision"]))]
    if not shown:
        return []
    lines = ["", "Where one thread's time goes (engine profiler, torch.profiler for PyTorch; median ms; GEMM share = "
             "model GEMM MACs / profiled GEMM time / the engine's measured int8 GEMM peak):", ""]
    rows = []
    for v in shown:
        for c in (c for c in v["profile"] if c["threads"] == 1):
            row = share.get((v["name"], *cell_key(c)))
            peak = peaks.get((v.get("engine"), c["threads"]))
            cell = f"{row['gemm_share_of_peak']:.0%} of {peak} GMAC/s" if row and peak else ""
            rows.append([v["name"], f"{c['batch']}x{c['seq_len']}", *(f"{c[k]:.2f}" for k in (
                "end_to_end", "engine", "gemm", "attention", "norm_act", "other", "outside")), cell])
    return lines + md_table(["variant", "cell", "end-to-end", "engine", "GEMM", "attention", "norm/act", "other",
                             "outside", "GEMM share of peak"], rows)


def _order(rep: dict) -> tuple[int, int]:
    isa = rep["cpu"]["int8_isa"]
    return (ORDER.index(isa) if isa in ORDER else len(ORDER), list(COMMANDS).index(rep.get("results_set", "default")))


def render() -> None:
    reports = sorted((json.loads(p.read_text()) for p in RESULTS.glob("*.json")), key=_order)
    block = "\n".join([BEGIN, *(table(r) for r in reports), END])
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no results markers ({BEGIN} ... {END})")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    artifacts.write_text(readme, text[:start] + block + text[stop:])
    print(f"README results block: {len(reports)} table(s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    p.add_argument("--only", choices=list(COMMANDS), help="run one measurement set (default: all)")
    p.add_argument("--from-report", type=Path, help="an existing bert_ptq.py --output-dir to format (with --set)")
    p.add_argument("--set", choices=list(COMMANDS), default="default", help="the set --from-report was run as")
    p.add_argument("--command", help="the command line to print above a --from-report table (default: the set's)")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    if args.from_report:
        print(f"kept {keep(args.from_report, args.set, args.command or command_line(COMMANDS[args.set]))}")
    elif not args.render_only:
        for name in [args.only] if args.only else list(COMMANDS):
            print(f"kept {keep(run_set(COMMANDS[name]), name, command_line(COMMANDS[name]))}")
    render()


if __name__ == "__main__":
    main()
