#!/usr/bin/env python
"""Where do OpenVINO's int8 linears fall short of the measured int8 GEMM peak? One thread.

On the int8 QDQ ONNX of an output directory (bert_ptq.py or export.py), per shape:
1. Every FullyConnected node's time from the CPU plugin's performance counters (median of --calls calls), grouped
   by weight shape (in x out features): MACs, ms, GMAC/s and share of the peak that `bert_ptq.py` measures
   (ptqkit.roofline.int8_peak). The FFN up-projection (hidden -> intermediate) carries the fused activation.
2. The activation's cost: the same model with its erf GELU rewritten to ReLU (timing only: it computes something
   else) and to tanh-approximated GELU (ONNX Gelu, approximate="tanh"), timed interleaved (median ms, --rounds).
3. With --peer FILE (e.g. OUTPUT_DIR/peer_nncf_int8.xml, NNCF's model of a bert_ptq.py run), the same per-linear
   table for that model and its end-to-end time in the same interleaved rounds, and for both models every executed
   node type with its kernel, count and ms: where the two differ, if anywhere.
README "Where the time goes" quotes it.

    OMP_NUM_THREADS=1 python tools/linear_probe.py OUTPUT_DIR [--precision int8-bf16] [--shapes 1x128,1x512]
        [--peer OUTPUT_DIR/peer_nncf_int8.xml]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ERF_GELU = ("Div", "Erf", "Add", "Mul", "Mul")  # x / sqrt(2) -> erf -> + 1 -> * x -> * 0.5, as torch exports it


def rewrite_gelu(src: Path, dst: Path, activation: str) -> Path:
    """Write `src` with each exported erf GELU replaced by one `activation` node ("relu" or "tanh" GELU), opset 20
    (ONNX Gelu), to `dst`."""
    import onnx
    from onnx import helper

    model = onnx.load(str(src))
    nodes = list(model.graph.node)
    consumers = defaultdict(list)
    for node in nodes:
        for name in node.input:
            consumers[name].append(node)
    producer = {out: node for node in nodes for out in node.output}
    dropped, replaced = set(), {}
    for erf in (n for n in nodes if n.op_type == "Erf"):
        div = producer[erf.input[0]]
        chain = [div, erf]
        while len(chain) < len(ERF_GELU) and len(consumers[chain[-1].output[0]]) == 1:
            chain.append(consumers[chain[-1].output[0]][0])
        if tuple(n.op_type for n in chain) != ERF_GELU:
            raise SystemExit(f"error: {src.name}: the GELU at {erf.name} is not the exported erf pattern")
        x, last = div.input[0], chain[-1]
        dropped.update(id(n) for n in chain[:-1])
        replaced[id(last)] = (helper.make_node("Relu", [x], [last.output[0]], name=last.name + "_relu")
                              if activation == "relu" else
                              helper.make_node("Gelu", [x], [last.output[0]], name=last.name + "_gelu_tanh",
                                               approximate="tanh"))
    if not replaced:
        raise SystemExit(f"error: {src.name} has no erf GELU to rewrite")
    model.graph.ClearField("node")
    model.graph.node.extend(replaced.get(id(n), n) for n in nodes if id(n) not in dropped)
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            opset.version = max(opset.version, 20)
    onnx.save(model, str(dst))
    return dst


def linear_times(compiled, per_call: list[list], tokens: int) -> dict[str, tuple[tuple, list[float]]]:
    """Per FullyConnected node: (in features, out features, whether it runs per token), ms per call, from
    `perf_counters` of the static-shape model the timed runner uses (`tokens`: batch x length of its inputs). A node
    whose input has one row per sequence (pooler, classifier) is not per token."""
    import numpy as np

    kinds = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        if op.get_rt_info()["layerType"].astype(str) == "FullyConnected":
            out_features, in_features = op.inputs()[1].get_partial_shape().to_shape()
            rows = int(np.prod(list(op.inputs()[0].get_partial_shape().to_shape())[:-1]))
            kinds[op.get_friendly_name()] = (in_features, out_features, rows == tokens)
    times = defaultdict(list)
    for infos in per_call:
        for info in infos:
            if info.node_name in kinds:
                times[info.node_name].append(info.real_time.total_seconds() * 1e3)
    return {name: (kinds[name], t) for name, t in times.items()}


def print_node_types(label: str, per_call: list[list]) -> None:
    """Every executed node type and kernel of a model (`perf_counters`): count, median ms per call summed over its
    nodes."""
    import numpy as np

    ms, count = defaultdict(list), defaultdict(int)
    for infos in per_call:
        summed = defaultdict(float)
        for info in infos:
            summed[(info.node_type, info.exec_type)] += info.real_time.total_seconds() * 1e3
        for key, value in summed.items():
            ms[key].append(value)
    for info in per_call[0]:
        count[(info.node_type, info.exec_type)] += 1
    print(f"  {label}: executed nodes by type and kernel (count, ms)")
    for (node, kernel), t in sorted(ms.items(), key=lambda kv: -float(np.median(kv[1]))):
        print(f"    {node:>30} {kernel:<24} {count[(node, kernel)]:>4} {float(np.median(t)):8.3f}")


def print_linears(label: str, per_node: dict, shape, peak: float) -> None:
    """One row per weight shape: nodes, MACs, summed median ms, GMAC/s, share of the peak."""
    import numpy as np

    groups = defaultdict(list)
    for kind, t in per_node.values():
        groups[kind].append(float(np.median(t)))
    print(f"  {label}")
    print(f"    {'in x out (rows)':>26} {'nodes':>5} {'MMAC':>9} {'ms':>8} {'GMAC/s':>8} {'of peak':>8}")
    total_macs = total_ms = 0.0
    for (k, n, per_token), ms in sorted(groups.items(), key=lambda kv: -sum(kv[1])):
        rows = shape.batch * shape.seq_len if per_token else shape.batch
        macs = rows * k * n * len(ms)
        total_macs, total_ms = total_macs + macs, total_ms + sum(ms)
        row = f"{k} x {n} ({'per token' if per_token else 'per sequence'})"
        print(f"    {row:>26} {len(ms):>5} {macs / 1e6:9.1f} {sum(ms):8.3f} {macs / sum(ms) / 1e6:8.1f} "
              f"{macs / sum(ms) / 1e6 / peak:8.0%}")
    print(f"    {'all':>26} {len(per_node):>5} {total_macs / 1e6:9.1f} {total_ms:8.3f} "
          f"{total_macs / total_ms / 1e6:8.1f} {total_macs / total_ms / 1e6 / peak:8.0%}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("output_dir")
    p.add_argument("--precision", default="int8-bf16", choices=("int8", "int8-bf16"),
                   help="OpenVINO variant (int8-bf16: what --backend auto picks on VNNI CPUs with bf16)")
    p.add_argument("--shapes", default="1x128,1x512")
    p.add_argument("--calls", type=int, default=20, help="profiled calls per model and shape")
    p.add_argument("--rounds", type=int, default=40, help="interleaved timing rounds per shape")
    p.add_argument("--vocab-size", type=int, default=30522, help="token ids are drawn below it (default model's)")
    p.add_argument("--peer", help="another int8 model (ONNX or OpenVINO IR) to profile and time beside ours")
    args = p.parse_args()

    import numpy as np

    from ptqkit.backends import get_backend
    from ptqkit.backends.openvino import perf_counters
    from ptqkit.bench import BenchConfig, parse_shapes, synthetic_inputs, time_interleaved
    from ptqkit.roofline import activation_dtype, int8_peak
    from ptqkit.sysinfo import cpu_info

    src = Path(args.output_dir) / "model_int8_qdq.onnx"
    if not src.is_file():
        raise SystemExit(f"error: {src} not found (run bert_ptq.py or export.py with --output-dir first)")
    if args.peer and not Path(args.peer).is_file():
        raise SystemExit(f"error: --peer {args.peer} not found")
    ov = get_backend("openvino")
    peak = int8_peak(ov, 1, activation_dtype(src))["peak_gmac_s"]
    cpu = cpu_info()
    print(f"CPU: {cpu['model']} ({cpu['arch']}; {' '.join(cpu['flags'])}); OpenVINO {args.precision}, one thread; "
          f"measured int8 GEMM peak {peak} GMAC/s")
    with tempfile.TemporaryDirectory(prefix="ptqkit-linear-") as tmp:
        models = {"erf GELU (as exported)": src}
        for activation, label in (("relu", "ReLU (timing only)"), ("tanh", "tanh GELU")):
            models[label] = rewrite_gelu(src, Path(tmp) / f"{activation}.onnx", activation)
        if args.peer:
            models[f"peer {Path(args.peer).name}"] = Path(args.peer)
        runners = {label: ov.compile(path, 1, args.precision) for label, path in models.items()}
        names = runners[next(iter(runners))].input_names
        for shape in parse_shapes(args.shapes):
            inputs = synthetic_inputs(shape, args.vocab_size, names)
            print(f"\n{shape}: FullyConnected nodes, performance counters, median of {args.calls} calls")
            profiles = {label: perf_counters(path, 1, args.precision, inputs, args.calls) for label, path in models.items()}
            for label, (compiled, per_call) in profiles.items():
                print_linears(label, linear_times(compiled, per_call, shape.batch * shape.seq_len), shape, peak)
            if args.peer:
                for label in ("erf GELU (as exported)", f"peer {Path(args.peer).name}"):
                    print_node_types(label, profiles[label][1])
            samples = time_interleaved(runners, inputs, BenchConfig(rounds=args.rounds, warmup=3))
            print(f"  end to end, {args.rounds} interleaved rounds, median ms: "
                  + ", ".join(f"{label} {np.median(s):.2f}" for label, s in samples.items()))


if __name__ == "__main__":
    main()
