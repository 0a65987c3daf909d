"""Generated blocks in the Markdown docs: a command rewrites only the text between its own markers, so every
figure in README.md and docs/ has one command that regenerates it and nothing is pasted by hand.

A block named NAME sits between a line starting with `<!-- NAME:begin` (the rest of that line says which command
writes it) and the line `<!-- NAME:end -->`.
"""
from __future__ import annotations

from pathlib import Path

from . import artifacts


def markers(name: str, command: str) -> tuple[str, str]:
    """The begin and end lines of block `name`, the begin line naming the command that writes it."""
    return f"<!-- {name}:begin (written by `{command}`) -->", f"<!-- {name}:end -->"


def replace_block(path: str | Path, name: str, command: str, body: str) -> None:
    """Put `body` between the markers of block `name` in the file at `path` (atomically); the file must have them."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    begin, end = markers(name, command)
    start = text.find(f"<!-- {name}:begin")
    stop = text.find(end, start)
    if start < 0 or stop < 0:
        raise ValueError(f"{path} has no block {name!r} (a line starting '<!-- {name}:begin' and a line '{end}')")
    artifacts.write_text(path, text[:start] + begin + "\n" + body.strip("\n") + "\n" + text[stop:])
