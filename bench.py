#!/usr/bin/env python
"""Step 3: compile the exported fp32 and int8 artefacts on the engine(s), time them interleaved with PyTorch fp32,
split each engine's time by op kind with its own profiler and measure its int8 GEMM peak (bench.json).
With --corpus: real work instead, every variant and peer on a corpus's texts (corpus.json/md/png; docs/workloads.md)."""
from __future__ import annotations

from ptqkit.cli import add_bench_flags, config_from_args, parser, run_main


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--backends", help="comma-separated engines to time (default: --backend)")
    add_bench_flags(p)
    from ptqkit import corpus

    corpus.add_flags(p)
    args = p.parse_args()
    if args.corpus:
        corpus.run(corpus.config_from_args(args))
        return 0

    from ptqkit.steps import bench_step

    bench_step(config_from_args(args), (args.backends or args.backend).split(","))
    return 0


if __name__ == "__main__":
    run_main(main)
