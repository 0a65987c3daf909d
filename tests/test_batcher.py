"""The deploy path's batcher (ptqkit/batcher.py): length buckets, input order, and bucketed predictions equal to
the unbucketed ones on our int8 model."""
from __future__ import annotations

import random

import numpy as np
import pytest

from ptqkit import batcher, runtime
from ptqkit.backends import FILE_ENGINES, get_backend


def test_bucket_edges_are_bounded_and_end_at_the_maximum() -> None:
    assert batcher.bucket_edges(512) == (16, 32, 64, 128, 256, 512)
    assert batcher.bucket_edges(128) == (16, 32, 64, 128)
    assert batcher.bucket_edges(100) == (16, 32, 64, 100)
    assert batcher.bucket_edges(20) == (20,)
    assert len(batcher.bucket_edges(4096)) == batcher.BUCKETS


def test_request_lengths_bound_the_padding_and_the_shapes() -> None:
    grid = batcher.request_lengths(512)
    assert len(grid) == 32 and grid[-1] == 512 and list(grid) == sorted(set(grid))
    assert batcher.request_lengths(128)[-2:] == (120, 128) and batcher.request_lengths(100)[-1] == 100
    for n in range(3, 513):
        padded = next(g for g in grid if g >= n)
        assert padded - n <= max(batcher.GRID_STEP - 1, n // 8), n


class _Shapes:
    """A runner that compiles per shape, as OpenVINO does: records the shapes it ran and the static copies asked for."""

    input_names = ("input_ids", "attention_mask")

    def __init__(self):
        self.ran, self.static = [], set()

    def prepare(self, inputs) -> None:
        self.static.add(inputs["input_ids"].shape)

    def __call__(self, inputs):
        self.ran.append(inputs["input_ids"].shape)
        return np.zeros((len(inputs["input_ids"]), 2), np.float32)


def test_requests_meet_no_shape_the_warm_up_did_not_run() -> None:
    runner = _Shapes()
    requests = batcher.Requests(runner, 0, runner.input_names, 512)
    warmed = set(runner.ran) | runner.static
    assert runner.static == {(1, e) for e in batcher.bucket_edges(512)}
    for n in range(1, 513):
        requests([{"input_ids": [5] * n, "attention_mask": [1] * n}])
        assert runner.ran[-1] in warmed and runner.ran[-1][1] >= n
    assert runner.ran[-1] == (1, 512) and (1, 288) in runner.ran  # 280 tokens: the grid, not 512 or its own length


def test_plan_sorts_never_mixes_buckets_and_covers_every_row() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(3, 128) for _ in range(300)]
    edges = batcher.bucket_edges(128)
    batches = batcher.plan(lengths, 8, edges)
    assert sorted(i for b in batches for i in b) == list(range(300))
    bucket = lambda n: next(k for k, e in enumerate(edges) if n <= e)  # noqa: E731
    for b in batches:
        assert 1 <= len(b) <= 8 and len({bucket(lengths[i]) for i in b}) == 1
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    assert batcher.file_order(5, 2) == [[0, 1], [2, 3], [4]]


class _Echo:
    """A runner whose logits are each row's length and first id: shows where every row went."""

    input_names = ("input_ids", "attention_mask")

    def __call__(self, inputs):
        mask = inputs["attention_mask"]
        return np.stack([mask.sum(1), inputs["input_ids"][:, 0]], 1).astype(np.float32)


def test_classify_returns_input_order_across_chunks() -> None:
    rng = random.Random(1)
    texts = [" ".join("w" * rng.randint(1, 3) for _ in range(rng.randint(0, 40))) for _ in range(50)]
    encode = lambda ts: [{"input_ids": [len(t)] + [7] * len(t.split()), "attention_mask": [1] * (1 + len(t.split()))}  # noqa: E731
                         for t in ts]
    out = batcher.classify(texts, encode, batcher.SerialPool(_Echo()), 0, _Echo.input_names, 4, 64, chunk_rows=16)
    assert out[:, 0].tolist() == [1 + len(t.split()) for t in texts]
    assert out[:, 1].tolist() == [len(t) for t in texts]


@pytest.mark.parametrize("engine", FILE_ENGINES)
def test_bucketed_predictions_equal_unbucketed(corpus_artefacts, engine: str, words) -> None:  # noqa: F811
    """Every row alone at its own length (no padding at all) against bucketed batches of 8 on two threads."""
    out, _ = corpus_artefacts
    rng = random.Random(2)
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(0, 40))) for _ in range(120)]
    clf = runtime.Classifier(out, engine, threads=2)
    bucketed = clf.logits(texts, batch_size=8)
    features = clf.tokenizer.encode(texts)
    alone = batcher.run_batches(features, [[i] for i in range(len(texts))], clf.runner, clf.cfg.pad_id,
                                clf.cfg.input_names)
    padded = batcher.run_batches(features, batcher.file_order(len(texts), 8), clf.runner, clf.cfg.pad_id,
                                 clf.cfg.input_names, length=clf.cfg.max_seq_len)
    latency = get_backend(engine).compile(out / clf.cfg.model_file, 1, "int8")
    requests = batcher.Requests(latency, clf.cfg.pad_id, clf.cfg.input_names, clf.cfg.max_seq_len)
    one_by_one = np.concatenate([requests([f]) for f in features])  # OpenVINO: on a static copy per bucket
    assert len(set(alone.argmax(-1).tolist())) == 2, "labels must vary for the comparison to mean anything"
    for other in (alone, padded, one_by_one):
        np.testing.assert_allclose(bucketed, other, atol=1e-3 * np.abs(other).max())
        assert (bucketed.argmax(-1) == other.argmax(-1)).all()
