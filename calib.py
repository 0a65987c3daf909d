#!/usr/bin/env python
"""Step 1: capture the model as a torch.export graph, insert observers, calibrate on train batches, save the state."""
from __future__ import annotations

from ptqkit.cli import add_calib_flags, config_from_args, parser, run_main


def main() -> int:
    p = parser(__doc__)
    add_calib_flags(p)
    p.add_argument("--layer-report", action="store_true", help="print (and save as layer_report.json) each quantized "
                   "linear's output error against fp32 on calibration data, worst first")
    args = p.parse_args()

    from ptqkit.steps import calib_step

    calib_step(config_from_args(args))
    return 0


if __name__ == "__main__":
    run_main(main)
