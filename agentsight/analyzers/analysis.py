"""The analysis chain: raw capture events in, `HttpExchange`, `LlmCall` and
`WebSocketSession` out.

Sans-I/O: no sockets, no threads, no clock. Raw events (agentsight.events)
go in one at a time, in capture order; what they mean comes out::

    analysis = Analysis()
    for raw in events:
        for event in analysis.feed(raw):   # process events, HttpExchange, LlmCall
            ...
    tail = analysis.close()
    analysis.stats                          # {"skipped.not_http": 1, ...}

Stages::

    StreamReassembler -> Http2Parser (hyperframe, hpack) -> Http1Parser (llhttp)
        -> WebSocketParser (wsproto) -> LlmAnalyzer (providers/) [-> RedactStage]

Process events pass through unchanged. Exchanges not seen whole carry
`incomplete_reason`: process_exit, truncated, gap, malformed_http,
malformed_h2, hpack_context_lost, stream_reset, goaway, connection_closed,
end_of_capture, evicted, internal_error.
"""
from __future__ import annotations

from typing import Any, Mapping

from ..events import EventDecodeError, RawEvent, from_json
from .base import Stage, Stats
from .budget import DEFAULT_TOTAL, BodyBudget
from .http1 import Http1Parser
from .http2 import Http2Parser
from .llm import LlmAnalyzer
from .reassembly import StreamReassembler
from .websocket import WebSocketParser
from .redact import RedactStage


class Analysis:
    """``redact`` (default False here; the commands redact before writing)
    replaces API keys, tokens and cookies in the output with "[REDACTED]".
    ``provider_hosts`` maps a host (``"host"`` or ``"host:port"``) to a
    provider name (``"anthropic"``, ``"openai"``, ``"gemini"``) for
    endpoints that are not the provider's own, otherwise reported as
    provider ``"unknown"``. ``body_budget`` caps the bytes of bodies held at
    once, all connections together (a body that does not fit is cut and
    counted)."""

    def __init__(self, redact: bool = False, *, provider_hosts: Mapping[str, str] | None = None,
                 body_budget: int = DEFAULT_TOTAL) -> None:
        self._stats = Stats()
        st = self._stats
        # One cap on all the body bytes the stages hold at once.
        self.budget = BodyBudget(body_budget)
        stages: list[Stage] = [StreamReassembler(st), Http2Parser(st, self.budget), Http1Parser(st, self.budget),
                               WebSocketParser(st), LlmAnalyzer(st, provider_hosts, self.budget)]
        if redact:
            stages.append(RedactStage())
        self._stages = stages
        self._first = stages[0]
        self._rest = tuple(stages[1:])
        self._closed = False

    def feed(self, event: RawEvent | dict[str, Any]) -> list[Any]:
        """One raw event in (or its JSON form); zero or more events out.
        Never raises: what cannot be analysed is counted in `stats`."""
        st = self._stats
        if self._closed:
            st["skipped.after_close"] += 1
            return []
        if type(event) is dict:
            try:
                event = from_json(event)
            except EventDecodeError:
                st["skipped.malformed_event"] += 1
                return []
        elif not isinstance(event, RawEvent):
            st["skipped.malformed_event"] += 1
            return []
        try:
            evs = self._first.feed(event)
            for s in self._rest:
                if not evs:
                    return evs
                if len(evs) == 1:
                    evs = s.feed(evs[0])
                else:
                    nxt: list[Any] = []
                    for e in evs:
                        nxt.extend(s.feed(e))
                    evs = nxt
            return evs
        except Exception:
            st["errors.internal"] += 1
            return []

    def close(self) -> list[Any]:
        """End of input: flush pending exchanges (marked incomplete)."""
        if self._closed:
            return []
        self._closed = True
        out: list[Any] = []
        stages = self._stages
        for i, s in enumerate(stages):
            try:
                evs = s.close()
                for nxt in stages[i + 1:]:
                    acc: list[Any] = []
                    for e in evs:
                        acc.extend(nxt.feed(e))
                    evs = acc
                out.extend(evs)
            except Exception:
                self._stats["errors.internal"] += 1
        return out

    @property
    def stats(self) -> dict[str, int]:
        stats = dict(self._stats)
        first = self._first
        if isinstance(first, StreamReassembler) and first.tls_events:
            # counted as plain integers on the hot path
            stats["events.ssl"] = first.tls_events
            stats["bytes.ssl"] = first.tls_bytes
        return stats
