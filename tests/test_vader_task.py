"""tools/vader_task.py reads the sdist's nested ground-truth archive into three classes."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ptqkit.errors import UserError
from tools.vader_task import GROUND_TRUTH, label_of, read_ground_truth


def _tar_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_neutral_band_edges():
    assert [label_of(s) for s in (-4.0, -0.5, -0.49, 0.0, 0.49, 0.5, 3.2)] == [
        "negative", "negative", "neutral", "neutral", "neutral", "positive", "positive"]


def test_reads_every_source_of_the_nested_archive(tmp_path: Path):
    files = {f"hutto_ICWSM_2014/{s}_GroundTruth.txt": f"1\t-1.2\t{s} bad\r\n2\t0.1\tmeh, a\ttab\r\n3\t2.5\t{s} good\r\n".encode()
             for s in GROUND_TRUTH}
    sdist = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    sdist.write_bytes(_tar_bytes({"vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz": _tar_bytes(files)}))
    rows = read_ground_truth(sdist)
    assert len(rows) == 3 * len(GROUND_TRUTH)
    assert rows[:3] == [("tweets bad", "negative", "tweets"), ("meh, a\ttab", "neutral", "tweets"),
                        ("tweets good", "positive", "tweets")]
    assert {r[2] for r in rows} == set(GROUND_TRUTH)


def test_an_sdist_without_the_ground_truth_is_a_user_error(tmp_path: Path):
    sdist = tmp_path / "other.tar.gz"
    sdist.write_bytes(_tar_bytes({"other/README": b"x"}))
    with pytest.raises(UserError, match="hutto_ICWSM_2014"):
        read_ground_truth(sdist)
