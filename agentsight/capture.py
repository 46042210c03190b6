"""Running collectors: attach, drain the rings, hand events on, detach."""
from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .bpf.object import detach_all
from .bpf.preflight import check_can_trace
from .bpf.ring import RingReader
from .collectors.base import Collector
from .collectors.decode import RecordDecoder

POLL_MS = 100


@dataclass
class Summary:
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    ring_full_records: int = 0
    ring_full_bytes: int = 0
    truncated_bytes: int = 0
    bad_records: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)
    read_faults: int = 0
    calls_missed: int = 0

    def lines(self) -> list[str]:
        total = sum(self.counts.values())
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items())) or "none"
        out = [
            f"agentsight: stopped after {self.seconds:.1f} s: {total} events ({kinds})",
            f"agentsight: lost in the ring buffer: {self.ring_full_records} records "
            f"({self.ring_full_bytes} bytes of data); truncated: {self.truncated_bytes} bytes; "
            f"bad records: {self.bad_records}",
        ]
        if self.read_faults:
            out.append(f"agentsight: {self.read_faults} reads of user memory failed (paged out); those bytes are missing")
        if self.calls_missed:
            out.append(f"agentsight: {self.calls_missed} TLS calls were missed: the kernel had no memory "
                       "to note their start")
        for reason, n in sorted(self.bad_reasons.items()):
            out.append(f"agentsight:   bad record: {reason}: {n}")
        return out


class Capture:
    """Starts the collectors, then feeds decoded events to `emit` until stop().

    `emit` receives lists of events; it may return False to stop (e.g. the
    reader of stdout went away).
    """

    def __init__(self, collectors: list[Collector], emit: Callable[[list[dict]], bool | None],
                 idle: Callable[[], None] | None = None):
        self.collectors = collectors
        self.emit = emit
        self.idle = idle
        self.decoder = RecordDecoder()
        self.reader = RingReader()
        self._stop = False

    def stop(self, *_args) -> None:
        self._stop = True

    def run(self, duration: float | None = None, ready: Callable[[str], None] | None = None,
            on_signal: Callable | None = None) -> Summary:
        """Runs until stop(), a signal (SIGINT, SIGTERM: stop, unless `on_signal`
        decides), `duration` seconds, or emit returning False."""
        check_can_trace()
        started = time.monotonic()
        # The TLS notice thread must get the interpreter quickly even while
        # this one decodes a large batch (default: every 5 ms).
        sys.setswitchinterval(0.001)
        handler = on_signal or self.stop
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for collector in self.collectors:
                collector.start()
                for obj in collector.objects:
                    if "events" not in obj.borrowed:  # a shared ring is read once
                        self.reader.add(obj)
            if ready:
                ready("; ".join(c.describe() for c in self.collectors))
            deadline = started + duration if duration else None
            decode, emit = self.decoder.decode, self.emit
            while not self._stop:
                records = self.reader.poll(POLL_MS)
                events = decode(records) if records else []
                events += self.decoder.flush(older_than=RecordDecoder.STALE_SECONDS)
                if events and emit(events) is False:
                    break
                if self.idle:
                    self.idle()
                if deadline and time.monotonic() >= deadline:
                    break
            return self._finish(started)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self.reader.close()
            for collector in self.collectors:
                collector.close()

    def _finish(self, started: float) -> Summary:
        # Detach first so nothing new arrives, then take what is left.
        detach_all(obj for collector in self.collectors for obj in collector.objects)
        events = self.decoder.decode(self.reader.drain()) + self.decoder.flush()
        if events:
            self.emit(events)
        summary = Summary(seconds=time.monotonic() - started)
        for collector in self.collectors:
            stats = collector.kernel_stats()
            summary.ring_full_records += stats["ring_full_records"]
            summary.ring_full_bytes += stats["ring_full_bytes"]
            summary.read_faults += stats["read_faults"]
            summary.calls_missed += stats["calls_missed"]
        d = self.decoder
        summary.counts = dict(d.counts)
        summary.truncated_bytes = d.truncated_bytes
        summary.bad_records = d.bad_records + self.reader.callback_errors
        summary.bad_reasons = dict(d.bad_reasons)
        return summary


def print_summary(summary: Summary) -> None:
    for line in summary.lines():
        print(line, file=sys.stderr)
