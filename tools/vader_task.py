#!/usr/bin/env python
"""Build a three-class user-file task from a public package, and a model fine-tuned on it (issue #29).

    python tools/vader_task.py OUT                  # pip-downloads the vaderSentiment 3.3.2 sdist
    python tools/vader_task.py OUT --sdist FILE     # an sdist you already have (offline)
    OMP_NUM_THREADS=1 python bert_ptq.py --device x86 --model OUT/model \\
        --train-file OUT/train.csv --validation-file OUT/validation.csv

The vaderSentiment sdist on PyPI ships the ground truth of its paper (Hutto & Gilbert, ICWSM-14): 23,700 tweets and
movie-review, product-review and news-editorial snippets, each scored -4..+4 by the mean of about 20 human raters.
A text is negative at a mean <= -0.5, positive at >= +0.5, and neutral in between: neutral is the smallest class
and sits between the other two, so many texts are close calls, which is where int8 changes predictions.
A seeded shuffle gives the validation rows, then the train rows; the model is MiniLM-L6 fine-tuned on the train
rows with the default model's recipe, its labels named, so that the CSVs can write label names.
"""
from __future__ import annotations

import argparse
import csv
import io
import random
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ptqkit.artifacts import atomic_dir, atomic_path
from ptqkit.cli import run_main
from ptqkit.errors import UserError
from ptqkit.models import FineTuneConfig, fine_tune
from ptqkit.user_files import fit_labels, load_user_files

SDIST = "vaderSentiment==3.3.2"
GROUND_TRUTH = ("tweets", "movieReviewSnippets", "amazonReviewSnippets", "nytEditorialSnippets")
LABELS = ("negative", "neutral", "positive")
NEUTRAL_BAND = 0.5  # |mean rating| below this is neutral


def label_of(score: float) -> str:
    return LABELS[0] if score <= -NEUTRAL_BAND else LABELS[2] if score >= NEUTRAL_BAND else LABELS[1]


def download_sdist(directory: Path) -> Path:
    """The sdist (the wheel lacks the ground truth), from the package registry."""
    subprocess.run([sys.executable, "-m", "pip", "download", SDIST, "--no-binary", ":all:", "--no-deps", "-q",
                    "-d", str(directory)], check=True)
    return next(directory.glob("vaderSentiment-*.tar.gz"))


def read_ground_truth(sdist: Path) -> list[tuple[str, str, str]]:
    """(text, label name, source) of every scored text in the sdist's nested ICWSM-14 archive."""
    with tarfile.open(sdist) as outer:
        inner_member = next((m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz")), None)
        if inner_member is None:
            raise UserError(f"{sdist} has no hutto_ICWSM_2014.tar.gz: pass the {SDIST} sdist")
        inner_bytes = outer.extractfile(inner_member).read()
    rows = []
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        for source in GROUND_TRUTH:
            member = next(m for m in inner.getmembers() if m.name.endswith(f"{source}_GroundTruth.txt"))
            for line in inner.extractfile(member).read().decode("utf-8").splitlines():
                _, score, text = line.split("\t", 2)
                rows.append((text.strip(), label_of(float(score)), source))
    return rows


def write_csv(path: Path, rows: list[tuple[str, str, str]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("text", "label", "source"))
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="directory for train.csv, validation.csv and model/")
    p.add_argument("--sdist", help=f"the {SDIST} sdist (.tar.gz); downloaded when omitted")
    p.add_argument("--train-rows", type=int, default=8000)
    p.add_argument("--validation-rows", type=int, default=1000)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        rows = read_ground_truth(Path(args.sdist) if args.sdist else download_sdist(Path(tmp)))
    random.Random(0).shuffle(rows)
    val, train = rows[: args.validation_rows], rows[args.validation_rows : args.validation_rows + args.train_rows]
    write_csv(out / "train.csv", train)
    write_csv(out / "validation.csv", val)
    for name, split in (("train", train), ("validation", val)):
        print(f"{name}: {len(split)} rows, " + ", ".join(f"{n} {sum(r[1] == n for r in split)}" for n in LABELS))
    task = load_user_files(str(out / "train.csv"), str(out / "validation.csv"), ("text",), "label")
    task = fit_labels(task, len(LABELS), {n: i for i, n in enumerate(LABELS)})
    model, tokenizer = fine_tune(task, FineTuneConfig(), LABELS)
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    print(f"model: {out / 'model'}")


if __name__ == "__main__":
    run_main(main)
