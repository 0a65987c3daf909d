"""Errors a user can act on, and the exit-code contract of every CLI."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or usage: the CLI prints the message on one line and exits with code 2."""


EXIT_USAGE = 2
EXIT_INTERNAL = 1


def one_line(e: Exception) -> str:
    """An exception as one line for a report: its type and first reason (OpenVINO's messages start with source
    locations and checks; the reason is the first line after them)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Exception from ", "Check '"))] or lines or [""]
    return f"{type(e).__name__}: {reasons[0]}"[:300]
