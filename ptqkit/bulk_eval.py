"""fp32 vs int8 on a large file (CSV, JSON lines or Parquet) through Ray Data: the rows stream through a pool of
actors, each of which compiles both engines once and tokenizes its own batches; the driver only counts.

Each block is bucketed by length and padded to its longest rows (ptqkit.batcher), not to --max-seq-len; a row's
prediction does not depend on its padding, so the Ray run and the single-process run (`local=True`, the same
EnginePair in this process) agree row for row.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from . import artifacts
from .backends import FILE_ENGINES, get_backend
from .bulk_engines import ARTEFACTS, EnginePair, engine_files
from .errors import UserError
from .metrics import compute_metrics
from .user_files import USER_FILE_SUFFIXES, choose_text_columns

INPUT_SUFFIXES = (*USER_FILE_SUFFIXES, ".parquet")  # what the main command reads, and Parquet


@dataclass
class EvalConfig:
    artifacts_dir: str  # bert_ptq.py's output dir: its fp32 and int8 ONNX (ARTEFACTS)
    input: str
    output_dir: str
    model: str = "default"  # where the tokenizer comes from
    cache_dir: str | None = None
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    where: str | None = None  # COLUMN=VALUE: only rows whose column equals the value
    backend: str = FILE_ENGINES[0]
    batch_size: int = 32
    max_seq_len: int = 128
    actors: int | None = None  # None: as many as fit the cores (local Ray) or the cluster's CPUs minus one (reading)
    cpus_per_actor: int = 1  # CPUs each actor reserves; its engines (and the --local run's) use as many threads
    ray_address: str | None = None
    limit: int | None = None
    local: bool = False  # no Ray: the same engines in this process (the reference for the Ray run)
    predictions: bool = False  # also write every row's predictions (predictions.csv)


def read_columns(path: Path) -> list[str]:
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return list(pq.read_schema(path).names)
    if suffix in (".json", ".jsonl"):
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "{}")
        try:
            return list(json.loads(first))
        except (json.JSONDecodeError, TypeError):
            raise UserError(f"{path}: the first line is not a JSON object: use JSON lines") from None
    opts = pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ",")
    with pcsv.open_csv(path, parse_options=opts) as reader:
        return list(reader.schema.names)


def _check(cfg: EvalConfig) -> tuple[Path, tuple[str, ...], str | None]:
    path = Path(cfg.input)
    if not path.is_file():
        raise UserError(f"input file {path} not found")
    if path.suffix.lower() not in INPUT_SUFFIXES:
        raise UserError(f"{path}: unsupported file type {path.suffix or '(none)'}; use {', '.join(INPUT_SUFFIXES)}")
    for name in ARTEFACTS:
        if not (Path(cfg.artifacts_dir) / name).is_file():
            raise UserError(f"{Path(cfg.artifacts_dir) / name} not found: pass --artifacts with the --output-dir of "
                            f"bert_ptq.py (or export.py)")
    if get_backend(cfg.backend).name not in FILE_ENGINES:
        raise UserError(f"--backend {cfg.backend} compiles the model, not the exported files: use {' or '.join(FILE_ENGINES)}")
    columns = read_columns(path)
    label = cfg.label_column or ("label" if "label" in columns else None)
    if cfg.label_column and cfg.label_column not in columns:
        raise UserError(f"{path} has no label column {cfg.label_column!r} (columns found: {', '.join(columns)})")
    text = choose_text_columns(columns, label or "", cfg.text_columns, str(path))
    if cfg.where and (cfg.where.count("=") != 1 or cfg.where.split("=")[0] not in columns):
        raise UserError(f"--where {cfg.where!r}: use COLUMN=VALUE with one of the columns {', '.join(columns)}")
    return path, text, label


def _ray_batches(cfg: EvalConfig, path: Path, text: tuple[str, ...], label: str | None, files) -> Iterator[dict]:
    """Read, cut into blocks, and map through `cfg.actors` actors that each reserve `cfg.cpus_per_actor` CPUs and
    run their engines and tokenizer on that many threads: Ray counts CPUs but does not bind them, so an actor
    that ran more threads than it reserved would take its neighbour's core."""
    import ray
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in file order: row numbers mean something
    ctx.enable_progress_bars = False  # ours counts rows; Ray's bars per operator would interleave with it
    suffix = path.suffix.lower()
    # Reading and filtering are light: they take no CPU slot (the actors hold those), and one task at a time, since
    # zero-CPU tasks would otherwise start a worker process per block.
    light = {"num_cpus": 0, "concurrency": 1}
    # On a cluster the file is read where it is, on this node (local://); the rows then stream to actors anywhere.
    src = f"local://{path.resolve()}" if cfg.ray_address else str(path)
    if suffix == ".parquet":
        ds = ray.data.read_parquet(src, **light)
    elif suffix in (".json", ".jsonl"):
        ds = ray.data.read_json(src, lines=True, file_extensions=None, **light)
    else:
        import pyarrow.csv as pcsv

        ds = ray.data.read_csv(src, parse_options=pcsv.ParseOptions(delimiter="\t" if suffix == ".tsv" else ","),
                               file_extensions=None, **light)
    if cfg.where:
        col, value = cfg.where.split("=")
        ds = ds.filter(lambda row: str(row[col]) == value, **light)
    if cfg.limit:
        ds = ds.limit(cfg.limit)
    ds = ds.select_columns(list(dict.fromkeys([*text, *([label] if label else [])])))
    # A file is read as one or a few big blocks, and an actor takes whole blocks: cut them (streaming, in order)
    # so that every actor gets work.
    ds = ds.repartition(target_num_rows_per_block=cfg.batch_size * 8)
    threads = cfg.cpus_per_actor
    preds = ds.map_batches(EnginePair, fn_constructor_kwargs={"files": files, "backend": cfg.backend, "label": label,
                                                               "text_columns": text, "max_seq_len": cfg.max_seq_len,
                                                               "threads": threads},
                           batch_size=cfg.batch_size, num_cpus=threads, batch_format="numpy",
                           # one block at a time per actor: a block is seconds of work, and a second one queued
                           # behind it could leave the other actors idle at the end of the file
                           compute=ray.data.ActorPoolStrategy(size=cfg.actors, max_tasks_in_flight_per_actor=1),
                           # the tokenizer's Rust thread pool would otherwise take every core of the node
                           runtime_env={"env_vars": {"RAYON_NUM_THREADS": str(threads)}})
    yield from preds.iter_batches(batch_size=None, batch_format="numpy")


def _local_batches(cfg: EvalConfig, path: Path, text: tuple[str, ...], label: str | None, files) -> Iterator[dict]:
    """The single-process reference: the same EnginePair with one actor's threads, batches in file order."""
    import pandas as pd

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = pd.read_parquet(path)
    elif suffix in (".json", ".jsonl"):
        df = pd.read_json(path, lines=True)
    else:
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, dtype={c: str for c in text})
    if cfg.where:
        col, value = cfg.where.split("=")
        df = df[df[col].astype(str) == value]
    if cfg.limit:
        df = df.head(cfg.limit)
    pair = EnginePair(files, cfg.backend, text, cfg.max_seq_len, label, cfg.cpus_per_actor)
    for i in range(0, len(df), cfg.batch_size):
        chunk = df.iloc[i : i + cfg.batch_size]
        yield pair({c: chunk[c].to_numpy() for c in (*text, *([label] if label else []))})


def run_eval(cfg: EvalConfig) -> dict:
    """Stream the file through both engines; write evaluation.json, disagreements.jsonl (and predictions.csv)."""
    path, text, label = _check(cfg)
    out = artifacts.ensure_output_dir(cfg.output_dir)
    files = engine_files(cfg.artifacts_dir, cfg.model, cfg.cache_dir)
    start = time.perf_counter()
    if cfg.local:
        rep = _consume(_local_batches(cfg, path, text, label, files), cfg, out, start)
        rep["workers"] = {"mode": "single process", "actors": 0, "engine_threads": cfg.cpus_per_actor}
    else:
        import ray

        from .cluster import ray_session

        local_cpus = None
        if not cfg.ray_address:
            # One CPU slot beyond the actors for the light stages (read, filter, column projection, block
            # cutting): without it they wait forever behind actors that hold every slot.
            cfg.actors = cfg.actors or max(1, (os.cpu_count() or 1) // cfg.cpus_per_actor)
            local_cpus = cfg.actors * cfg.cpus_per_actor + 1
        with ray_session(cfg.ray_address, local_cpus) as cpus:
            cfg.actors = cfg.actors or max(1, (cpus - 1) // cfg.cpus_per_actor)
            if cfg.actors * cfg.cpus_per_actor > cpus:
                raise UserError(f"{cfg.actors} actors x {cfg.cpus_per_actor} CPUs do not fit the cluster's {cpus} CPUs")
            rep = _consume(_ray_batches(cfg, path, text, label, ray.put(files)), cfg, out, start)
        rep["workers"] = {"mode": "ray data", "actors": cfg.actors, "cpus_per_actor": cfg.cpus_per_actor,
                          "engine_threads": cfg.cpus_per_actor, "cluster_cpus": cpus}
    wall = time.perf_counter() - start
    rep.update(input=str(path), text_columns=list(text), label_column=label, backend=cfg.backend,
               max_seq_len=cfg.max_seq_len, batch_size=cfg.batch_size, wall_s=round(wall, 2),
               rows_per_s=round(rep["rows"] / wall, 2) if wall else None)
    layout = artifacts.Layout(out)
    artifacts.write_json(layout.evaluation_json, rep)
    print(summary(rep))
    print(f"wrote {layout.evaluation_json}, {layout.disagreements}" + (f", {layout.predictions}" if cfg.predictions else ""))
    return rep


def _consume(batches: Iterator[dict], cfg: EvalConfig, out: Path, start: float) -> dict:
    """Count agreement as batches arrive; disagreeing rows (and all predictions) stream to temp files that are
    renamed into place only when the run completes. Also notes when the first rows came back (`start`: the run's
    start): Ray's and the engines' start plus the first block, all of which the wall time includes."""
    fp32_all, int8_all, labels = [], [], []
    row, first = 0, None
    with ExitStack() as stack:
        dis = stack.enter_context(open(stack.enter_context(artifacts.atomic_path(artifacts.Layout(out).disagreements)), "w",
                                       encoding="utf-8"))
        pred = None
        if cfg.predictions:
            pred = stack.enter_context(open(stack.enter_context(artifacts.atomic_path(artifacts.Layout(out).predictions)), "w",
                                            encoding="utf-8"))
            pred.write("row,fp32,int8\n")
        bar = stack.enter_context(tqdm(unit="row", desc=f"fp32 vs int8 ({cfg.backend})"))
        for b in batches:
            first = first or time.perf_counter() - start
            n = len(b["fp32"])
            for i in np.flatnonzero(b["fp32"] != b["int8"]):
                rec = {"row": row + int(i), "fp32": int(b["fp32"][i]), "int8": int(b["int8"][i]),
                       **({"label": _py(b["label"][i])} if "label" in b else {}), "text": str(b["text"][i])}
                dis.write(json.dumps(rec, ensure_ascii=False) + "\n")
            if pred:
                pred.writelines(f"{row + i},{f},{q}\n" for i, (f, q) in enumerate(zip(b["fp32"], b["int8"])))
            fp32_all.append(b["fp32"])
            int8_all.append(b["int8"])
            if "label" in b:
                labels.append(b["label"])
            row += n
            bar.update(n)
        if not row:
            raise UserError(f"{cfg.input}: no rows to evaluate" + (f" where {cfg.where}" if cfg.where else ""))
    fp32, int8 = np.concatenate(fp32_all), np.concatenate(int8_all)
    rep = {"rows": row, "agreement": round(float((fp32 == int8).mean()), 5), "disagreements": int((fp32 != int8).sum()),
           "first_batch_s": round(first, 2)}
    if labels:
        gold = np.concatenate(labels)
        if not np.issubdtype(gold.dtype, np.integer):
            raise UserError(f"label column holds {gold.dtype} values: metrics need integer class ids")
        names = ("accuracy", "f1") if set(np.unique(gold).tolist()) <= {0, 1} else ("accuracy",)
        rep["metrics"] = {p: {k: round(v, 5) for k, v in compute_metrics(names, preds, gold).items()}
                          for p, preds in (("fp32", fp32), ("int8", int8))}
    return rep


def _py(value):
    return value.item() if hasattr(value, "item") else value


def summary(rep: dict) -> str:
    w = rep["workers"]
    lines = [f"{rep['rows']} rows, {w['mode']} ({w['actors']} actor(s), {w['engine_threads']} engine thread(s) each): "
             f"{rep['wall_s']} s ({rep['first_batch_s']} s to the first batch), {rep['rows_per_s']} rows/s",
             f"argmax agreement fp32 vs int8: {rep['agreement']:.5f} ({rep['disagreements']} rows disagree)"]
    for p, m in rep.get("metrics", {}).items():
        lines.append(f"{p}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
    return "\n".join(lines)
