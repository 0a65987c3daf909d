"""What each actor of a bulk evaluation loads: the fp32 and int8 ONNX and the tokenizer, as bytes that travel
through Ray's object store (no shared filesystem), compiled once per actor into an EnginePair."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from . import artifacts
from .batcher import bucketed, make_pool
from .errors import UserError

# What the actors need from bert_ptq.py's output dir, by their names relative to it (keys of the files that travel)
NAMES = artifacts.Layout(Path())
ARTEFACTS = (NAMES.fp32_onnx, NAMES.int8_onnx)


class EnginePair:
    """fp32 and int8 engines plus the tokenizer, loaded once: the per-actor state of the Ray Data pool.

    Kept to this one class so that the torch-free runtime (ptqkit.runtime, another branch) can replace the load
    and predict code here without touching the pipeline around it."""

    def __init__(self, files, backend: str, text_columns: tuple[str, ...], max_seq_len: int,
                 label: str | None = None, threads: int = 1):
        import ray
        from transformers import AutoTokenizer

        if isinstance(files, ray.ObjectRef):
            files = ray.get(files)
        # The files are only read while loading: the directory goes once the engines hold the models (each actor
        # would otherwise leave two model copies in /tmp).
        with tempfile.TemporaryDirectory(prefix="ptqkit-engines-") as tmp:
            layout = artifacts.Layout(Path(tmp))
            for name, data in files.items():
                path = layout.root / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            self.tokenizer = AutoTokenizer.from_pretrained(str(layout.tokenizer_dir))
            self.pad_id = self.tokenizer.pad_token_id or 0
            self.fp32 = make_pool(backend, layout.fp32_onnx, threads, "fp32")
            self.int8 = make_pool(backend, layout.int8_onnx, threads, "int8")
        self.text_columns = text_columns
        self.max_seq_len = max_seq_len
        self.label = label

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [[str(t) for t in batch[c]] for c in self.text_columns]
        enc = self.tokenizer(*texts, truncation=True, max_length=self.max_seq_len)
        features = [{k: enc[k][i] for k in self.fp32.input_names} for i in range(len(texts[0]))]
        run = lambda pool: bucketed(features, pool, self.pad_id, pool.input_names, len(features), self.max_seq_len)  # noqa: E731
        fp32, int8 = run(self.fp32).argmax(-1), run(self.int8).argmax(-1)
        out = {"fp32": fp32, "int8": int8}
        # Only disagreeing rows carry their text back: the driver writes them, nothing else needs it.
        out["text"] = np.where(fp32 != int8, np.asarray(texts[0], dtype=object), "")
        if self.label:
            out["label"] = np.asarray(batch[self.label])
        return out


def engine_files(artifacts_dir: str | Path, model: str, cache_dir: str | None) -> dict[str, bytes]:
    """The two ONNX files and the tokenizer's files, as bytes: they travel through the object store."""
    from .models import DEFAULT_MODEL, default_model_dir

    files = {name.as_posix(): (Path(artifacts_dir) / name).read_bytes() for name in ARTEFACTS}
    if model == DEFAULT_MODEL:
        from .data import load_rotten_tomatoes

        source = default_model_dir(load_rotten_tomatoes(), cache_dir)
    else:
        source = Path(model).expanduser()
        if not source.is_dir():
            raise UserError(f"--model {model}: not a local model directory (the tokenizer is read from it)")
    from transformers import AutoTokenizer

    tok_dir = Path(tempfile.mkdtemp(prefix="ptqkit-tok-"))
    try:
        AutoTokenizer.from_pretrained(str(source)).save_pretrained(tok_dir)
        files |= {(NAMES.tokenizer_dir / p.name).as_posix(): p.read_bytes() for p in tok_dir.iterdir() if p.is_file()}
    finally:
        shutil.rmtree(tok_dir, ignore_errors=True)
    return files
