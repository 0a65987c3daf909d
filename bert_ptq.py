#!/usr/bin/env python
"""Quantize a BERT-family classifier to int8, compile it, and show fp32 vs int8 accuracy and speed side by side."""
from __future__ import annotations

from ptqkit.cli import add_bench_flags, add_calib_flags, config_from_args, parser, percent, positive_int, run_main


def main() -> int:
    p = parser(__doc__)
    add_calib_flags(p)
    p.add_argument("--eval-limit", type=positive_int, help="evaluate only the first N validation examples (smoke runs)")
    p.add_argument("--max-slowdown", type=percent, metavar="PCT",
                   help="per-layer precision: for several k (report.md lists each), measure the k most sensitive "
                   "quantized ops (linears, attention matmuls) left in float (agreement with fp32 on held-out train "
                   "sentences, the int8 engine's latency at the first shape) and keep the most faithful k within "
                   "PCT%% of k = 0's latency (off by default)")
    add_bench_flags(p)
    p.add_argument("--bench-only", action="store_true", help="skip evaluation: build, check kernels, time")
    p.add_argument("--skip-peers", action="store_true", help="leave out NNCF, bf16 and dynamic-int8 peers")
    p.add_argument("--allow-no-int8", action="store_true", help="report an int8 model that ran without int8 kernels instead of failing")
    args = p.parse_args()

    from ptqkit.pipeline import run

    run(config_from_args(args))
    return 0


if __name__ == "__main__":
    run_main(main)
