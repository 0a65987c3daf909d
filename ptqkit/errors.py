"""Errors a user can act on, and the exit-code contract of every CLI."""
from __future__ import annotations


class UserError(Exception):
    """Bad input or usage: the CLI prints the message on one line and exits with code 2."""


EXIT_USAGE = 2
EXIT_INTERNAL = 1
