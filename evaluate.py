#!/usr/bin/env python
"""fp32 vs int8 on a file of any size (CSV, TSV, JSON lines, Parquet) through Ray Data: a pool of actors, each
compiling both engines once; prints metrics (when the file has labels) and argmax agreement, and writes the
disagreeing rows. A local Ray by default, --ray ADDRESS for a cluster, --local for one process without Ray."""
from __future__ import annotations

from pathlib import Path

from ptqkit.artifacts import Layout
from ptqkit.backends import FILE_ENGINES
from ptqkit.cli import plain_parser, positive_int, run_main


def main() -> int:
    p = plain_parser(__doc__)
    names = Layout(Path())
    p.add_argument("--artifacts", required=True, help=f"output dir of bert_ptq.py: {names.fp32_onnx}, {names.int8_onnx}")
    p.add_argument("--input", required=True, help="the rows: .csv, .tsv, .json/.jsonl (JSON lines) or .parquet")
    p.add_argument("--output-dir", default="evaluation", help=f"where {names.evaluation_json} and {names.disagreements} go")
    p.add_argument("--model", default="default", help="model dir whose tokenizer to use (default: the cached default model)")
    p.add_argument("--cache-dir", help="model cache (default: $PTQKIT_CACHE or ~/.cache/ptqkit)")
    p.add_argument("--text-columns", help="comma-separated text column(s) (default: detected)")
    p.add_argument("--label-column", help="label column (default: label, when present); metrics need it")
    p.add_argument("--where", metavar="COLUMN=VALUE", help="only rows whose column equals the value, e.g. source=imdb")
    p.add_argument("--backend", default=FILE_ENGINES[0], help=f"engine: {' or '.join(FILE_ENGINES)} (default: {FILE_ENGINES[0]})")
    p.add_argument("--batch-size", type=positive_int, default=32, help="rows per engine call")
    p.add_argument("--max-seq-len", type=positive_int, default=128, help="every row is truncated to this (batches are padded to their longest row)")
    p.add_argument("--actors", type=positive_int, help="actors (default: one per --cpus-per-actor CPUs of the machine; "
                   "on a cluster of its CPUs minus one)")
    p.add_argument("--cpus-per-actor", type=positive_int, default=1,
                   help="CPUs each actor reserves; its engines and tokenizer run that many threads (so does --local)")
    p.add_argument("--ray", metavar="ADDRESS", help="join this Ray cluster instead of starting a local Ray")
    p.add_argument("--limit", type=positive_int, help="only the first N rows")
    p.add_argument("--local", action="store_true", help="no Ray: one process, the same engines (the reference)")
    p.add_argument("--predictions", action="store_true", help="also write every row's predictions (predictions.csv)")
    args = p.parse_args()

    from ptqkit.bulk_eval import EvalConfig, run_eval

    run_eval(EvalConfig(
        artifacts_dir=args.artifacts, input=args.input, output_dir=args.output_dir, model=args.model,
        cache_dir=args.cache_dir, text_columns=tuple(args.text_columns.split(",")) if args.text_columns else None,
        label_column=args.label_column, where=args.where, backend=args.backend, batch_size=args.batch_size,
        max_seq_len=args.max_seq_len, actors=args.actors, cpus_per_actor=args.cpus_per_actor, ray_address=args.ray,
        limit=args.limit, local=args.local, predictions=args.predictions))
    return 0


if __name__ == "__main__":
    run_main(main)
