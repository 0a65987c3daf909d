"""Errors a user can act on, and the exit-code contract of every CLI."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or usage: the CLI prints the message on one line and exits with code 2."""


EXIT_USAGE = 2
EXIT_INTERNAL = 1


def reason(e: BaseException) -> str:
    """The line of an exception's message that says why: the first non-empty one, after OpenVINO's source
    locations and checks; for Ray's wrapped errors the last one (Ray puts the remote traceback first and the
    worker's own exception, type and message, last)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if type(e).__module__.split(".")[0] == "ray":
        return lines[-1] if lines else ""
    reasons = [line for line in lines if not line.startswith(("Exception from ", "Check '"))] or lines or [""]
    return reasons[0]


def one_line(e: BaseException) -> str:
    """An exception as one line for a report or a CLI: its type and reason."""
    return f"{type(e).__name__}: {reason(e)}"[:300]
