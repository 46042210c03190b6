"""agentsight: zero-instrumentation observability for AI agents, with eBPF.

Watch the LLM calls, commands and file changes of running processes (needs
root, or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN)::

    import agentsight

    with agentsight.Capture(comm="python3") as capture:
        for event in capture.events():
            if isinstance(event, agentsight.LlmCall):
                print(event.model, event.usage, event.response.text)

Analyse events recorded earlier (`agentsight trace --raw FILE`), no root
needed::

    for event in agentsight.analyze(agentsight.read_events("raw.jsonl")):
        print(event.to_json())

Secrets are masked in what either gives you unless redact=False. Neither
installs signal handlers; stop a capture with `Capture.stop()` (from another
thread or a signal handler of your own) or with `duration`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import AgentsightError
from .events import (
    Connect, Event, EventDecodeError, Exec, Exit, FileKey, FileOp, Fork, HttpExchange, Link, LlmCall, LlmResponse,
    LlmCallRef, Open, ProcessKey, RawEvent, Startup, TlsData, ToolCall, ToolCallRef, ToolResult, Unexplained,
    from_json,
)
from .sinks.base import Outcome

__version__ = "0.1.0"

__all__ = [
    "Capture", "analyze", "read_events", "AgentsightError", "EventDecodeError", "Outcome",
    "Event", "RawEvent", "TlsData", "Exec", "Exit", "Fork", "Open", "FileOp", "Connect",
    "HttpExchange", "LlmCall", "LlmResponse", "ToolCall", "ToolCallRef", "ProcessKey", "FileKey", "Link",
    "Unexplained", "Startup", "ToolResult", "LlmCallRef", "from_json", "__version__",
]

COLLECTORS = ("ssl", "process")


@dataclass(frozen=True)
class _Settings:
    pid: int | None
    comm: str | None
    uid: int | None
    collectors: tuple[str, ...]
    analyze: bool
    redact: bool
    max_capture: int
    ring_size: int
    file_opens: bool


class Capture:
    """A live capture of TLS plaintext and process activity, analysed.

    pid, comm, uid: only these processes (filtered in the kernel); none: all.
    collectors: "ssl" (TLS plaintext), "process" (exec, exit, fork, files,
    connections), or both. analyze: also the HTTP exchanges, LLM calls and
    links between tool calls and what they caused (needs both collectors
    for links). redact: mask API keys, tokens, cookies and passwords.
    duration: stop after this many seconds. max_capture: bytes captured of
    one TLS call at most. ring_size: the kernel ring buffer, a power of two.
    """

    def __init__(self, pid: int | None = None, comm: str | None = None, uid: int | None = None, *,
                 collectors: Iterable[str] = COLLECTORS, analyze: bool = True, redact: bool = True,
                 duration: float | None = None, max_capture: int = 1 << 20, ring_size: int = 8 << 20,
                 file_opens: bool = True) -> None:
        chosen = tuple(collectors)
        unknown = set(chosen) - set(COLLECTORS)
        if unknown or not chosen:
            raise AgentsightError(f"collectors must be some of {COLLECTORS}, not {chosen}", exit_code=2)
        if ring_size < 4096 or ring_size & (ring_size - 1):
            raise AgentsightError(f"ring_size must be a power of two of at least 4096 bytes, not {ring_size}",
                                  exit_code=2)
        if not 0 < max_capture <= 1 << 28:
            raise AgentsightError(f"max_capture must be between 1 and {1 << 28} bytes, not {max_capture}",
                                  exit_code=2)
        self._settings = _Settings(pid, comm, uid, chosen, analyze, redact, max_capture, ring_size, file_opens)
        self.duration = duration
        self._pipeline: Any = None
        self._batches: Iterator[list[Any]] | None = None
        self.outcome: Outcome | None = None

    def _build(self) -> Any:
        from .analyzers import Analysis
        from .analyzers.correlate import Correlator
        from .collectors.base import Filters
        from .collectors.live import LiveCapture
        from .collectors.process import ProcessCollector
        from .collectors.ssl import SslCollector
        from .pipeline import Pipeline

        s = self._settings
        filters = Filters(pid=s.pid, uid=s.uid, comm=s.comm)
        wakeup = min(256 << 10, s.ring_size // 4)
        collectors: list[Any] = []
        process: Any = None
        if "process" in s.collectors:
            process = ProcessCollector(filters, s.ring_size, wakeup, opens=s.file_opens)
            collectors.append(process)
        if "ssl" in s.collectors:
            shared = (lambda: {"events": process.objects[0].map_fd("events")}) if process is not None else None
            collectors.append(SslCollector(filters, s.ring_size, wakeup, s.max_capture, shared_maps=shared,
                                           report=lambda note: None))
        analysis = Analysis() if s.analyze else None
        correlator = Correlator() if s.analyze and process is not None else None
        return Pipeline(LiveCapture(collectors), [], analysis=analysis, correlator=correlator, redact=s.redact)

    def __enter__(self) -> Capture:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> str:
        """Loads and attaches the probes; what was hooked."""
        if self._pipeline is None:
            self._pipeline = self._build()
        description: str = self._pipeline.start()
        return description

    def events(self) -> Iterator[Any]:
        """The events, in capture order, until stop(), `duration` or close()."""
        if self._pipeline is None:
            self.start()
        if self._batches is None:
            self._batches = self._pipeline.batches(duration=self.duration)
        for batch in self._batches:
            yield from batch
        self.outcome = self._pipeline.outcome()

    def stop(self) -> None:
        """Ends events() after what is in flight (safe from a signal handler
        or another thread)."""
        if self._pipeline is not None:
            self._pipeline.stop()

    def close(self) -> None:
        """Detaches every probe; events not read yet are dropped."""
        if self._pipeline is None:
            return
        self._pipeline.stop()
        if self._batches is not None:
            self._batches.close()  # type: ignore[attr-defined]
        else:
            self._pipeline.source.stop()
            self._pipeline.source.close()
        if self.outcome is None:
            self.outcome = self._pipeline.outcome()


def analyze(raw_events: Iterable[RawEvent | dict[str, Any]], *, redact: bool = True,
            correlate: bool = True) -> Iterator[Any]:
    """Raw events (typed, or their JSON form) -> every event in order: each
    raw event, then what the analysis made of it; the links between tool
    calls and activity come at the end. JSON that is not a raw event is
    skipped and counted."""
    from .analyzers import Analysis
    from .analyzers.correlate import Correlator
    from .collectors.recorded import GivenEvents
    from .pipeline import Pipeline

    pipeline = Pipeline(GivenEvents(raw_events), [], analysis=Analysis(),
                        correlator=Correlator() if correlate else None, redact=redact)
    for batch in pipeline.batches():
        yield from batch


def read_events(path: str) -> Iterator[RawEvent]:
    """The raw events of a JSON-lines file written by `ssl`, `process` or
    `trace --raw` ("-": stdin). Lines that are not events are skipped."""
    from .collectors.recorded import RecordedEvents

    source = RecordedEvents(path, progress=False)
    try:
        while True:
            batch = source.read(0)
            if batch is None:
                return
            yield from batch
    finally:
        source.close()
