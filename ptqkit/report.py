"""The report: report.json (the contract later steps extend), a printed summary."""
from __future__ import annotations

from dataclasses import asdict

from .bench import BenchConfig
from .changes import markdown_lines as changed_lines
from .frontier import markdown_lines as frontier_lines
from .markdown import cell_key, cell_name, table
from .report_plot import plot
from .selection import describe
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
        "bench": {**asdict(bench), "shapes": [str(s) for s in bench.shapes], "threads": list(bench.threads)},
        "variants": variants,
    }


def summary(rep: dict) -> str:
    """The reference example's closing summary: an evaluation block per model type, then avg ms per model type."""
    lines = [f"model {rep['model']} on task {rep['task']} ({rep['eval_examples']} validation examples), device {rep['device']}",
             f"CPU: {rep['cpu']['model']}, int8 ISA {rep['cpu'].get('int8_isa', '?')}"]
    if rep.get("quantization", {}).get("config"):
        c = rep["quantization"]["config"]
        lines.append(f"contract: activations {c['activation']['dtype']}, weights {c['weight']['bits']}-bit "
                     f"{'per-channel' if c['weight']['ch_axis'] is not None else 'per-tensor'} (for int8 ISA {c.get('isa')})"
                     + (f", weights rounded by {rep['quantization']['weight_rounding']}"
                        if rep["quantization"].get("weight_rounding", "nearest") != "nearest" else ""))
    frontier = rep.get("quantization", {}).get("frontier")
    if frontier:
        lines.append(f"--max-slowdown {frontier['max_slowdown_pct']:g}%: {frontier['chosen_k']} op(s) in float; "
                     + ", ".join(f"k={p['k']} {p['agreement_with_fp32']:.4f} {p['slowdown_pct']:+.1f}%" for p in frontier["points"])
                     + " (holdout agreement, slowdown)")
    sel = rep.get("backend_selection")
    if sel:
        lines.append(f"--backend auto chose {sel['chosen']}: {sel['reason']}")
        lines += [f"  candidate {describe(r)}" for r in sel["candidates"]]
    for v in rep["variants"]:
        lines.append(f"***** eval results: {v['name']} *****")
        lines += [f"  {k} = {val:.4f}" for k, val in v.get("metrics", {}).items()]
        if "agreement_with_fp32" in v and v.get("metrics"):
            lines.append(f"  agreement_with_fp32 = {v['agreement_with_fp32']:.4f}")
        if "changed_vs_fp32" in v:
            lines.append(f"  changed_vs_fp32 = {v['changed_vs_fp32']} of {rep['eval_examples']}")
        if v.get("status") == "failed":
            lines.append(f"  failed: {v['error']}")
    for v in (v for v in rep["variants"] if v.get("latency_ms")):
        cells = ", ".join(f"{r['batch']}x{r['seq_len']}/{r['threads']}t {r['median']:.2f} ms"
                          + (f" ({r['throughput_seq_s']:.1f} seq/s)" if r["batch"] > 1 else "") for r in v["latency_ms"])
        lines.append(f"{v['name']} avg ms (median): {cells}")
    return "\n".join(lines)


def write(rep: dict, out_dir) -> list:
    """report.json, report.md and report.png (accuracy and agreement vs latency), each written atomically."""
    from pathlib import Path

    from . import artifacts

    layout = artifacts.Layout(Path(out_dir))
    paths = [layout.report_json, layout.report_md]
    artifacts.write_json(paths[0], rep)
    artifacts.write_text(paths[1], markdown(rep))
    if any(v.get("metrics") and v.get("latency_ms") for v in rep["variants"]):
        paths.append(layout.report_png)
        plot(rep, paths[2])
    return paths


def markdown(rep: dict) -> str:
    """Tables a person reads: accuracy, latency per shape/threads, speedup vs PyTorch eager fp32, kernels."""
    cpu = rep["cpu"]
    lines = [f"# int8 report: {rep['model']} on {rep['task']} ({rep['device']})", "",
             f"CPU: {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])}; int8 ISA {cpu.get('int8_isa', '?')}). "
             f"Versions: {', '.join(f'{k} {v}' for k, v in rep['versions'].items())}.", ""]
    if rep.get("note"):
        lines += [f"**Note:** {rep['note']}", ""]
    if rep.get("quantization", {}).get("capture"):
        lines += [f"Captured with torch.export: {rep['quantization']['capture']}.", ""]
    sel = rep.get("backend_selection")
    if sel:
        lines += [f"## Engine selection (--backend auto): {sel['chosen']}", "", sel["reason"] + ".", "",
                  f"Fake-quant reference: {sel['fakequant_reference']}. Agreement rule: {sel['agreement_rule']}.", ""]
        lines += table(["candidate", f"ms ({sel['shape']}, {sel['threads']}t, {sel['rounds']} rounds)", "engine fp32 ms",
                        "agreement with fake-quant (sentences; 99% Wilson interval)", "mean logit difference",
                        "int8 kernels", "eligible"], [_candidate_row(r) for r in sel["candidates"]])
        lines.append("")
    metric_names = sorted({k for v in rep["variants"] for k in v.get("metrics", {})})
    if metric_names:
        lines += [f"## Accuracy ({rep['eval_examples']} validation examples)", "",
                  "Fidelity first: agreement with fp32 is the share of examples whose predicted class (argmax) is "
                  "the PyTorch fp32 model's; it moves with every changed prediction, where accuracy can hide them.", ""]
        rows = []
        for v in (v for v in rep["variants"] if v.get("metrics")):
            agree = "1 (reference)" if v["name"] == "pytorch-fp32" else _cell(v, "agreement_with_fp32")
            rows.append([_label(v), f"**{agree}**" if agree else "", v.get("changed_vs_fp32", ""),
                         *(f"{v['metrics'][m]:.4f}" if m in v["metrics"] else "" for m in metric_names),
                         _cell(v, "agreement_with_fakequant")])
        lines += table(["variant", "agreement with fp32", "changed vs fp32", *metric_names, "agreement with fake-quant"],
                       rows)
        lines.append("")
        lines += changed_lines(rep)
    lines += frontier_lines(rep)
    timed = [v for v in rep["variants"] if v.get("latency_ms")]
    if timed:
        base = {cell_key(r): r["median"] for v in timed if v["name"] == "pytorch-fp32" for r in v["latency_ms"]}
        cells = [cell_key(r) for r in timed[0]["latency_ms"]]
        rows = []
        for v in timed:
            row = {cell_key(r): r for r in v["latency_ms"]}
            out = []
            for c in cells:
                r = row.get(c)
                speed = f" ({base[c] / r['median']:.2f}x)" if r and c in base else ""
                out.append(f"{r['median']:.2f}{speed}" if r else "")
            rows.append([_label(v), *out])
        lines += ["## Latency (median ms, interleaved; speedup vs PyTorch eager fp32 in brackets)", ""]
        lines += table(["variant", *map(cell_name, cells)], rows)
        lines += ["", "p90 per cell is in report.json.", ""]
        batched = [c for c in cells if c[0] > 1]
        if batched:
            lines += ["## Throughput (sequences/s, from the same medians)", ""]
            throughput = [{cell_key(r): r for r in v["latency_ms"]} for v in timed]
            lines += table(["variant", *map(cell_name, batched)],
                           [[_label(v), *(f"{row[c]['throughput_seq_s']:.1f}" if c in row else "" for c in batched)]
                            for v, row in zip(timed, throughput)])
            lines.append("")
    lines += _profile_lines(rep) + _limit_lines(rep)
    with_kernels = [v for v in rep["variants"] if "int8_kernels" in v]
    if with_kernels:
        lines += ["## Kernel evidence (from each engine's own runtime graph)", ""]
        lines += table(["variant", "int8 kernels", "fp32 kernels", "other", "details"],
                       [[_label(v), v["int8_kernels"], v["fp32_kernels"], v.get("other_kernels", 0),
                         ", ".join(f"{k}: {n}" for k, n in sorted(v.get("kernel_details", {}).items()))]
                        for v in with_kernels])
        lines.append("")
    lines += _stage_lines(rep)
    failed = [v for v in rep["variants"] if v.get("status") == "failed"]
    if failed:
        lines += ["## Failed (not evaluated or timed)", ""]
        lines += table(["variant", "reason"], [[_label(v), v["error"]] for v in failed])
        lines.append("")
    return "\n".join(lines)


def _candidate_row(r: dict) -> list:
    if r.get("status") == "failed":
        return [r["name"], f"failed: {r['error']}", "", "", "", "", "no"]
    if "agreement_with_fakequant" in r:
        low, high = r["agreement_bounds"]
        agreement = f"{r['agreement_with_fakequant']:.4f} ({r['agreement_sentences']}; {low:.4f}-{high:.4f})"
        error = f"{r['mean_logit_error']:.4f}"
    else:
        agreement, error = r["not_checked"], ""
    return [r["name"], f"{r['median_ms']:.2f}", f"{r['engine_fp32_ms']:.2f}", agreement, error, r["int8_kernels"],
            "yes" if r["eligible"] else "no"]


def stage_groups(stages: dict) -> dict[str, float]:
    """Seconds per stage group (a stage's name before ':'), in the order the groups first ran."""
    out: dict[str, float] = {}
    for row in stages["seconds"]:
        group = row["stage"].split(":", 1)[0]
        out[group] = out.get(group, 0.0) + row["seconds"]
    return out


def _engine_time(stages: dict) -> str:
    """Our time to the int8 engine beside NNCF's quantize + compile ('' when the run has neither)."""
    if "to_int8_engine_s" not in stages:
        return ""
    ours = stages["to_int8_engine_s"]
    text = f"loaded model -> selected int8 engine {ours:.1f} s"
    nncf = stages.get("nncf_quantize_compile_s")
    return text + (f" (NNCF quantize + compile {nncf:.1f} s; ours / NNCF's {ours / nncf:.2f}x)" if nncf else "")


def stage_line(stages: dict) -> str:
    """The one-line summary bert_ptq.py prints last: seconds per stage group, total, ours beside NNCF's."""
    groups = ", ".join(f"{g} {s:.1f}" for g, s in stage_groups(stages).items())
    extra = _engine_time(stages)
    return f"stages (s): {groups}; total {stages['total_s']:.1f}" + (f"; {extra}" if extra else "")


def _stage_lines(rep: dict) -> list[str]:
    stages = rep.get("stages")
    if not stages:
        return []
    total = stages["total_s"] or 1.0
    lines = ["## Where the time went (wall seconds per stage, this run)", ""]
    lines += table(["stage", "seconds", "share"],
                   [*([r["stage"], f"{r['seconds']:.1f}", f"{r['seconds'] / total:.0%}"] for r in stages["seconds"]),
                    ["**total**", f"**{stages['total_s']:.1f}**", ""]])
    lines.append("")
    if "work_threads" in stages:
        lines += [f"Untimed work (calibration, the auto check's fake-quant reference, evaluation) ran on "
                  f"{stages['work_threads']} thread(s); latency is timed at the thread counts of its table.", ""]
    extra = _engine_time(stages)
    if extra:
        lines += [extra[0].upper() + extra[1:] + ": ours counts capture, calibration, export, the engines' compiles "
                  "and the auto check; NNCF's counts reading our fp32 ONNX, nncf.quantize, writing its IR and its "
                  "compile.", ""]
    return lines


def _profile_lines(rep: dict) -> list[str]:
    """Engine time from its own profiler beside the end-to-end median, split by op kind."""
    profiled = [v for v in rep["variants"] if v.get("profile") or v.get("profile_error")]
    if not profiled:
        return []
    rows = []
    for v in profiled:
        if v.get("profile_error"):
            rows.append([_label(v), f"profiler failed: {v['profile_error']}", "", "", "", "", "", "", ""])
        medians = {cell_key(r): r["median"] for r in v.get("latency_ms", [])}
        for c in v.get("profile", []):
            median = medians.get(cell_key(c))
            end_to_end = f"{c['end_to_end']:.2f}" + (f" ({median:.2f})" if median is not None else "")
            rows.append([_label(v), cell_name(cell_key(c)), end_to_end, f"**{c['engine']:.2f}**", f"{c['gemm']:.2f}",
                         f"{c['attention']:.2f}", f"{c['norm_act']:.2f}", f"{c['other']:.2f}", f"{c['outside']:.2f}"])
    lines = ["## Engine time (the engine's own profiler, median ms of a profiling copy; end-to-end: the timed runner)", ""]
    lines += table(["variant", "cell", "end-to-end (latency table)", "engine", "GEMM", "attention", "norm/act", "other",
                    "outside the engine"], rows)
    return lines + ["", "GEMM time is what the profiler books on the weight-GEMM nodes, including what the engine fused "
                    "into them (bias, dequantization, activation, requantization); outside = end-to-end minus engine "
                    "(Python, input/output binding, dispatch).", ""]


def _limit_lines(rep: dict) -> list[str]:
    """The model's GEMM rate as a share of the engine's measured int8 GEMM peak."""
    lines = []
    for lim in rep.get("limits", []):
        if lim.get("status") == "failed":
            lines += [f"## Limit ({lim['engine']}): int8 GEMM micro-benchmark failed: {lim['error']}", ""]
            continue
        peaks = "; ".join(f"{p['threads']}t {p['peak_gmac_s']} GMAC/s" for p in lim["peaks"])
        shapes = ", ".join(sorted({f"{c['m']}x{c['k']}x{c['n']}" for c in lim["peaks"][0]["shapes"]}))
        lines += [f"## Limit: the model's GEMMs against {lim['engine']}'s measured int8 GEMM peak ({peaks})", "",
                  f"Peak: the best of single {lim['activations']} x int8 QDQ GEMMs (MxKxN {shapes}; float and "
                  "requantized outputs) timed by the engine's profiler on this CPU. GEMM MACs from the model's "
                  "config.", ""]
        lines += table(["variant", "cell", "GEMM GMAC", "GEMM ms (profiler)", "GEMM GMAC/s", "share of peak",
                        "end-to-end ms", "GEMM MACs / end-to-end, share of peak"],
                       [[r["name"], cell_name(cell_key(r)), f"{r['gemm_macs'] / 1e9:.2f}", f"{r['gemm_ms']:.2f}",
                         f"{r['gemm_gmac_s']:.1f}", f"**{r['gemm_share_of_peak']:.0%}**", f"{r['end_to_end_ms']:.2f}",
                         f"{r['end_to_end_share_of_peak']:.0%}"] for r in lim["rows"]])
        lines.append("")
    return lines


def _cell(v: dict, key: str) -> str:
    return f"{v[key]:.4f}" if key in v else ""


def _label(v: dict) -> str:
    return v["name"] + (" (peer)" if v.get("peer") else "")
