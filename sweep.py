#!/usr/bin/env python
"""Sweep quantization recipes on Ray Tune (a local Ray by default, --ray ADDRESS for a cluster): each recipe is
calibrated, exported, compiled and scored on a train holdout; the chosen one and the Pareto front are then
evaluated on validation and re-timed interleaved here. Rerun the same command to resume an interrupted sweep."""
from __future__ import annotations

from ptqkit.backends import FILE_ENGINES
from ptqkit.cli import DEFAULT, config_from_args, parser, positive_int, run_main
from ptqkit.sweep_grid import RECIPE_KEYS


def main() -> int:
    p = parser(__doc__)
    p.set_defaults(backend=None, output_dir="sweep")  # --backend is a grid flag here: a comma list of FILE_ENGINES
    p.add_argument("--calib-batches", type=positive_int, default=DEFAULT.calib_batches, help="calibration batches from the train split")
    p.add_argument("--calib-method", help="grid: comma list of minmax, percentile, mse, entropy (default: the device's)")
    p.add_argument("--smoothquant", help="grid: comma list of SmoothQuant alphas or 'off', e.g. off,0.5")
    p.add_argument("--max-accuracy-drop", help="grid: comma list of auto-fallback budgets in points or 'off'")
    p.add_argument("--weight-rounding", help="grid: comma list of nearest, gptq (default: nearest)")
    p.add_argument("--grid", help="recipes from a JSON/YAML file instead: a list of objects with keys "
                   f"{', '.join(RECIPE_KEYS)}")
    p.add_argument("--choose-within", type=float, default=0.3, help="the chosen recipe is the fastest whose holdout "
                   "metric is within this many points of fp32 (default 0.3)")
    p.add_argument("--holdout", type=positive_int, default=DEFAULT.fallback_holdout, help="held-out train examples each recipe is scored on")
    p.add_argument("--workers", type=positive_int, help="CPUs of the local Ray (default: all cores)")
    p.add_argument("--cpus-per-recipe", type=positive_int, default=1, help="CPUs (and engine threads) per recipe")
    p.add_argument("--ray", metavar="ADDRESS", help="join this Ray cluster (e.g. auto, or HEAD_IP:6379) instead of "
                   "starting a local Ray")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a recipe whose worker died")
    p.add_argument("--rounds", type=positive_int, default=DEFAULT.bench.rounds, help="timed rounds for the final interleaved re-timing")
    args = p.parse_args()
    from ptqkit.sweep import SweepConfig, run_sweep
    from ptqkit.sweep_grid import parse_grid

    recipes = parse_grid({"calib_method": args.calib_method, "smoothquant": args.smoothquant,
                          "max_accuracy_drop": args.max_accuracy_drop, "weight_rounding": args.weight_rounding,
                          "backend": args.backend}, args.grid)
    args.calib_method = args.smoothquant = args.max_accuracy_drop = None
    args.weight_rounding = DEFAULT.weight_rounding
    args.backend = FILE_ENGINES[0]  # each recipe sets its own
    run = config_from_args(args)
    run_sweep(SweepConfig(run=run, recipes=recipes, choose_within=args.choose_within, holdout=args.holdout,
                          workers=args.workers, cpus_per_recipe=args.cpus_per_recipe, ray_address=args.ray,
                          max_failures=args.max_failures, rounds=args.rounds))
    return 0


if __name__ == "__main__":
    run_main(main)
