"""Recipe sweeps on Ray Tune: every recipe (calibration method, SmoothQuant, fallback budget, engine) is one trial
that calibrates, exports, compiles and scores on a held-out slice of the train split; the chosen recipe and the
Pareto front are then evaluated on validation and re-timed interleaved on the driver's node.

Why Tune: grid search, retries of dead workers (FailureConfig) and resume (Tuner.restore) come with it. The model
(save_pretrained files) and the train split reach the trials through Ray's object store, so a cluster needs no
shared filesystem; only the driver writes files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ray
from ray import tune
from ray.tune import Callback

from . import artifacts
from .backends import get_backend
from .backends.pytorch import TorchRunner
from .bench import BenchConfig, Shape, summarize, synthetic_inputs, time_interleaved
from .config import RunConfig
from .data import encode, train_holdout
from .errors import UserError, one_line
from .evaluation import evaluate, predict_logits
from .export import export_fp32
from .loading import Loaded, load
from .sweep_grid import Recipe
from .sweep_report import write_outputs
from .sweep_trial import Payload, build_recipe, run_recipe, timing_shape
from .sysinfo import cpu_info


@dataclass
class SweepConfig:
    run: RunConfig  # model, data, device, batch size, sequence length, calibration batches, output dir
    recipes: list[Recipe]
    choose_within: float = 0.3  # points of the task's first metric below fp32 on the holdout
    holdout: int = RunConfig.fallback_holdout
    workers: int | None = None  # local Ray CPUs; None: all cores
    cpus_per_recipe: int = 1
    ray_address: str | None = None
    max_failures: int = 2  # retries of a recipe whose worker died
    shape: Shape = Shape(1, 128)
    rounds: int = BenchConfig.rounds  # driver re-timing; the trials' own figure uses a third of it


def _make_payload(cfg: SweepConfig, ld: Loaded) -> tuple[Payload, dict]:
    """The payload, and the fp32 model's holdout metrics (PyTorch eager, the reference every drop is against)."""
    model_dir = Path(tempfile.mkdtemp(prefix="ptqkit-sweep-model-"))
    try:
        ld.model.save_pretrained(model_dir)
        ld.tokenizer.save_pretrained(model_dir)
        files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    finally:
        shutil.rmtree(model_dir, ignore_errors=True)
    if len(ld.task.train) < cfg.holdout + cfg.run.calib_batches * cfg.run.batch_size:
        raise UserError(f"train split ({len(ld.task.train)}) too small for a {cfg.holdout}-example holdout beside "
                        f"{cfg.run.calib_batches} calibration batches of {cfg.run.batch_size}: lower --holdout")
    holdout = train_holdout(ld.task, cfg.holdout)
    runner = TorchRunner(ld.model, ld.input_names, 1)
    logits = predict_logits(runner, encode(ld.tokenizer, holdout, cfg.run.max_seq_len), cfg.run.batch_size,
                            ld.pad_id, desc="fp32 holdout")
    metrics = evaluate(logits, [e.label for e in holdout], ld.task.metrics, ld.task.num_labels)
    task = replace(ld.task, validation=[])
    return Payload(files, ld.model_name, task, logits.argmax(-1).tolist(), 100 * metrics[ld.task.metrics[0]],
                   cfg.run, cfg.holdout, cfg.shape, cfg.rounds), metrics


def _tuner(cfg: SweepConfig, payload_ref, layout: artifacts.Layout):
    """A new Tuner, or the interrupted one restored: finished recipes are kept, the rest rerun."""
    exp_dir, grid_file = layout.sweep_experiment, layout.sweep_grid
    trainable = tune.with_resources(tune.with_parameters(run_recipe, payload=payload_ref), {"cpu": cfg.cpus_per_recipe})
    grid = [asdict(r) for r in cfg.recipes]
    if tune.Tuner.can_restore(str(exp_dir)):
        if json.loads(grid_file.read_text()) != grid:
            raise UserError(f"{layout.root} holds a different sweep: rerun it with the same grid to resume, "
                            f"or pass another --output-dir")
        print(f"resuming the sweep in {exp_dir}: finished recipes are kept, unfinished and errored ones rerun")
        return tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, restart_errored=True)
    exp_dir.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_json(grid_file, grid)
    return tune.Tuner(
        trainable,
        param_space={"recipe": tune.grid_search(grid)},
        run_config=tune.RunConfig(name=exp_dir.name, storage_path=str(exp_dir.parent.resolve()), verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                                  callbacks=[_Progress(len(grid))]),
    )


class _Progress(Callback):
    """One line per finished recipe (Tune's own tables are too loud for a CLI)."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.done += 1
        h = result.get("holdout", {})
        what = (f"holdout drop {h['drop_pt']:+.2f} pt, {h['latency_ms']:.2f} ms" if result.get("status") == "ok"
                else f"failed: {result.get('error')}")
        print(f"[{self.done}/{self.total}] {Recipe(**trial.config['recipe']).label()}: {what}", flush=True)


def collect(results, recipes: list[Recipe]) -> list[dict]:
    """One record per recipe, in grid order: ok / failed (with its one-line error) / unfinished."""
    by_recipe = {}
    for res in results:
        if res.config is None:  # never started before an interruption
            continue
        key = json.dumps(res.config["recipe"], sort_keys=True)
        m = res.metrics or {}
        if res.error is not None:
            rec = {"status": "failed", "error": one_line(res.error)}
        elif "status" in m:
            rec = {k: m[k] for k in ("status", "holdout", "error") if k in m}
        else:
            rec = {"status": "unfinished"}
        by_recipe[key] = rec
    return [{"recipe": asdict(r), "label": r.label(),
             **by_recipe.get(json.dumps(asdict(r), sort_keys=True), {"status": "unfinished"})} for r in recipes]


def pareto_front(records: list[dict], metric: str) -> list[dict]:
    """ok recipes that no other ok recipe beats on both holdout metric (higher) and latency (lower)."""
    ok = [r for r in records if r["status"] == "ok"]

    def dominated(a: dict) -> bool:
        ha = a["holdout"]
        return any(b["holdout"][metric] >= ha[metric] and b["holdout"]["latency_ms"] <= ha["latency_ms"]
                   and (b["holdout"][metric] > ha[metric] or b["holdout"]["latency_ms"] < ha["latency_ms"]) for b in ok)

    return sorted((r for r in ok if not dominated(r)), key=lambda r: r["holdout"]["latency_ms"])


def run_sweep(cfg: SweepConfig) -> dict:
    """The whole sweep; writes sweep.json, sweep.md and sweep.png into the output dir."""
    from .cluster import ray_session

    out = artifacts.ensure_output_dir(cfg.run.output_dir)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # with verbose=0: no experiment banners, our lines instead
    for r in cfg.recipes:
        get_backend(r.backend)
    ld = load(cfg.run)
    payload, fp32_holdout = _make_payload(cfg, ld)
    start = time.perf_counter()
    with ray_session(cfg.ray_address, cfg.workers) as cpus:
        workers = max(1, cpus // cfg.cpus_per_recipe)
        print(f"sweep: {len(cfg.recipes)} recipes on {workers} worker(s) of {cfg.cpus_per_recipe} CPU", flush=True)
        tuner = _tuner(cfg, ray.put(payload), artifacts.Layout(out))
        records = collect(tuner.fit(), cfg.recipes)
    trials_s = time.perf_counter() - start
    unfinished = sum(r["status"] == "unfinished" for r in records)
    if unfinished:
        raise UserError(f"sweep interrupted with {unfinished} of {len(records)} recipes unfinished; "
                        f"rerun the same command to resume")
    metric = ld.task.metrics[0]
    front = pareto_front(records, metric)
    final = final_round(cfg, payload, ld, front)
    for rec in front:
        rec["final"] = final["int8"][rec["label"]]
    within = [r for r in front if r["holdout"]["drop_pt"] <= cfg.choose_within]
    chosen = min(within, key=lambda r: r["final"]["latency_ms"]) if within else None
    rep = {
        "model": ld.model_name, "task": ld.task.name, "device": cfg.run.device, "cpu": cpu_info(), "metric": metric,
        "holdout_examples": cfg.holdout, "validation_examples": len(ld.val_labels), "choose_within_pt": cfg.choose_within,
        "fp32": {"holdout": fp32_holdout, "validation": final["fp32_validation"]},
        "recipes": records,
        "pareto_front": [r["label"] for r in front],
        "chosen": chosen,
        "retimed": {"shape": str(timing_shape(ld.model, cfg.shape)), "threads": 1, "rounds": cfg.rounds, "fp32_ms": final["fp32_ms"]},
        "workers": workers, "trials_wall_s": round(trials_s, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if chosen:
        print(f"chosen: {chosen['label']} (holdout drop {chosen['holdout']['drop_pt']:+.2f} pt, validation {metric} "
              f"{chosen['final']['validation'][metric]:.4f}, {chosen['final']['latency_ms']:.2f} ms)")
    else:
        print(f"no recipe within {cfg.choose_within} pt of fp32 on the holdout")
    write_outputs(rep, out)
    return rep


def final_round(cfg: SweepConfig, payload: Payload, ld: Loaded, front: list[dict]) -> dict:
    """Rebuild the front's recipes on this node (calibration is seeded: the same models), evaluate them and
    each engine's fp32 on validation, and time them all interleaved, one thread each."""
    val_features, val_labels = ld.val_features, ld.val_labels
    runners, out = {}, {"int8": {}, "fp32_validation": {}, "fp32_ms": {}}
    work = Path(tempfile.mkdtemp(prefix="ptqkit-sweep-final-"))
    fp32_path = None
    try:
        for rec in front:
            fp32_name = f"{rec['recipe']['backend']}-fp32"
            if fp32_name not in runners:
                fp32_path = fp32_path or export_fp32(ld.model, ld.input_names, artifacts.Layout(work).fp32_onnx)
                runners[fp32_name] = get_backend(rec["recipe"]["backend"]).compile(fp32_path, 1, "fp32")
            _, runner, _ = build_recipe(Recipe(**rec["recipe"]), payload, work / rec["label"].replace("/", "_"), 1)
            runners[rec["label"]] = runner
        for name, runner in runners.items():
            logits = predict_logits(runner, val_features, cfg.run.batch_size, ld.pad_id, desc=f"validation {name}")
            metrics = evaluate(logits, val_labels, ld.task.metrics, ld.task.num_labels)
            if name.endswith("-fp32"):
                out["fp32_validation"][name] = metrics
            else:
                out["int8"][name] = {"validation": metrics}
        shape = timing_shape(ld.model, cfg.shape)
        inputs = synthetic_inputs(shape, ld.model.config.vocab_size, ld.input_names)
        timed = time_interleaved(runners, inputs, BenchConfig(rounds=cfg.rounds))
        for name, samples in timed.items():
            ms = summarize(samples, shape, 1)["median"]
            if name.endswith("-fp32"):
                out["fp32_ms"][name] = ms
            else:
                out["int8"][name]["latency_ms"] = ms
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
