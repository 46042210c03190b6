"""JSON lines to a file or stdout."""
from __future__ import annotations

import sys
from typing import BinaryIO

import orjson

from ..errors import AgentsightError

_OPTIONS = orjson.OPT_APPEND_NEWLINE


class JsonlSink:
    """Writes one JSON object per line; flush() makes them visible to readers."""

    def __init__(self, path: str | None = None):
        self.path = path
        if path in (None, "-"):
            self._out: BinaryIO = sys.stdout.buffer
            self._owned = False
        else:
            try:
                self._out = open(path, "wb")
            except OSError as exc:
                raise AgentsightError(f"cannot write {path}: {exc.strerror}", exit_code=2) from None
            self._owned = True
        self.written = 0

    def write(self, event: dict) -> None:
        self._out.write(orjson.dumps(event, option=_OPTIONS))
        self.written += 1

    def write_many(self, events: list[dict]) -> None:
        if events:
            dumps = orjson.dumps
            self._out.write(b"".join([dumps(e, option=_OPTIONS) for e in events]))
            self.written += len(events)

    def flush(self) -> None:
        self._out.flush()

    def close(self) -> None:
        try:
            self._out.flush()
        finally:
            if self._owned:
                self._out.close()
