#!/usr/bin/env python
"""Step 3: compile the exported fp32 and int8 artefacts on the engine(s) and time them interleaved with PyTorch fp32."""
from __future__ import annotations

from ptqkit.cli import parser, positive_int, run_main


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--backends", help="comma-separated engines to time (default: --backend)")
    p.add_argument("--shapes", default="1x128,6x64", help="latency shapes BATCHxSEQ, comma-separated")
    p.add_argument("--threads", help="thread counts, comma-separated (default: $OMP_NUM_THREADS or 1)")
    p.add_argument("--rounds", type=positive_int, default=30, help="timed rounds per shape")
    args = p.parse_args()

    from ptqkit.pipeline import bench_step, config_from_args

    bench_step(config_from_args(args), (args.backends or args.backend).split(","))
    return 0


if __name__ == "__main__":
    run_main(main)
