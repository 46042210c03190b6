"""Live capture as a source of raw events: attach the collectors, drain
their rings, decode, detach."""
from __future__ import annotations

import bisect
import sys
import time

from ..bpf.object import detach_all
from ..bpf.preflight import check_can_trace
from ..bpf.ring import RingReader
from ..events import RawEvent, TlsData
from .base import Collector
from .decode import RecordDecoder

POLL_MS = 100
# Events are handed on this long after they happened, in the order their
# data moved: a thread preempted between its send and the probe at its
# return is reported after the answer another thread already read.
REORDER_NS = 250_000_000


def data_time(ev: RawEvent) -> int:
    """When an event's data moved: a write's plaintext was handed over when
    the call began, everything else is reported when it returns."""
    if type(ev) is TlsData and ev.dir == "send":
        return ev.ts - ev.latency_ns
    return ev.ts


class LiveCapture:
    """The `Source` of a live run (see agentsight.pipeline).

    start() loads and attaches every collector; read() waits up to a poll
    interval and returns what the kernel wrote; stop() detaches so nothing
    new arrives, and finish() returns what was still in the rings."""

    def __init__(self, collectors: list[Collector]):
        self.collectors = collectors
        self.decoder = RecordDecoder()
        self.reader = RingReader()
        self._started = 0.0
        self._detached = False
        self._held: list[RawEvent] = []  # decoded, not yet REORDER_NS old, by data_time
        self._held_at: list[int] = []  # their data_time, computed once

    def start(self) -> str:
        check_can_trace()
        self._started = time.monotonic()
        for collector in self.collectors:
            collector.start()
            for obj in collector.objects:
                if "events" not in obj.borrowed:  # a shared ring is read once
                    self.reader.add(obj)
        return "; ".join(c.describe() for c in self.collectors)

    def read(self, timeout: float) -> list[RawEvent] | None:
        records = self.reader.poll(int(timeout * 1000))
        new = self.decoder.decode(records) if records else []
        new += self.decoder.flush(older_than=RecordDecoder.STALE_SECONDS)
        if new:
            self._hold(new)
        at = self._held_at
        ready = bisect.bisect_left(at, time.time_ns() - REORDER_NS)
        if not ready:
            return []
        out = self._held[:ready]
        del self._held[:ready], at[:ready]
        return out

    def _hold(self, new: list[RawEvent]) -> None:
        """Adds decoded events to those held, in data_time order (ties: in
        the order decoded). Only the held events that came later than the
        earliest new one are sorted again: most batches just follow on."""
        keys = [data_time(e) for e in new]
        held, at = self._held, self._held_at
        start = bisect.bisect_right(at, min(keys))
        keys[:0] = at[start:]
        events = held[start:] + new
        order = sorted(range(len(keys)), key=keys.__getitem__)
        held[start:] = [events[i] for i in order]
        at[start:] = [keys[i] for i in order]

    def stop(self) -> None:
        if not self._detached:
            self._detached = True
            detach_all(obj for collector in self.collectors for obj in collector.objects)

    def finish(self) -> list[RawEvent]:
        self.stop()
        new = self.decoder.decode(self.reader.drain()) + self.decoder.flush()
        if new:
            self._hold(new)
        events, self._held, self._held_at = self._held, [], []
        return events

    def counts(self) -> dict[str, int]:
        return dict(self.decoder.counts)

    def losses(self) -> dict[str, int]:
        """What the capture lost, by cause (only the causes that happened)."""
        totals = {"ring_full_records": 0, "ring_full_bytes": 0, "read_faults": 0, "calls_missed": 0}
        for collector in self.collectors:
            for name, value in collector.kernel_stats().items():
                totals[name] = totals.get(name, 0) + value
        d = self.decoder
        totals["truncated_bytes"] = d.truncated_bytes
        totals["bad_records"] = d.bad_records
        for reason, n in d.bad_reasons.items():
            totals[f"bad_record: {reason}"] = n
        return totals

    def seconds(self) -> float:
        return time.monotonic() - self._started if self._started else 0.0

    def notes(self) -> list[str]:
        """What the collectors want the user to know at the end."""
        out: list[str] = []
        for collector in self.collectors:
            out += getattr(collector, "notes", [])
            if getattr(collector, "hooked_later", 0):
                delays = sorted(collector.hook_delays_ms)  # type: ignore[attr-defined]
                out.append(f"{collector.name}: hooked {collector.hooked_later} more files while running "  # type: ignore[attr-defined]
                           f"({delays[len(delays) // 2]:.1f} ms median from exec or open to hooked)")
            held = getattr(collector, "hold_summary", lambda: None)()
            if held:
                out.append(f"{collector.name}: {held}")
        return out

    def close(self) -> None:
        self.reader.close()
        for collector in self.collectors:
            collector.close()


def print_losses(seconds: float, counts: dict[str, int], losses: dict[str, int], stream=sys.stderr) -> None:
    """The capture part of the summary a command prints when it stops."""
    total = sum(counts.values())
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"
    print(f"agentsight: stopped after {seconds:.1f} s: {total} events ({kinds})", file=stream)
    print(f"agentsight: lost in the ring buffer: {losses.get('ring_full_records', 0)} records "
          f"({losses.get('ring_full_bytes', 0)} bytes of data); truncated: {losses.get('truncated_bytes', 0)} bytes; "
          f"bad records: {losses.get('bad_records', 0)}", file=stream)
    if losses.get("read_faults"):
        print(f"agentsight: {losses['read_faults']} reads of user memory failed (paged out); those bytes are missing",
              file=stream)
    if losses.get("calls_missed"):
        print(f"agentsight: {losses['calls_missed']} TLS calls were missed: the kernel had no memory to note their "
              "start", file=stream)
    if losses.get("unmatched_records"):
        print(f"agentsight: {losses['unmatched_records']} TLS records seen at the AEAD layer were dropped: their "
              "connection or record type was not found", file=stream)
    for key, n in sorted(losses.items()):
        if key.startswith("bad_record: "):
            print(f"agentsight:   {key.replace('bad_record: ', 'bad record: ')}: {n}", file=stream)
