"""The deploy path's batcher: texts tokenized once, sorted by length into a bounded number of length buckets, each
batch padded to its longest row (not to the maximum length), results back in input order; the next chunk of texts
is tokenized on a thread while the engine runs this one, and the engine uses every core it is given (OpenVINO:
one stream per thread with asynchronous infer requests; ONNX Runtime: intra-op threads). Torch-free: runtime.py,
predict.py, evaluate.py and the corpus benchmark all run through it.

Our int8 model is a static-QDQ graph whose rows do not see each other's padding, so bucketing changes no
prediction (tests/test_batcher.py checks bucketed against unbucketed logits)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from .backends.base import Inputs, KernelEvidence
from .inputs import pad

BUCKETS = 6  # at most this many batch lengths per chunk: 16, 32, 64, 128, 256 and the maximum at 512 tokens
SMALLEST_BUCKET = 16
PAD_SLACK = 32  # a request runs on its bucket's static copy when padding adds at most this or a quarter of its tokens
GRID_STEP = 8  # request lengths: multiples of this, and of an eighth of the largest power of two below them
CHUNK_ROWS = 2048  # texts tokenized per step: the next chunk's tokenization overlaps this chunk's inference

Features = Sequence[dict[str, list[int]]]


def bucket_edges(max_len: int, buckets: int = BUCKETS) -> tuple[int, ...]:
    """Upper lengths of the buckets: doubling from SMALLEST_BUCKET, ending at max_len, at most `buckets` of them
    (the shortest merge first)."""
    edges = [max_len]
    while edges[0] // 2 >= SMALLEST_BUCKET and len(edges) < buckets:
        edges.insert(0, 1 << ((edges[0] - 1).bit_length() - 1))  # the largest power of two below the shortest edge
    return tuple(edges)


def bucket_of(length: int, edges: Sequence[int]) -> int:
    """Index of the shortest bucket that holds `length` tokens (the last one for anything longer)."""
    return next((k for k, e in enumerate(edges) if length <= e), len(edges) - 1)


def plan(lengths: Sequence[int], batch_size: int, edges: Sequence[int]) -> list[list[int]]:
    """Row indices per batch: sorted by length (stable), never mixing buckets, at most batch_size rows each."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    bucket, current = None, []
    for i in order:
        b = bucket_of(lengths[i], edges)
        if current and (b != bucket or len(current) == batch_size):
            batches.append(current)
            current = []
        bucket = b
        current.append(i)
    if current:
        batches.append(current)
    return batches


def file_order(n: int, batch_size: int) -> list[list[int]]:
    """Batches in file order: what a transformers pipeline does (and evaluate.py did)."""
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]


class SerialPool:
    """Any Runner, one call at a time (ONNX Runtime spreads each call over its intra-op threads)."""

    def __init__(self, runner):
        self.runner = runner
        self.input_names = runner.input_names

    def map(self, inputs: Iterable[Inputs]) -> list[np.ndarray]:
        return [self.runner(x) for x in inputs]

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.runner(inputs)

    def kernels(self) -> KernelEvidence:
        return self.runner.kernels()


class OpenVINOPool:
    """OpenVINO compiled for throughput: one stream per thread, an asynchronous infer request per stream, so
    batches run side by side on every core (a single stream at 2 threads ran each GEMM split in two, slower)."""

    def __init__(self, model_path: str | Path, threads: int, precision: str):
        import openvino as ov

        from .backends.openvino import compile_configured

        extra = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": threads}
        self.compiled, self.input_names = compile_configured(model_path, threads, precision, extra)
        self.queue = ov.AsyncInferQueue(self.compiled, threads)

    def map(self, inputs: Iterable[Inputs]) -> list[np.ndarray]:
        out: dict[int, np.ndarray] = {}
        self.queue.set_callback(lambda request, i: out.__setitem__(i, request.get_output_tensor(0).data.copy()))
        n = 0
        for n, x in enumerate(inputs, 1):  # start_async waits for a free request when all streams are busy
            self.queue.start_async({k: np.ascontiguousarray(x[k]) for k in self.input_names}, userdata=n - 1)
        self.queue.wait_all()
        return [out[i] for i in range(n)]

    def __call__(self, inputs: Inputs) -> np.ndarray:
        return self.map([inputs])[0]

    def kernels(self) -> KernelEvidence:
        from .backends.openvino import evidence

        return evidence(self.compiled)


def request_lengths(max_len: int) -> tuple[int, ...]:
    """The lengths a request is padded to when it runs on the dynamic-shape model: steps of GRID_STEP up to 128, then
    of an eighth of the power of two below (144, 160, ..., 288, 320, ...), so padding adds at most 1/8 of a request's
    tokens and 512 tokens need 32 shapes; max_len ends it."""
    lengths, n = [], GRID_STEP
    while n < max_len:
        lengths.append(n)
        n += max(GRID_STEP, (1 << (n.bit_length() - 1)) // 8)
    return (*lengths, max_len)


class Requests:
    """One request at a time, as a server sees them. Where the engine compiles per input shape (OpenVINO, whose
    runner offers `prepare`), a new shape costs its kernels: a batch-1 request of 280 tokens took 38.5 ms at a
    length the model had not run, 26.0 ms at one it had, 22.8 ms on a static-shape copy (IMDB model, one thread,
    AMD EPYC Zen 4). So a request near its bucket's length is padded to it and runs on that bucket's static copy;
    any other is padded up to the next of `request_lengths`, each run once here (the server's warm-up), so no
    request meets a new shape. Other engines run each request at its own length."""

    def __init__(self, runner, pad_id: int, names: Sequence[str], max_len: int):
        self.runner, self.pad_id, self.names = runner, pad_id, tuple(names)
        self.edges = bucket_edges(max_len) if hasattr(runner, "prepare") else None
        self.grid = request_lengths(max_len) if self.edges else None
        for edge in self.edges or ():
            runner.prepare(self._dummy(edge))
        for length in self.grid or ():
            runner(self._dummy(length))

    def _dummy(self, length: int) -> Inputs:
        return pad([{n: [self.pad_id] for n in self.names}], self.pad_id, self.names, length)

    def __call__(self, features: Features) -> np.ndarray:
        length = None
        if self.edges:
            longest = max(len(f["input_ids"]) for f in features)
            edge = self.edges[bucket_of(longest, self.edges)]
            # a long request padded far costs more than the static copy saves (IMDB: ~280 tokens padded to 512)
            near = edge - longest <= max(PAD_SLACK, longest // 4)
            length = edge if near else next((n for n in self.grid if n >= longest), None)
        return self.runner(pad(features, self.pad_id, self.names, length))


def make_pool(engine: str, model_path: str | Path, threads: int, precision: str = "int8"):
    """The throughput form of an engine's compiled model (OpenVINOPool or a SerialPool)."""
    from .backends import get_backend

    if engine == "openvino":
        return OpenVINOPool(model_path, threads, precision)
    return SerialPool(get_backend(engine).compile(model_path, threads, precision))


def run_batches(features: Features, batches: list[list[int]], pool, pad_id: int, names: Sequence[str],
                length: int | None = None) -> np.ndarray:
    """Logits of every row in input order; each batch padded to its longest row, or to `length`."""
    inputs = (pad([features[i] for i in idx], pad_id, names, length) for idx in batches)
    out: np.ndarray | None = None
    for idx, logits in zip(batches, pool.map(inputs)):
        if out is None:
            out = np.empty((len(features), logits.shape[-1]), np.float32)
        out[idx] = logits
    return out if out is not None else np.zeros((0, 0), np.float32)


def bucketed(features: Features, pool, pad_id: int, names: Sequence[str], batch_size: int, max_len: int) -> np.ndarray:
    """Logits in input order, batches bucketed by length."""
    batches = plan([len(f["input_ids"]) for f in features], batch_size, bucket_edges(max_len))
    return run_batches(features, batches, pool, pad_id, names)


def classify(texts: Sequence[str], encode: Callable[[Sequence[str]], Features], pool, pad_id: int,
             names: Sequence[str], batch_size: int, max_len: int, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """Texts to logits in input order: chunk k+1 is tokenized on a thread while chunk k runs bucketed."""
    chunks = [texts[s : s + chunk_rows] for s in range(0, len(texts), chunk_rows)]
    parts = []
    with ThreadPoolExecutor(1) as tokenizer:
        pending = tokenizer.submit(encode, chunks[0]) if chunks else None
        for k in range(len(chunks)):
            features = pending.result()
            if k + 1 < len(chunks):
                pending = tokenizer.submit(encode, chunks[k + 1])
            parts.append(bucketed(features, pool, pad_id, names, batch_size, max_len))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
