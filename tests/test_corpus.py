"""bench.py --corpus on the tiny artefact dir: bad input gets one line and exit 2 (or a counted warning) with
nothing written; a smoke run of two fast variants writes the three files; a failing peer is listed, not fatal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ptqkit.corpus import CorpusConfig, load_rows
from ptqkit.errors import UserError

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ID2LABEL = {0: "LABEL_0", 1: "LABEL_1"}


def _bench(out: Path, model: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "bench.py", "--output-dir", str(out), "--model", str(model),
                           "--max-seq-len", "32", "--threads", "1", "--latency-rows", "5", *args], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_smoke_run_writes_the_report_and_lists_a_failed_peer(corpus_artefacts, tmp_path: Path) -> None:  # noqa: F811
    out, model = corpus_artefacts
    out = _copy(out, tmp_path / "out")
    rows = tmp_path / "rows.csv"
    rows.write_text("review,label\n" + "".join(f"{'good film ' * (i % 30)},{i % 2}\n" for i in range(40)))
    doc = tmp_path / "doc.md"
    doc.write_text("before\n<!-- corpus-rows.csv:begin (old) -->\nstale\n<!-- corpus-rows.csv:end -->\nafter\n")
    proc = _bench(out, model, "--corpus", str(rows), "--variants", "ours-int8,ours-int8-padded,nncf-openvino-int8",
                  "--docs", str(doc))
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((out / "corpus.json").read_text())
    assert rep["corpus"] == {"name": "rows.csv", "rows": 40, "labelled": True, "empty_texts": 2, "truncated": 14,
                             "mean_tokens": rep["corpus"]["mean_tokens"], "max_seq_len": 32}
    by_name = {v["name"]: v for v in rep["variants"]}
    ours, padded, nncf = by_name["ours-int8"], by_name["ours-int8-padded"], by_name["nncf-openvino-int8"]
    assert ours["status"] == padded["status"] == "ok" and ours["threads"]["1"]["rows_per_s"] > 0
    assert ours["threads"]["1"]["latency_ms"]["requests"] == 5 and ours["threads"]["1"]["peak_rss_mb"] > 0
    assert 0 <= ours["accuracy"] <= 1 and "agreement_with_fp32" not in ours  # fp32 was not among the variants
    assert nncf["status"] == "failed" and "peer_nncf_int8.xml missing" in nncf["reason"]
    assert "warning: 2 of 40 rows are empty" in proc.stderr and "warning: 14 of 40 rows are texts longer" in proc.stderr
    assert (out / "corpus.png").read_bytes()[:4] == b"\x89PNG" and "| ours-int8 |" in (out / "corpus.md").read_text()
    assert not list(out.glob(".corpus*"))
    block = doc.read_text()
    assert block.startswith("before\n<!-- corpus-rows.csv:begin (written by `python ") and "--docs" in block
    assert "stale" not in block and "| ours-int8 |" in block and block.endswith("<!-- corpus-rows.csv:end -->\nafter\n")


@pytest.mark.parametrize("content, flags, message", [
    ("", (), "has no examples"),
    ("review,label\n", (), "has no examples"),
    ("review,label\ngood,1\n", ("--label-column", "stars"), "no label column 'stars'"),
    ("review,label\ngood,1\n", ("--text-columns", "body"), "no column(s) body"),
    ("review,label\ngood,maybe\n", (), "label 'maybe' is neither"),
    (None, (), "not a built-in corpus"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(corpus_artefacts, tmp_path: Path, content, flags,  # noqa: F811
                                                         message: str) -> None:
    out, model = corpus_artefacts
    out = _copy(out, tmp_path / "out")
    corpus = "no_such_corpus"
    if content is not None:
        corpus = str(tmp_path / "rows.csv")
        Path(corpus).write_text(content)
    proc = _bench(out, model, "--corpus", corpus, *flags)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr
    assert not list(out.glob("corpus*.json")) and not list(out.glob(".corpus*"))


def test_builtin_corpora_and_limit() -> None:
    rt = load_rows(CorpusConfig("rotten_tomatoes", "unused"), ID2LABEL)
    imdb = load_rows(CorpusConfig("imdb", "unused", limit=50), ID2LABEL)
    assert len(rt.texts) == 1000 and set(rt.labels) == {0, 1}
    assert len(imdb.texts) == 50 and imdb.texts == load_rows(CorpusConfig("imdb", "unused", limit=50), ID2LABEL).texts


def test_label_names_map_through_the_model(tmp_path: Path) -> None:
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "good", "label": "label_1"}\n{"text": "", "label": "LABEL_0"}\n{"text": "ok", "label": 1.0}\n')
    got = load_rows(CorpusConfig(str(rows), "unused"), ID2LABEL)
    assert got.labels == [1, 0, 1] and got.empty == 1
    assert load_rows(CorpusConfig(str(rows), "unused"), {}).labels is None  # a regression model: no accuracy
    with pytest.raises(UserError, match="one text column"):
        pairs = tmp_path / "pairs.csv"
        pairs.write_text("sentence1,sentence2,label\na,b,0\n")
        load_rows(CorpusConfig(str(pairs), "unused"), ID2LABEL)
