"""Errors that reach the user as one sentence and an exit status."""
from __future__ import annotations


class AgentsightError(Exception):
    """A failure the user can act on. The CLI prints the message, no traceback.

    exit_code: 1 for an environment problem (not root, no BTF, BPF refused),
    2 for a usage problem (a bad option, a missing file).
    """

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
