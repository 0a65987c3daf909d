"""What every CLI shares: one-line errors with the exit-code contract, and common flags."""
from __future__ import annotations

import argparse
import sys
import traceback
from dataclasses import fields, replace
from typing import Callable

from .backends import ENGINES, FILE_ENGINES
from .bench import BenchConfig, bench_config
from .config import CALIB_METHODS, DEVICES, INT8_ATTENTION, WEIGHT_ROUNDINGS, RunConfig
from .errors import EXIT_INTERNAL, EXIT_USAGE, UserError, one_line
from .sysinfo import ARM_INT8_ISAS, X86_INT8_ISAS


def run_main(main: Callable[[], int | None]) -> None:
    """Exit 2 with one line for bad input, 1 for an internal failure (traceback only with PTQKIT_DEBUG=1)."""
    import os

    try:
        code = main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("error: interrupted; completed steps are kept, rerun to resume", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # noqa: BLE001 - the contract is one line, not a traceback wall
        if os.environ.get("PTQKIT_DEBUG"):
            traceback.print_exc()
        print(f"error: internal failure: {one_line(e)} (set PTQKIT_DEBUG=1 for the traceback)", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)
    sys.exit(code or 0)


DEFAULT = RunConfig()  # the one place defaults are declared; every flag below reads its default from it


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its message to one line
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def percent(text: str) -> float:
    """'5' or '5%' -> 5.0 (a non-negative percentage)."""
    try:
        value = float(text.removesuffix("%"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be >= 0")
    return value


def plain_parser(description: str) -> argparse.ArgumentParser:
    """A parser whose usage errors are one line with exit code 2."""
    return _Parser(description=description)


def parser(description: str) -> argparse.ArgumentParser:
    """The flags shared by all steps: where the model and data come from, where outputs go."""
    p = plain_parser(description)
    p.add_argument("--device", choices=DEVICES, default=DEFAULT.device, help="target CPU: picks the quantization contract")
    p.add_argument("--model", default=DEFAULT.model, help="hub id or local save_pretrained dir (default: the offline MiniLM-L6 fine-tuned on rotten_tomatoes)")
    p.add_argument("--task", default=DEFAULT.task, help="rotten_tomatoes (offline default) or a GLUE task: mrpc sst2 qqp qnli rte cola stsb mnli")
    p.add_argument("--data-dir", help="directory with the GLUE task's TSV files (train.tsv, dev.tsv)")
    p.add_argument("--train-file", help="your own train data (.csv/.tsv/.json lines), with --validation-file")
    p.add_argument("--validation-file", help="your own validation data (.csv/.tsv/.json lines)")
    p.add_argument("--text-columns", help="comma-separated text column(s) of your files (default: detected)")
    p.add_argument("--label-column", help="label column of your files (default: detected, see README)")
    p.add_argument("--encoding", default=DEFAULT.encoding, help="text encoding of your files (default: utf-8), e.g. latin-1")
    p.add_argument("--output-dir", default=DEFAULT.output_dir, help="where artefacts and reports go (default: ./artifacts)")
    p.add_argument("--cache-dir", help="model cache (default: $PTQKIT_CACHE or ~/.cache/ptqkit)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT.batch_size, help="evaluation/calibration batch size")
    p.add_argument("--max-seq-len", type=positive_int, default=DEFAULT.max_seq_len, help="truncate inputs to this many tokens")
    p.add_argument("--backend", default=DEFAULT.backend, help="int8 engine: auto (default: the fastest faithful one among the "
                   f"installed {' and '.join(FILE_ENGINES)}, measured on this CPU) or one of {', '.join(ENGINES)}")
    return p


def add_calib_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib-batches", type=positive_int, default=DEFAULT.calib_batches, help="calibration batches from the train split")
    p.add_argument("--isa", choices=("auto", *X86_INT8_ISAS, *ARM_INT8_ISAS), default="auto",
                   help="int8 instruction set of the target CPU (default: this host's); x86 without VNNI (sse, avx2, "
                   "avx512) gets 7-bit weights so that the engines' 16-bit pair sums cannot saturate")
    p.add_argument("--calib-method", choices=CALIB_METHODS, help="how activation ranges are chosen (default: measured best "
                   "per device: minmax on x86's affine uint8 grid after runtime SmoothQuant, percentile on aarch64's "
                   "symmetric int8; entropy is symmetric only and switches an affine grid to symmetric)")
    p.add_argument("--max-accuracy-drop", type=float, help="auto-fallback: leave the most sensitive layers in fp32 until the "
                   "drop on a held-out slice of the train split is within this many points")
    p.add_argument("--smoothquant", type=float, metavar="ALPHA", help="extra SmoothQuant folded into the preceding "
                   "weights, strength 0..1, before the x86 contract's runtime smoothing of every linear input (off by default)")
    p.add_argument("--int8-attention", choices=INT8_ATTENTION, default=DEFAULT.int8_attention,
                   help="int8 attention matmuls (Q.K^T and P.V): auto (default: on under --backend auto and "
                   "openvino on x86 with VNNI, where they were measured faster; off otherwise, see docs/attention.md), on or off")
    p.add_argument("--qat-epochs", type=float, default=DEFAULT.qat_epochs, help="QAT after PTQ: epochs over the train split (LSQ scales + weights)")
    p.add_argument("--weight-rounding", choices=WEIGHT_ROUNDINGS, default=DEFAULT.weight_rounding,
                   help="how int8 weights are rounded: nearest (default) or gptq (each layer's rounding chosen to "
                   "minimise its output error on the calibration batches; weight scales unchanged)")


def add_bench_flags(p: argparse.ArgumentParser) -> None:
    """Latency flags (bench.py, bert_ptq.py); defaults from BenchConfig."""
    bench = BenchConfig()
    p.add_argument("--shapes", default=",".join(map(str, bench.shapes)), help="latency shapes BATCHxSEQ, comma-separated, "
                   "or 'server': 1x128, 1x512 and 32x128 at one thread and at every usable core")
    p.add_argument("--threads", help="thread counts, comma-separated (default: $OMP_NUM_THREADS or 1)")
    p.add_argument("--rounds", type=positive_int, default=bench.rounds, help="timed rounds per shape")
    p.add_argument("--profile-calls", type=int, default=bench.profile_calls, help="calls per shape profiled by "
                   "the engine's own profiler (time by op kind, share of the measured int8 GEMM peak); 0: none")


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """argparse namespace -> RunConfig; flags a CLI does not have keep RunConfig's defaults (declared once there).
    Bad flag values become UserError."""
    given = vars(args)
    try:
        bench = bench_config(given.get("shapes"), given.get("threads"), given.get("rounds"), given.get("profile_calls"))
    except ValueError as e:
        raise UserError(str(e)) from None
    names = {f.name for f in fields(RunConfig)} - {"bench", "text_columns", "isa"}
    return replace(RunConfig(), bench=bench, **{k: v for k, v in given.items() if k in names},
                   text_columns=tuple(args.text_columns.split(",")) if given.get("text_columns") else None,
                   isa=None if given.get("isa", "auto") == "auto" else args.isa)
