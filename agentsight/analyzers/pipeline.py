"""The analysis Pipeline: raw capture events in, ``http``/``llm_call`` out.

Output events (JSON-serialisable dicts; every one has ``type`` and ``ts``):

* ``exec``, ``exit``, ``fork``, ``open``: passed through unchanged.
* ``http`` (an exchange that is not an LLM call): ``method``, ``host``, ``path``
  (with the query string, redacted), ``status`` (None if no response),
  ``request_size``/``response_size`` (body bytes on the wire), ``started_ns``,
  ``ended_ns``, ``pid``, ``tid``, ``comm``, ``conn``, ``side`` ("client", or
  "server" when the traced process answered the request).
* ``llm_call``: ``provider`` (anthropic|openai|gemini|unknown), ``api``
  (messages, chat.completions, responses, completions, embeddings,
  generateContent, streamGenerateContent), ``model`` (as requested), ``stream``,
  ``status``, ``method``, ``host``, ``path``, ``request`` (parsed JSON body),
  ``request_headers``, ``response_headers``, ``response`` = {``text``,
  ``tool_calls`` [{``id``, ``name``, ``arguments``}], ``stop_reason``, and when
  known ``thinking``, ``model`` (as served), ``id``}, ``usage`` (``input_tokens``,
  ``output_tokens``, and when reported ``cache_read_input_tokens``,
  ``cache_creation_input_tokens``, ``reasoning_tokens``, ``total_tokens``),
  ``started_ns``, ``first_token_ns`` (streams; None otherwise), ``ended_ns``,
  ``pid``, ``tid``, ``comm``, ``conn``, ``side``; ``error`` {status, type, code,
  message} when the API returned an error or the connection failed.

Both carry ``incomplete: True`` and ``incomplete_reason`` (process_exit,
truncated, gap, malformed_http, connection_closed, end_of_capture,
internal_error) when the exchange was not seen whole.  ``ts`` is ``ended_ns``.
"""
from __future__ import annotations

from typing import Any, Mapping

from .base import Analyzer, Event, Stats
from .http1 import Http1Parser
from .llm import LlmAnalyzer
from .reassembly import StreamReassembler
from .redact import Redactor


class Pipeline:
    """Sans-I/O: feed raw events (dicts, see docs/events.md), get output events.

    ``redact`` (default True) replaces API keys, tokens and cookies with
    ``"[REDACTED]"``.  ``provider_hosts`` maps a host (``"host"`` or
    ``"host:port"``) to a provider name (``"anthropic"``, ``"openai"``,
    ``"gemini"``) for endpoints that are not the provider's own, which are
    otherwise reported as provider ``"unknown"``.
    """

    def __init__(self, redact: bool = True, *,
                 provider_hosts: Mapping[str, str] | None = None) -> None:
        self._stats = Stats()
        st = self._stats
        stages: list[Analyzer] = [StreamReassembler(st), Http1Parser(st),
                                  LlmAnalyzer(st, provider_hosts)]
        if redact:
            stages.append(Redactor(st))
        self._stages = stages
        self._first = stages[0]
        self._rest = tuple(stages[1:])
        self._closed = False

    def feed(self, event: Any) -> list[Event]:
        """One raw event in; zero or more output events out.  Never raises."""
        st = self._stats
        st["events.in"] += 1
        if self._closed:
            st["skipped.after_close"] += 1
            return []
        try:
            evs = self._first.feed(event)
            for s in self._rest:
                if not evs:
                    return evs
                if len(evs) == 1:
                    evs = s.feed(evs[0])
                else:
                    nxt: list[Event] = []
                    for e in evs:
                        nxt.extend(s.feed(e))
                    evs = nxt
            st["events.out"] += len(evs)
            return evs
        except Exception:
            st["errors.internal"] += 1
            return []

    def close(self) -> list[Event]:
        """End of input: flush pending exchanges (marked incomplete)."""
        if self._closed:
            return []
        self._closed = True
        out: list[Event] = []
        stages = self._stages
        for i, s in enumerate(stages):
            try:
                evs = s.close()
                for nxt in stages[i + 1:]:
                    acc: list[Event] = []
                    for e in evs:
                        acc.extend(nxt.feed(e))
                    evs = acc
                out.extend(evs)
            except Exception:
                self._stats["errors.internal"] += 1
        self._stats["events.out"] += len(out)
        return out

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._stats)
