"""A status line for `record`, on the terminal's last row: a sink.

The rows above it become the scrolling region, so the recorded command's
own output scrolls there undisturbed. Only on a terminal; elsewhere (a pipe,
a file, TERM=dumb) it stays silent.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from ..analyzers.correlate import file_change
from ..events import Exec, FileOp, LlmCall, Open
from ..sinks.base import Outcome, Sink
from .text import printable

REDRAW_SECONDS = 0.5


def _tokens(n: object) -> str:
    if type(n) is not int:
        return printable(str(n)) if n else "0"
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


class LiveStatus(Sink):
    kinds = frozenset(("llm_call", "exec", "open", "file"))

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.enabled = stream.isatty() and os.environ.get("TERM", "dumb") != "dumb"
        self.calls = 0
        self.commands = 0
        self.files_written = 0
        self.last_call = ""
        self._rows = 0
        self._drawn_at = 0.0
        self._lost: Callable[[], int] = lambda: 0

    def start(self, lost: Callable[[], int]) -> None:
        """`lost`: records lost so far, asked for only when the line is redrawn."""
        self._lost = lost
        if not self.enabled:
            return
        try:
            self._rows = os.get_terminal_size(self.stream.fileno()).lines
        except OSError:
            self._rows = 0
        if self._rows < 3:  # no size known (a bare pty), or no room for a status row
            self.enabled = False
            return
        # Make room, then keep the last row out of the scrolling region.
        self._write(f"\n\x1b7\x1b[1;{self._rows - 1}r\x1b8\x1b[1A")

    def write(self, events: Sequence[Any]) -> None:
        for e in events:
            t = type(e)
            if t is Exec:
                self.commands += 1
            elif t is Open or t is FileOp:
                if file_change(e) is not None:
                    self.files_written += 1
            elif t is LlmCall:
                self.calls += 1
                usage = e.usage
                took = (e.ended_ns - e.started_ns) / 1e9
                # The model name comes from the traffic: shown through printable().
                self.last_call = (f"last: {printable(e.model or '?')} "
                                  f"{_tokens(usage.get('input_tokens') or 0)} in/"
                                  f"{_tokens(usage.get('output_tokens') or 0)} out {took:.1f}s")

    def tick(self, now: float) -> None:
        if not self.enabled or self._rows == 0 or now - self._drawn_at < REDRAW_SECONDS:
            return
        self._drawn_at = now
        try:
            columns = os.get_terminal_size(self.stream.fileno()).columns
        except OSError:
            return
        # Counts first: on a narrow terminal the tail is what gets cut.
        text = (f" agentsight ● {self.calls} LLM calls · {self.commands} commands · {self.files_written} files"
                f" written · {self._lost()} lost · {self.last_call or 'no call yet'} ")
        # Save the cursor, write the last row in reverse video, restore.
        self._write(f"\x1b7\x1b[{self._rows};1H\x1b[2K\x1b[7m{text[:columns]}\x1b[0m\x1b8")

    def close(self, outcome: Outcome | None = None) -> None:
        self.restore()

    def restore(self) -> None:
        if self.enabled and self._rows:
            # Whole screen scrolls again; clear the status row.
            self._write(f"\x1b7\x1b[r\x1b[{self._rows};1H\x1b[2K\x1b8")
            self._rows = 0

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self.enabled = False
