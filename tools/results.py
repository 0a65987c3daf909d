#!/usr/bin/env python
"""Regenerate README's results: run the default command on this CPU, keep its report as results/<int8 ISA>.json,
and rewrite the README block between the results markers from every results/*.json (one table per CPU class).

    python tools/results.py                       # runs: OMP_NUM_THREADS=1 bert_ptq.py --device x86 --threads 1,2
    python tools/results.py --from-report DIR     # format an existing bert_ptq.py output dir instead
    python tools/results.py --render-only         # rebuild README's block from results/*.json

Tables from other CPUs stay as they were measured: run this script on an AVX2, AVX-512 VNNI or AMX machine to
add or refresh that machine's table.
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
from ptqkit.selection import describe  # noqa: E402
from ptqkit.sysinfo import ARM_INT8_ISAS, X86_INT8_ISAS  # noqa: E402

RESULTS = REPO / "results"
BEGIN, END = "<!-- results:begin (tools/results.py writes this block) -->", "<!-- results:end -->"
ORDER = X86_INT8_ISAS + ARM_INT8_ISAS


def run_default(extra: list[str]) -> Path:
    out = Path(tempfile.mkdtemp(prefix="ptqkit-results-"))
    cmd = [sys.executable, str(REPO / "bert_ptq.py"), "--device", "x86", "--threads", "1,2", "--output-dir", str(out), *extra]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return out


def keep(report_dir: Path, command: str) -> Path:
    rep = json.loads((report_dir / "report.json").read_text())
    rep["command"] = command
    path = RESULTS / f"{rep['cpu']['int8_isa']}.json"
    RESULTS.mkdir(exist_ok=True)
    artifacts.write_json(path, rep)
    return path


def table(rep: dict) -> str:
    """One CPU class: header with the CPU, the variants' accuracy, fidelity and latency (speedup vs eager fp32)."""
    cpu = rep["cpu"]
    timed = [v for v in rep["variants"] if v.get("latency_ms") or v.get("metrics")]
    cells = [(r["batch"], r["seq_len"], r["threads"]) for v in timed[:1] for r in v.get("latency_ms", [])]
    base = {(r["batch"], r["seq_len"], r["threads"]): r["median"]
            for v in rep["variants"] if v["name"] == "pytorch-fp32" for r in v.get("latency_ms", [])}
    sel = rep.get("backend_selection")
    versions = ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if k != "python")
    lines = [f"#### {cpu['int8_isa']}: {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])})", "",
             f"`{rep.get('command', 'bert_ptq.py')}`; {versions}; {rep['eval_examples']} validation sentences; "
             f"median ms of {rep['bench']['rounds']} interleaved rounds.", ""]
    if sel:
        lines += [f"`--backend auto` chose **{sel['chosen']}**: " + "; ".join(describe(c) for c in sel["candidates"]) + ".", ""]
    head = " | ".join(f"{b}x{s} {t}t" for b, s, t in cells)
    lines += [f"| variant | accuracy | agreement with fp32 | int8 kernels | {head} |", "|---|---|---|---|" + "---|" * len(cells)]
    for v in timed:
        row = {(r["batch"], r["seq_len"], r["threads"]): r["median"] for r in v.get("latency_ms", [])}
        lat = [f"{row[c]:.2f}" + (f" ({base[c] / row[c]:.2f}x)" if c in base and v["name"] != "pytorch-fp32" else "")
               if c in row else "" for c in cells]
        acc = next(iter(v.get("metrics", {}).values()), None)
        kind = " (peer)" if v.get("peer") else " (ours)" if v["precision"].startswith("int8") and "fakequant" not in v["precision"] else ""
        name = f"**{v['name']}**" if kind == " (ours)" else v["name"]
        lines.append(f"| {name}{kind} | {'' if acc is None else f'{acc:.3f}'} | {v.get('agreement_with_fp32', 1.0 if v['name'] == 'pytorch-fp32' else ''):} "
                     f"| {v.get('int8_kernels', '')} | " + " | ".join(lat) + " |")
    return "\n".join(lines) + "\n"


def render() -> None:
    reports = sorted((json.loads(p.read_text()) for p in RESULTS.glob("*.json")),
                     key=lambda r: ORDER.index(r["cpu"]["int8_isa"]) if r["cpu"]["int8_isa"] in ORDER else len(ORDER))
    block = "\n".join([BEGIN, *(table(r) for r in reports), END])
    readme = REPO / "README.md"
    text = readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no results markers ({BEGIN} ... {END})")
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    artifacts.write_text(readme, text[:start] + block + text[stop:])
    print(f"README results block: {len(reports)} CPU class(es)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--from-report", type=Path, help="an existing bert_ptq.py --output-dir to format")
    p.add_argument("--command", default="OMP_NUM_THREADS=1 python bert_ptq.py --device x86 --threads 1,2",
                   help="the command line to print above a --from-report table")
    p.add_argument("--render-only", action="store_true")
    args, extra = p.parse_known_args()
    if not args.render_only:
        src = args.from_report or run_default(extra)
        print(f"kept {keep(src, args.command if args.from_report else ' '.join(['OMP_NUM_THREADS=1 python bert_ptq.py --device x86 --threads 1,2', *extra]))}")
    render()


if __name__ == "__main__":
    main()
