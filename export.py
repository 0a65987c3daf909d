#!/usr/bin/env python
"""Step 2: load the saved calibration state, build the fake-quant model, export TorchScript and QDQ ONNX."""
from __future__ import annotations

from ptqkit.cli import config_from_args, parser, run_main


def main() -> int:
    p = parser(__doc__)
    args = p.parse_args()

    from ptqkit.steps import export_step

    export_step(config_from_args(args))
    return 0


if __name__ == "__main__":
    run_main(main)
