"""Markdown tables for what people read: report.md, sweep.md and the README's results (tools/results.py)."""
from __future__ import annotations

from typing import Iterable, Sequence


def table(header: Sequence[object], rows: Iterable[Sequence[object]]) -> list[str]:
    """The lines of one table. A '|' inside a cell becomes '/' (error messages carry them; it would end the cell)."""
    return [_row(header), "|" + "---|" * len(header), *(_row(r) for r in rows)]


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |"


def cell_key(row: dict) -> tuple[int, int, int]:
    """A latency row's cell: (batch, sequence length, threads)."""
    return row["batch"], row["seq_len"], row["threads"]


def cell_name(cell: tuple[int, int, int]) -> str:
    batch, seq_len, threads = cell
    return f"{batch}x{seq_len} {threads}t"
