"""The analysis Pipeline: raw capture events in, ``http``/``llm_call`` out."""
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
        self._closed = False

    def feed(self, event: Any) -> list[Event]:
        """One raw event in; zero or more output events out.  Never raises."""
        st = self._stats
        st["events.in"] += 1
        if self._closed:
            st["skipped.after_close"] += 1
            return []
        try:
            stages = self._stages
            evs = stages[0].feed(event)
            for s in stages[1:]:
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
