"""LiveCapture hands events on in the order their data moved, once they are
REORDER_NS old: a write is placed at the start of its call, so it comes
before an answer that another thread read while the writer waited for its
return probe. No BPF here: the ring and the decoder are stand-ins."""
from __future__ import annotations

import random

from agentsight.collectors import live
from agentsight.collectors.live import REORDER_NS, LiveCapture, data_time
from agentsight.events import Open, TlsData


class Batches:
    """Stands in for the ring reader and the decoder: each poll returns the next batch."""

    def __init__(self, batches):
        self.batches = list(batches)

    def poll(self, timeout_ms):
        return self.batches.pop(0) if self.batches else []

    def drain(self):
        return []

    def decode(self, records):
        return list(records)

    def flush(self, older_than=None):
        return []


def tls(ts, direction, latency, n):
    return TlsData(ts, 7, 7, "agent", 0, "SSL_write" if direction == "send" else "SSL_read", direction, 1,
                   1, bytes([n % 256]), 0, 0, latency, 1)


def capture(batches):
    cap = LiveCapture([])
    cap.reader = cap.decoder = Batches(batches)
    return cap


def test_events_come_out_by_data_time_once_old_enough(monkeypatch):
    now = [10 * REORDER_NS]
    monkeypatch.setattr(live.time, "time_ns", lambda: now[0])
    base = 9 * REORDER_NS
    # A write that waited 5 ms for its return probe, decoded after the answer read meanwhile.
    answer = tls(base + 2_000_000, "recv", 1_000, 1)
    request = tls(base + 6_000_000, "send", 5_000_000, 0)
    opened = Open(base + 5_000_000, 7, 7, "agent", 0, "/etc/hosts", "/etc/hosts", 0, 3)
    cap = capture([[answer], [request, opened], []])
    assert cap.read(0.1) == []  # nothing is REORDER_NS old yet
    assert cap.read(0.1) == []
    now[0] = base + 4_000_000 + REORDER_NS  # the request and the answer are old enough, not the open
    assert cap.read(0.1) == [request, answer]
    assert cap.finish() == [opened]


def test_any_arrival_order_is_sorted_stably_and_nothing_is_lost(monkeypatch):
    """Batches as several CPUs' rings deliver them: each nearly sorted,
    later batches reaching back into what is held."""
    rnd = random.Random(5)
    now = [0]
    monkeypatch.setattr(live.time, "time_ns", lambda: now[0])
    events = []
    for i in range(5000):
        ts = 1_000_000 * i + rnd.randrange(-3_000_000, 3_000_000)
        events.append(tls(ts, rnd.choice(("send", "recv")), rnd.randrange(0, 2_000_000), i)
                      if i % 3 else Open(ts, 7, 7, "agent", 0, f"/f{i}", f"/f{i}", 0, 3))
    arrival = sorted(events, key=lambda e: e.ts + rnd.randrange(0, 20_000_000))
    batches = [arrival[i:i + 100] for i in range(0, len(arrival), 100)]
    cap = capture(batches)
    out = []
    for step in range(len(batches)):
        now[0] = 100_000_000 * step
        got = cap.read(0.1)
        assert all(data_time(e) < now[0] - REORDER_NS for e in got)
        out += got
    out += cap.finish()
    assert len(out) == len(events) and {id(e) for e in out} == {id(e) for e in events}
    keys = [data_time(e) for e in out]
    assert keys == sorted(keys)
    # ties keep the order they arrived in
    position = {id(e): i for i, e in enumerate(arrival)}
    for a, b in zip(out, out[1:]):
        if data_time(a) == data_time(b):
            assert position[id(a)] < position[id(b)]
