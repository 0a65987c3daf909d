"""The artefact directory: the name of every file in it (Layout), and atomic writes (a reader sees either the old
file or the complete new one, never half of it). Torch-free: the deployment runtime reads the same layout."""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk or an exhausted quota: the same fix


@dataclass(frozen=True)
class Layout:
    """Every file the steps write into an output dir, named once. `Layout(Path())` gives the names relative to
    the dir (what runtime.json records and what travels through Ray's object store)."""

    root: Path

    # bert_ptq.py / calib.py / export.py / bench.py
    @property
    def quant_state(self) -> Path:
        """Directory: the observers' state and the quantization config (Quantizer.save/load)."""
        return self.root / "quant_state"

    @property
    def calib_summary(self) -> Path:
        return self.root / "calib_summary.json"

    @property
    def layer_report(self) -> Path:
        return self.root / "layer_report.json"

    @property
    def fp32_onnx(self) -> Path:
        return self.root / "model_fp32.onnx"

    @property
    def int8_onnx(self) -> Path:
        """The int8 QDQ ONNX: what every file-taking engine compiles and what a target server runs."""
        return self.root / "model_int8_qdq.onnx"

    @property
    def int8_torchscript(self) -> Path:
        return self.root / "model_int8_fakequant.pt"

    @property
    def peer_nncf_xml(self) -> Path:
        return self.root / "peer_nncf_int8.xml"

    @property
    def peer_ort_dynamic_onnx(self) -> Path:
        return self.root / "peer_ort_dynamic_int8.onnx"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_png(self) -> Path:
        return self.root / "report.png"

    @property
    def bench_json(self) -> Path:
        return self.root / "bench.json"

    # the deployment runtime (predict.py): what a target server needs beside int8_onnx
    @property
    def runtime_json(self) -> Path:
        return self.root / "runtime.json"

    @property
    def host_check(self) -> Path:
        return self.root / "host_check.json"

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    @property
    def tokenizer_json(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    # evaluate.py (bulk evaluation)
    @property
    def evaluation_json(self) -> Path:
        return self.root / "evaluation.json"

    @property
    def disagreements(self) -> Path:
        return self.root / "disagreements.jsonl"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions.csv"

    # bench.py --corpus
    @property
    def corpus_json(self) -> Path:
        return self.root / "corpus.json"

    @property
    def corpus_md(self) -> Path:
        return self.root / "corpus.md"

    @property
    def corpus_png(self) -> Path:
        return self.root / "corpus.png"

    @property
    def corpus_peers(self) -> Path:
        """Directory: peer models the corpus benchmark converts itself (CTranslate2's), reused by later runs."""
        return self.root / "corpus_peers"

    # sweep.py
    @property
    def sweep_json(self) -> Path:
        return self.root / "sweep.json"

    @property
    def sweep_md(self) -> Path:
        return self.root / "sweep.md"

    @property
    def sweep_png(self) -> Path:
        return self.root / "sweep.png"

    @property
    def sweep_experiment(self) -> Path:
        """Ray Tune's experiment dir (resume state); the grid it ran sits beside it."""
        return self.root / "ray" / "sweep"

    @property
    def sweep_grid(self) -> Path:
        return self.sweep_experiment.parent / "grid.json"


def ensure_output_dir(path: str | Path) -> Path:
    """Create the output dir and prove it is writable before any long work starts."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise UserError(f"output dir {out} is a file, not a directory; pass another --output-dir")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".probe-"):
            pass
    except OSError as e:
        raise UserError(f"output dir {out} is not writable ({e.strerror}); pass a writable --output-dir") from None
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, on any failure delete it.

    A full disk becomes a UserError: the user can act on it, and the old `path` is left as it was.
    """
    target = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; artefacts are copied to and read by other users
        yield Path(tmp)
        os.replace(tmp, target)
    except OSError as e:
        if e.errno in _NO_SPACE:
            msg = f"no space left on device writing {target}; free space or pass another --output-dir"
            raise UserError(msg) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp dir beside `path`; on success it replaces `path` (old contents dropped), else it is deleted."""
    target = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    old = target.with_name(f".{target.name}.old")
    try:
        yield tmp
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
