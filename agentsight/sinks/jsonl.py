"""JSON lines to a file or stdout: each event's JSON form (docs/events.md)."""
from __future__ import annotations

import errno
import os
import sys
from collections.abc import Sequence
from typing import Any, BinaryIO

import orjson

from ..errors import AgentsightError
from .base import Outcome, Sink
from .files import create_private

_OPTIONS = orjson.OPT_APPEND_NEWLINE
MAX_DEPTH = 64  # deeper JSON values are summarised (orjson writes at most 255 levels)


class ReaderGone(Exception):
    """The reader of stdout went away (`| head`): the run stops quietly."""


def safe_json(value: Any, depth: int = 0) -> tuple[Any, int]:
    """A JSON-encodable copy of `value` and how many parts were replaced:
    containers nested deeper than MAX_DEPTH, integers beyond 64 bits and
    keys that are not strings become short descriptions."""
    if isinstance(value, dict):
        if depth >= MAX_DEPTH:
            return f"[a JSON object nested deeper than {MAX_DEPTH} levels, left out]", 1
        out, cut = {}, 0
        for k, v in value.items():
            out[k if isinstance(k, str) else str(k)], n = safe_json(v, depth + 1)
            cut += n
        return out, cut
    if isinstance(value, (list, tuple)):
        if depth >= MAX_DEPTH:
            return f"[a JSON array nested deeper than {MAX_DEPTH} levels, left out]", 1
        items, cut = [], 0
        for v in value:
            item, n = safe_json(v, depth + 1)
            items.append(item)
            cut += n
        return items, cut
    if isinstance(value, int) and not isinstance(value, bool) and not -(1 << 63) <= value < (1 << 64):
        return str(value), 1
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value, 0
    return repr(value)[:200], 1


def encode(event: Any, losses: dict[str, int]) -> bytes:
    """One event's JSON line. An event orjson cannot write (nested too
    deeply, out-of-range numbers) is written with those parts summarised,
    and counted in `losses`, so one odd request never stops a capture."""
    d = event.to_json()
    try:
        return orjson.dumps(d, option=_OPTIONS)
    except (orjson.JSONEncodeError, TypeError):
        safe, cut = safe_json(d)
        losses["events.summarised"] = losses.get("events.summarised", 0) + 1
        losses["values.summarised"] = losses.get("values.summarised", 0) + cut
        return orjson.dumps(safe, option=_OPTIONS)


class JsonLinesSink(Sink):
    def __init__(self, path: str | None = None, kinds: frozenset[str] | None = None, overwrite: bool = False):
        self.path = path
        self.kinds = kinds
        self._losses: dict[str, int] = {}
        if path in (None, "-"):
            self._out: BinaryIO = sys.stdout.buffer
            self._owned = False
            self.shown = "stdout"
        else:
            self._out = os.fdopen(create_private(path, overwrite), "wb")
            self._owned = True
            self.shown = path
        self.written = 0

    def write(self, events: Sequence[Any]) -> None:
        if not events:
            return
        losses = self._losses
        try:
            self._out.write(b"".join([encode(e, losses) for e in events]))
            self._out.flush()
        except OSError as exc:
            self._failed(exc)
        self.written += len(events)

    def _failed(self, exc: OSError) -> None:
        if isinstance(exc, BrokenPipeError) and not self._owned:
            # Nothing more can reach the reader; later writes go nowhere.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise ReaderGone from None
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            reason += "; free some space, or write elsewhere with -o"
        raise AgentsightError(f"cannot write {self.shown}: {reason}", exit_code=1) from None

    def losses(self) -> dict[str, int]:
        return dict(self._losses)

    def close(self, outcome: Outcome | None = None) -> None:
        try:
            self._out.flush()
        except OSError as exc:
            if self._owned:
                self._out.close()
            self._failed(exc)
        finally:
            if self._owned and not self._out.closed:
                self._out.close()
