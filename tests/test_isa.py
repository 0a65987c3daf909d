"""The int8 contract follows the CPU's int8 instructions; engines stay exact on ISAs whose pair sums saturate."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from ptqkit.config import QuantConfig, QuantSpec
from ptqkit.sysinfo import classify_int8_isa, cpu_info, host_int8_isa

REPO = Path(__file__).resolve().parent.parent
X86 = platform.machine() in ("x86_64", "AMD64")


@pytest.mark.parametrize("flags, cap, expected", [
    ({"avx2"}, None, "avx2"),
    ({"avx2", "avx512f", "avx512bw"}, None, "avx512"),
    ({"avx2", "avx_vnni"}, None, "avx_vnni"),
    ({"avx2", "avx512bw", "avx512_vnni"}, None, "avx512_vnni"),
    ({"avx2", "avx512bw", "avx512_vnni", "amx_tile", "amx_int8"}, None, "amx"),
    ({"avx2", "avx512bw", "avx512_vnni", "amx_int8"}, "AVX2", "avx2"),  # oneDNN capped: engines use AVX2 kernels
    ({"avx2", "avx512bw", "avx512_vnni"}, "avx512_core", "avx512"),
    ({"avx2"}, "AVX512_CORE_AMX", "avx2"),  # a cap never raises the level
    ({"sse4_2"}, None, "sse"),
])
def test_x86_int8_isa_from_flags_and_onednn_cap(flags, cap, expected):
    assert classify_int8_isa("x86_64", flags, cap) == expected


@pytest.mark.parametrize("flags, expected", [({"asimd"}, "arm_neon"), ({"asimd", "asimddp"}, "arm_dotprod"),
                                             ({"asimd", "asimddp", "i8mm"}, "arm_i8mm")])
def test_arm_int8_isa(flags, expected):
    assert classify_int8_isa("aarch64", flags) == expected


def test_report_cpu_names_the_int8_isa_and_its_sources():
    info = cpu_info()
    assert info["int8_isa"] == info["int8_isa_sources"]["cpu_flags"] or "onednn_max_cpu_isa" in info["int8_isa_sources"]
    if X86:
        assert info["int8_isa_sources"]["torch_capability"] in ("DEFAULT", "AVX2", "AVX512", "ZVECTOR", "VSX")


@pytest.mark.parametrize("isa, bits", [("sse", 7), ("avx2", 7), ("avx512", 7), ("avx_vnni", 8), ("avx512_vnni", 8), ("amx", 8)])
def test_x86_contract_narrows_weights_where_pair_sums_saturate(isa, bits):
    cfg = QuantConfig.for_device("x86", isa=isa)
    assert cfg.weight.bits == bits and cfg.weight.ch_axis == 0 and cfg.isa == isa
    assert cfg.activation.dtype == "uint8" and not cfg.activation.symmetric  # affine u8: VNNI's and AVX2's operand
    assert (cfg.weight.qmin, cfg.weight.qmax) == ((-64, 63) if bits == 7 else (-128, 127))
    assert cfg.weight.storage_range == (-128, 127)
    assert QuantConfig.from_dict(cfg.to_dict()) == cfg


def test_contract_smooths_x86_at_runtime_and_entropy_falls_back_to_a_symmetric_grid():
    x86 = QuantConfig.for_device("x86")
    assert x86.smooth_alpha == 0.95 and x86.activation.method == "minmax" and not x86.activation.symmetric
    entropy = x86.with_calib_method("entropy")  # KL calibration is defined on |x|: symmetric only
    assert entropy.activation.symmetric and entropy.activation.dtype == "uint8"
    assert not x86.with_calib_method("mse").activation.symmetric
    assert QuantConfig.from_dict(entropy.to_dict()) == entropy
    # aarch64 keeps the contract the emulated arm64 check passed with: symmetric int8, percentile, no smoothing
    arm = QuantConfig.for_device("aarch64")
    assert arm.smooth_alpha is None and arm.activation == QuantSpec(method="percentile")
    assert arm.with_calib_method("mse").activation.symmetric


def test_contract_rejects_an_isa_of_the_other_architecture():
    with pytest.raises(ValueError, match="is not one of --device aarch64"):
        QuantConfig.for_device("aarch64", isa="avx2")
    assert QuantConfig.for_device("aarch64", isa="arm_i8mm").weight.ch_axis is None


@pytest.fixture(scope="module")
def seven_bit(tiny_contracts):
    """The avx2 contract on the tiny model: quantizer, eager fake-quant model, exported QDQ ONNX."""
    avx2 = tiny_contracts["avx2"]
    return avx2.q, avx2.converted, avx2.path


def test_seven_bit_weights_fit_the_non_saturating_range(tiny, seven_bit):
    q, eager, path = seven_bit
    batch = tiny.batch(4, 20, seed=9)
    assert torch.equal(tiny.logits(eager, batch), tiny.logits(q.graph, batch))
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    weight_dq = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert len(weight_dq) == 14
    for node in weight_dq:
        ints = inits[node.input[0]].astype(int)  # stored as int8 integers
        assert abs(ints).max() <= 64, node.name
        assert abs(ints).max() >= 63  # the narrowed range is used in full, not shrunk further
    act_q = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert act_q and all(inits[n.input[2]].dtype == "uint8" for n in act_q)  # u8 x 7-bit pair sums fit 16 bits


@pytest.fixture(scope="module")
def contract_models(tiny, tiny_contracts, tmp_path_factory) -> tuple[dict[str, str], Path]:
    """The tiny model under the AVX2 and the VNNI x86 contract as QDQ ONNX, with its fake-quant logits beside each
    (PATH.ref.npy) on one batch (saved as inputs.npz): what a process on a simulated or emulated CPU checks."""
    inputs = tmp_path_factory.mktemp("contracts") / "inputs.npz"
    batch = tiny.batch(32, 20, seed=7)
    models = {}
    for isa, int8 in tiny_contracts.items():
        np.save(str(int8.path) + ".ref.npy", tiny.logits(int8.q.graph, batch).numpy())
        models[isa] = str(int8.path)
    np.savez(inputs, **{k: v.numpy() for k, v in batch.items()})
    return models, inputs


def test_the_contract_follows_the_host_isa():
    assert QuantConfig.for_device("x86") == QuantConfig.for_device("x86", isa=host_int8_isa())


SIMULATED = """
import json, numpy as np
from ptqkit.backends import get_backend
from ptqkit.sysinfo import host_int8_isa
inputs = dict(np.load({inputs!r}))
out = {{"host_isa": host_int8_isa()}}
for isa, path in {models!r}.items():
    runner = get_backend("openvino").compile(path, 1, "int8")
    ops = runner.compiled.get_runtime_model().get_ordered_ops()
    prims = sorted({{op.get_rt_info()["primitiveType"].astype(str) for op in ops
                    if op.get_rt_info()["layerType"].astype(str) == "FullyConnected"}})
    out[isa] = {{"kernels": prims, "max_error": float(np.abs(runner(inputs) - np.load(path + ".ref.npy")).max())}}
print(json.dumps(out))
"""


@pytest.mark.skipif(not X86, reason="ONEDNN_MAX_CPU_ISA simulates x86 ISA levels")
def test_simulated_avx2_openvino_matches_fake_quant(contract_models):
    """OpenVINO under ONEDNN_MAX_CPU_ISA=AVX2 runs the saturating AVX2 kernels: the contract such a host gets
    (7-bit weights) stays exact there, while the full-range contract of VNNI CPUs does not (the failure this
    contract prevents). Only the engine runs under the cap: a torch-free process on the exported files."""
    models, inputs = contract_models
    code = SIMULATED.format(inputs=str(inputs), models=models)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["host_isa"] == "avx2"  # the cap is what the pipeline reads as the host's ISA
    host, vnni = out["avx2"], out["avx512_vnni"]
    ref_max = float(np.abs(np.load(models["avx2"] + ".ref.npy")).max())
    assert not any("avx512" in k or "amx" in k for k in host["kernels"]), host["kernels"]  # the simulation is in effect
    assert host["max_error"] <= 1e-4 * ref_max, host
    assert vnni["max_error"] > 100 * host["max_error"], vnni  # saturation shows without the narrowed weights


EMULATED = """
import json, numpy as np, onnxruntime as ort
inputs = dict(np.load({inputs!r}))
errors = {{}}
for isa, path in {models!r}.items():
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    errors[isa] = float(np.abs(session.run(None, inputs)[0] - np.load(path + ".ref.npy")).max())
print(json.dumps(errors))
"""


def _qemu() -> str | None:
    import shutil

    return shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


@pytest.mark.skipif(not X86, reason="x86 user-mode emulation of an AVX2 CPU")
def test_emulated_avx2_onnxruntime_matches_fake_quant(contract_models):
    """ONNX Runtime's MLAS picks kernels from CPUID and ignores every cap, so an AVX2-only CPU is emulated with
    qemu-user (-cpu Haswell): there the AVX2 contract is exact and the VNNI contract saturates."""
    qemu = _qemu()
    if qemu is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install qemu-user-static (.ci/run does) to check ONNX Runtime's AVX2 kernels")
        pytest.skip("qemu-user-static is not installed (apt-get install qemu-user-static)")
    models, inputs = contract_models
    code = EMULATED.format(inputs=str(inputs), models=models)
    res = subprocess.run([qemu, "-cpu", "Haswell", sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    errors = json.loads(res.stdout.strip().splitlines()[-1])
    assert errors["avx2"] < 1e-5, errors
    assert errors["avx512_vnni"] > 100 * max(errors["avx2"], 1e-7), errors  # the saturation the contract prevents
