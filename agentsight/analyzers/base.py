"""Shared types of the analysis chain.

Every stage is a small sans-I/O object with the same two methods::

    feed(event: dict) -> list[dict]    # one event in, zero or more out
    close() -> list[dict]              # end of input: flush what is pending

Exactly one event type flows between stages: a plain ``dict`` with a ``type``
key.  A stage consumes the types it owns, may emit new (internal) types for the
next stage, and passes every other event through unchanged, in order.

Internal event types (never leave the Pipeline):

``tls_data``   reassembly -> http1: one piece of a connection's request or
               response byte stream (``role`` = "req" | "resp").
``tls_close``  reassembly -> http1: the connection will see no more bytes
               (process exit or end of capture).
``http_request`` / ``http_response`` / ``http_body`` / ``http_end``
               http1 -> llm: one HTTP exchange, h11 style.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

Event = dict[str, Any]
ConnKey = tuple[int, int]  # (pid, conn)

# Events that pass through the analyzers unchanged (docs/events.md).
PROCESS_TYPES = frozenset(("exec", "exit", "fork", "open", "unlink", "rmdir", "rename", "connect"))

try:  # orjson is much faster; fall back to the stdlib.  Both raise ValueError.
    import orjson as _json
except ImportError:  # pragma: no cover - orjson is a dependency
    import json as _json  # type: ignore[no-redef]

# no wrapper function: this is called once per SSE event
json_loads = _json.loads


class Stats(Counter):  # type: ignore[type-arg]
    """Counters shared by all stages (``skipped.*``, ``errors.*``, ...)."""


class Analyzer(Protocol):
    def feed(self, ev: Event) -> list[Event]: ...

    def close(self) -> list[Event]: ...
