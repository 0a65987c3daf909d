#!/usr/bin/env python
"""Classify text with an exported artefact directory on OpenVINO or ONNX Runtime (no torch needed).

Texts come from arguments, else --file (one per line), else stdin; one JSON line per text goes to stdout. Empty
lines are classified like any text and counted in a warning on stderr, as the main command does with empty texts.
Sentence-pair models take "first<TAB>second". --check runs the host's stored sentences instead and reports
int8 kernel evidence and agreement with the host (exit 0 only when every engine passes).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ptqkit.artifacts import Layout
from ptqkit.backends import FILE_ENGINES
from ptqkit.cli import plain_parser, positive_int, run_main


def main() -> int:
    p = plain_parser(__doc__)
    p.add_argument("artefact_dir", help="the --output-dir of bert_ptq.py or export.py (copied to this machine)")
    p.add_argument("texts", nargs="*", help="texts to classify (default: --file, else stdin)")
    p.add_argument("--file", help="a text file, one input per line")
    p.add_argument("--engine", help=f"{' or '.join(FILE_ENGINES)} (default: the one bert_ptq.py chose, from "
                   f"runtime.json, else {FILE_ENGINES[0]}); with --check a comma-separated list")
    p.add_argument("--batch-size", type=positive_int, default=32, help="texts per engine call")
    p.add_argument("--threads", type=positive_int, help="intra-op threads (default: all cores)")
    p.add_argument("--check", action="store_true", help="self-check against the host's stored predictions "
                   f"({Layout(Path()).host_check})")
    p.add_argument("--report", help="with --check: also write the check's JSON report to this file")
    args = p.parse_args()

    from ptqkit import runtime

    if args.check:
        from ptqkit.artifacts import write_json

        engines = args.engine.split(",") if args.engine else [None]
        rep = runtime.self_check(args.artefact_dir, engines, args.batch_size, args.threads or 1)
        if args.report:
            write_json(args.report, rep)
        print(json.dumps(rep, indent=2))
        return 0 if rep["passed"] else 1
    clf = runtime.Classifier(args.artefact_dir, args.engine, args.threads)
    texts = runtime.read_texts(args.texts, args.file, sys.stdin)
    empty = runtime.empty_texts(texts)
    if empty:
        print(f"warning: {empty} of {len(texts)} input(s) are empty; they are classified like any text, as the main "
              "command does", file=sys.stderr)
    for record in clf.records(texts, args.batch_size):
        print(json.dumps(record, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    run_main(main)
