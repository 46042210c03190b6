"""Errors that reach the user as one sentence and an exit status."""
from __future__ import annotations


class AgentsightError(Exception):
    """A failure the user can act on. The CLI prints the message, no traceback.

    exit_code: 1 for an environment problem (not root, no BTF, BPF refused),
    2 for a usage problem (a bad option, a missing file).
    parameter: the argument the message is about, which the message then
    follows ("max_capture" + "must be at most 256 MiB"); the CLI names the
    option it came from instead.
    """

    def __init__(self, message: str, exit_code: int = 1, parameter: str | None = None):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.parameter = parameter

    def __str__(self) -> str:
        return f"{self.parameter} {self.message}" if self.parameter else self.message
