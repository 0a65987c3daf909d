"""Recipe sweeps on Ray Tune: every recipe (calibration method, SmoothQuant, fallback budget, engine) is one trial
that calibrates, exports, compiles and scores on a held-out slice of the train split; the chosen recipe and the
Pareto front are then evaluated on validation and re-timed interleaved on the driver's node.

Why Tune: grid search, retries of dead workers (FailureConfig) and resume (Tuner.restore) come with it. The model
(save_pretrained files) and the train split reach the trials through Ray's object store, so a cluster needs no
shared filesystem; only the driver writes files.
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import ray
from ray import tune
from ray.tune import Callback

from . import artifacts
from .backends import ENGINES, FILE_ENGINES, get_backend
from .backends.pytorch import TorchRunner
from .bench import BenchConfig, Shape, summarize, synthetic_inputs, time_interleaved
from .data import TaskData, calibration_batches, encode, train_holdout
from .errors import UserError, one_line, reason
from .markdown import table
from .evaluation import evaluate, predict_logits
from .models import load_model
from .pipeline import Loaded, RunConfig, calibrate, export_fp32, export_int8, feed_inputs, load
from .sysinfo import cpu_info, cpu_label

RECIPE_KEYS = ("calib_method", "smoothquant", "max_accuracy_drop", "backend")


@dataclass(frozen=True)
class Recipe:
    """One point of the grid: the single-run flags that change what int8 model comes out."""

    calib_method: str | None = None  # None: the device's default
    smoothquant: float | None = None
    max_accuracy_drop: float | None = None  # auto-fallback budget in points; None: off
    backend: str = FILE_ENGINES[0]

    def label(self) -> str:
        parts = [self.backend, self.calib_method or "default"]
        if self.smoothquant is not None:
            parts.append(f"sq{self.smoothquant:g}")
        if self.max_accuracy_drop is not None:
            parts.append(f"fallback{self.max_accuracy_drop:g}")
        return "/".join(parts)


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


@dataclass
class Payload:
    """What every trial needs, put once into Ray's object store. Validation is never in it."""

    model_files: dict[str, bytes]
    model_name: str
    task: TaskData
    fp32_holdout: list[int]  # fp32 argmax on the holdout, for agreement
    fp32_score: float  # fp32 holdout metric (points)
    run: RunConfig
    holdout: int
    shape: Shape
    rounds: int


# ---------------------------------------------------------------- grid

def parse_grid(flags: dict[str, str | None], grid_file: str | None) -> list[Recipe]:
    """Recipes from comma lists of the single-run flags (the product), or from a JSON/YAML list of recipes."""
    if grid_file:
        if any(v is not None for v in flags.values()):
            raise UserError("pass either --grid FILE or the grid flags (--calib-method, ...), not both")
        return _recipes_from_file(Path(grid_file))
    values = {
        "calib_method": _items(flags.get("calib_method"), lambda s: s, None),
        "smoothquant": _items(flags.get("smoothquant"), float, None),
        "max_accuracy_drop": _items(flags.get("max_accuracy_drop"), float, None),
        "backend": _items(flags.get("backend"), lambda s: s, FILE_ENGINES[0]),
    }
    return [_recipe(dict(zip(values, combo))) for combo in itertools.product(*values.values())]


def _items(text: str | None, kind, default) -> list:
    if not text:
        return [default]
    out = []
    for item in text.split(","):
        item = item.strip()
        if item.lower() in ("off", "none", "default"):
            out.append(None)
            continue
        try:
            out.append(kind(item))
        except ValueError:
            raise UserError(f"bad grid value {item!r}: expected a number or 'off'") from None
    return out


def _recipes_from_file(path: Path) -> list[Recipe]:
    if not path.is_file():
        raise UserError(f"grid file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # noqa: BLE001 - any parse error is the user's file
        raise UserError(f"grid file {path} is not valid {path.suffix.lstrip('.').upper() or 'JSON'}: "
                        f"{reason(e)}") from None
    if isinstance(data, dict):
        data = data.get("recipes")
    if not isinstance(data, list) or not data or not all(isinstance(r, dict) for r in data):
        raise UserError(f"grid file {path}: expected a non-empty list of recipes (objects with keys "
                        f"{', '.join(RECIPE_KEYS)}), or {{\"recipes\": [...]}}")
    return [_recipe(r, path) for r in data]


def _recipe(values: dict, source: Path | None = None) -> Recipe:
    unknown = sorted(set(values) - set(RECIPE_KEYS))
    if unknown:
        raise UserError(f"{source or 'grid'}: unknown recipe key(s) {', '.join(unknown)}; use {', '.join(RECIPE_KEYS)}")
    recipe = Recipe(**{k: v for k, v in values.items() if v is not None})
    if recipe.backend not in FILE_ENGINES:
        raise UserError(f"sweep backend {recipe.backend!r}: use {' or '.join(FILE_ENGINES)} "
                        f"({', '.join(n for n in ENGINES if n not in FILE_ENGINES)} compile the model, not files: "
                        "use bert_ptq.py --backend ENGINE)")
    return recipe


# ---------------------------------------------------------------- one recipe (runs in a Ray worker or the driver)

def materialize(payload: Payload, work_dir: Path) -> Loaded:
    """A fresh model (SmoothQuant changes weights in place) and tokenizer from the payload's files."""
    model_dir = work_dir / "model"
    model_dir.mkdir(parents=True, exist_ok=True)
    for name, data in payload.model_files.items():
        (model_dir / name).write_bytes(data)
    model, tokenizer, _ = load_model(str(model_dir), payload.task)
    return Loaded(payload.task, model, tokenizer, payload.model_name, feed_inputs(model, tokenizer), [], [])


def build_recipe(recipe: Recipe, payload: Payload, work_dir: Path, threads: int):
    """Calibrate (train batches only), export the QDQ ONNX and compile int8 on the recipe's engine.

    Returns (Loaded, int8 runner, what the calibration steps did)."""
    import torch

    torch.set_num_threads(threads)
    cfg = replace(payload.run, backend=recipe.backend, calib_method=recipe.calib_method, smoothquant=recipe.smoothquant,
                  max_accuracy_drop=recipe.max_accuracy_drop, fallback_holdout=payload.holdout)
    backend = get_backend(recipe.backend)
    ld = materialize(payload, work_dir)
    calib = calibration_batches(ld.task, ld.tokenizer, cfg.calib_batches, cfg.batch_size, cfg.max_seq_len)
    q, steps = calibrate(ld, cfg, calib)
    path = export_int8(ld.model, q, ld.input_names, artifacts.Layout(work_dir).int8_onnx)
    runner = backend.compile(path, threads, "int8")
    steps["fallback_layers"] = len(q.fallback_layers)
    return ld, runner, steps


def score_recipe(recipe: Recipe, payload: Payload, threads: int) -> dict:
    """The trial's work: build the recipe, score it on the train holdout, and a short latency figure."""
    work_dir = Path(tempfile.mkdtemp(prefix="ptqkit-recipe-"))
    try:
        ld, runner, steps = build_recipe(recipe, payload, work_dir, threads)
        evidence = runner.kernels()
        if evidence.int8 == 0:
            raise RuntimeError(f"{recipe.backend} ran the int8 model without any int8 kernel ({evidence.details})")
        holdout = train_holdout(ld.task, payload.holdout)
        logits = predict_logits(runner, encode(ld.tokenizer, holdout, payload.run.max_seq_len), payload.run.batch_size,
                                ld.pad_id, desc="holdout")
        metrics = evaluate(logits, [e.label for e in holdout], ld.task.metrics, ld.task.num_labels)
        score = 100 * metrics[ld.task.metrics[0]]
        shape = timing_shape(ld.model, payload.shape)
        inputs = synthetic_inputs(shape, ld.model.config.vocab_size, ld.input_names)
        samples = time_interleaved({"int8": runner}, inputs, BenchConfig(warmup=3, rounds=max(3, payload.rounds // 3)))
        return {"status": "ok", "holdout": {
            **metrics, "drop_pt": round(payload.fp32_score - score, 3),
            "agreement_with_fp32": round(float((logits.argmax(-1) == np.asarray(payload.fp32_holdout)).mean()), 4),
            "latency_ms": summarize(samples["int8"], shape, threads)["median"], "threads": threads,
            "int8_kernels": evidence.int8, **steps}}
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


def run_recipe(config: dict, payload: Payload | None = None) -> None:
    """Tune trainable (tune.with_parameters resolves the payload's object-store reference before the call).

    A recipe that fails (bad input, an engine refusing it) reports its one-line error and ends normally, so Tune
    neither retries it nor stops the others; a worker that dies is retried by Tune (FailureConfig)."""
    threads = max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    try:
        result = score_recipe(Recipe(**config["recipe"]), payload, threads)
    except Exception as e:  # noqa: BLE001 - reported as this recipe's failure, never the sweep's
        result = {"status": "failed", "error": one_line(e)}
    tune.report(result)


def timing_shape(model, shape: Shape) -> Shape:
    """The latency shape, its sequence cut to the model's positions (small models have fewer than 128)."""
    return Shape(shape.batch, min(shape.seq_len, int(getattr(model.config, "max_position_embeddings", shape.seq_len))))


# ---------------------------------------------------------------- the sweep (driver)

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


# ---------------------------------------------------------------- outputs

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
