"""One run of agentsight: a source of raw events -> analysis -> correlation
-> redaction -> sinks. Every command is one of these with other parts.

    source      LiveCapture (the kernel, through the collectors) or
                RecordedEvents (a file written earlier)
    analysis    agentsight.analyzers.Analysis: HTTP exchanges, LLM calls
    correlation agentsight.analyzers.correlate.Correlator: links, unexplained
    redaction   agentsight.analyzers.Redactor: what sinks get has no secrets
    sinks       JSON lines, the session file, the live status line, ...

Each sink gets every event of the kinds it wants, in capture order: the raw
events, and after each the events the analysis and correlation made of it.
The pipeline owns no signal handlers and no threads; whoever runs it calls
stop() (from a signal handler, another thread, or a `should_stop` check).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from .analyzers.analysis import Analysis
from .analyzers.correlate import Correlator
from .analyzers.redact import Redactor
from .events import RawEvent
from .sinks.base import Outcome, Sink
from .sinks.jsonl import ReaderGone

POLL_SECONDS = 0.1


class Source(Protocol):
    def start(self) -> str:
        """Begins; returns what was set up, for the `ready` line."""

    def read(self, timeout: float) -> list[RawEvent] | None:
        """The next events (possibly none, after waiting up to `timeout`);
        None when the source has ended."""

    def stop(self) -> None:
        """Nothing new after this (detach)."""

    def finish(self) -> list[RawEvent]:
        """What was still in flight when it stopped."""

    def counts(self) -> dict[str, int]: ...

    def losses(self) -> dict[str, int]: ...

    def seconds(self) -> float: ...

    def notes(self) -> list[str]: ...

    def close(self) -> None: ...


class Pipeline:
    """`analysis`/`correlator` None: raw events go to the sinks as they are
    (`ssl`, `process`). `redact` False keeps secrets (--no-redact)."""

    def __init__(self, source: Source, sinks: Sequence[Sink], *, analysis: Analysis | None = None,
                 correlator: Correlator | None = None, redact: bool = True,
                 describe_end: Callable[[], dict[str, Any]] | None = None):
        """`describe_end`: what the run's owner adds to the outcome the sinks
        get (e.g. the recorded command's exit status)."""
        self.source = source
        self.describe_end = describe_end
        self.sinks = list(sinks)
        # The kinds some sink takes: only those are redacted and handed on
        # (None: all; with no sinks, the caller of batches() takes all).
        kinds = [sink.kinds for sink in self.sinks]
        self._wanted: frozenset[str] | None = (
            None if not kinds or any(k is None for k in kinds) else frozenset().union(*kinds))  # type: ignore[arg-type]
        self.analysis = analysis
        self.correlator = correlator
        self.redactor = Redactor() if redact else None
        self._stopping = False
        self.stop_reason: str | None = None
        self._reader_gone = False
        self._source_said: tuple[float, dict[str, int], dict[str, int]] | None = None
        self._started: str | None = None

    def start(self) -> str:
        """Starts the source (attaches every probe); what it set up. Called
        by batches() when nobody did before."""
        if self._started is None:
            self._started = self.source.start()
        return self._started

    def stop(self, reason: str | None = None) -> None:
        """Ends the run after the current batch (safe from a signal handler)."""
        if reason and self.stop_reason is None:
            self.stop_reason = reason
        self._stopping = True

    # -- running --------------------------------------------------------------

    def batches(self, ready: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
                duration: float | None = None) -> Iterator[list[Any]]:
        """The run as a generator of the batches the sinks would get; the
        source is started first and always closed at the end."""
        source = self.source
        try:
            description = self.start()
            if ready is not None:
                ready(description)
            deadline = time.monotonic() + duration if duration else None
            while not self._stopping:
                raw = source.read(POLL_SECONDS)
                if raw is None:
                    break
                if raw:
                    yield self._process(raw)
                else:
                    yield []
                if should_stop is not None and should_stop():
                    self.stop()
                if deadline is not None and time.monotonic() >= deadline:
                    break
            source.stop()
            tail = self._process(source.finish())
            tail += self._close_analysis()
            self._snapshot()
            yield tail
        finally:
            if self._source_said is None:
                self._snapshot()
            source.close()

    def _snapshot(self) -> None:
        """What the source counted, taken before it closes (its counters go with it)."""
        source = self.source
        self._source_said = (source.seconds(), source.counts(), {k: v for k, v in source.losses().items() if v})

    def run(self, ready: Callable[[str], None] | None = None, should_stop: Callable[[], bool] | None = None,
            duration: float | None = None) -> Outcome:
        """Runs until the source ends, stop(), `should_stop` returns a
        reason, or `duration` seconds; closes every sink; the outcome."""
        error: BaseException | None = None
        try:
            for batch in self.batches(ready, should_stop, duration):
                self._deliver(batch)
        except ReaderGone:
            self._reader_gone = True
            self.stop_reason = self.stop_reason or "the reader of the output went away"
        except BaseException as exc:  # the sinks still close, then it goes on up
            error = exc
        outcome = self.outcome()
        for sink in self.sinks:
            try:
                sink.close(outcome)
            except ReaderGone:
                pass
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error
        return outcome

    def _deliver(self, batch: list[Any]) -> None:
        now = time.monotonic()
        for sink in self.sinks:
            kinds = sink.kinds
            if batch:
                sink.write(batch if kinds is None else [e for e in batch if e.kind in kinds])
            sink.tick(now)

    def _handed_on(self, events: list[Any]) -> list[Any]:
        wanted, redactor = self._wanted, self.redactor
        if wanted is not None:
            events = [e for e in events if e.kind in wanted]
        return [redactor.view(e) for e in events] if redactor is not None else events

    def _process(self, raw: list[RawEvent]) -> list[Any]:
        analysis, correlator = self.analysis, self.correlator
        if analysis is None and correlator is None:
            return self._handed_on(raw)
        out: list[Any] = []
        append = out.append
        analyse = analysis.feed if analysis is not None else None
        correlate = correlator.feed if correlator is not None else None
        for ev in raw:
            append(ev)
            made = analyse(ev) if analyse is not None else []
            if made:  # what the analysis passes through (process events) is in `out` already
                made = [e for e in made if not isinstance(e, RawEvent)]
                out += made
            if correlate is not None:
                linked = correlate(ev)
                for e in made:
                    linked += correlate(e)
                if linked:
                    out += linked
        return self._handed_on(out)

    def _close_analysis(self) -> list[Any]:
        made = [e for e in self.analysis.close() if not isinstance(e, RawEvent)] if self.analysis is not None else []
        if self.correlator is not None:
            linked = []
            for e in made:
                linked += self.correlator.feed(e)
            made += linked + self.correlator.close()
        return self._handed_on(made)

    def outcome(self) -> Outcome:
        if self._source_said is None:
            self._snapshot()
        assert self._source_said is not None
        seconds, counts, source_losses = self._source_said
        losses = dict(source_losses)
        for sink in self.sinks:
            for k, v in sink.losses().items():
                if v:
                    losses[f"{type(sink).__name__}: {k}"] = v
        if self.redactor is not None and self.redactor.errors:
            losses["redaction_failures (payload dropped)"] = self.redactor.errors
        stats = dict(self.analysis.stats) if self.analysis is not None else {}
        if self.correlator is not None:
            stats.update({k: v for k, v in self.correlator.stats.items() if v})
        status = "complete" if self.stop_reason is None else f"stopped: {self.stop_reason}"
        return Outcome(status=status, seconds=seconds, counts=counts, losses=losses,
                       stats=stats, extra=self.describe_end() if self.describe_end is not None else {})
