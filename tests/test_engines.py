"""A new engine is one class plus one registry line: this example runs through the whole pipeline unchanged."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ptqkit import backends
from ptqkit.backends.base import MODULE, Engine, KernelEvidence
from ptqkit.pipeline import run
from ptqkit.qmodel import QuantLinear
from test_pipeline import user_cfg  # noqa: F401 - the tiny model and CSV task fixture


class EagerEngine(Engine):
    """The smallest module engine: PyTorch eager on the form it takes (fake-quant math: no int8 kernels)."""

    name, requires, takes = "eager", "torch", MODULE

    def compile(self, model, threads: int, precision: str = "fp32"):
        return EagerRunner(model, threads)


class EagerRunner:
    def __init__(self, model, threads: int):
        self.model, self.threads, self.input_names = model.eval(), threads, model.input_names

    def __call__(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        torch.set_num_threads(self.threads)
        with torch.inference_mode():
            return self.model(*(torch.from_numpy(inputs[n]) for n in self.input_names)).numpy()

    def kernels(self) -> KernelEvidence:
        n = sum(isinstance(m, QuantLinear) for m in self.model.modules())
        return KernelEvidence(fp32=n, details={"QuantLinear (fp32 math)": n} if n else {})


def test_example_engine_runs_through_the_pipeline(user_cfg, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setitem(backends.ENGINES, "eager", "test_engines:EagerEngine")  # the one registry line
    rep = run(replace(user_cfg, backend="eager", allow_no_int8=True, output_dir=str(tmp_path)))
    by_name = {v["name"]: v for v in rep["variants"]}
    assert list(by_name) == ["pytorch-fp32", "pytorch-fakequant", "eager-fp32", "eager-int8"]
    ours = by_name["eager-int8"]
    assert ours["kernel_details"] == {"QuantLinear (fp32 math)": 14} and ours["int8_kernels"] == 0
    assert ours["note"].startswith("NO int8 kernels")  # reported honestly, not as int8
    # the engine computes the converted model, so it agrees with the fake-quant graph and the fp32 copy with fp32
    assert ours["agreement_with_fakequant"] == 1.0 and by_name["eager-fp32"]["agreement_with_fp32"] == 1.0
    assert ours["metrics"] == by_name["pytorch-fakequant"]["metrics"]
    assert all(by_name[n]["latency_ms"] for n in ("pytorch-fp32", "eager-fp32", "eager-int8"))
