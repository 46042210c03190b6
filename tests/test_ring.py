"""The ring buffer reader (agentsight/bpf/ring.py) on memory laid out as the
kernel lays out a BPF ring buffer: records with BUSY and DISCARD bits,
8-byte alignment, a record wrapping around the end of the data area, and a
batch limit. Captures through real rings are in test_capture_*.py."""
from __future__ import annotations

import mmap
import struct

from agentsight.bpf.ring import _Ring

PAGE = mmap.PAGESIZE
SIZE = 4096
BUSY, DISCARD = 1 << 31, 1 << 30


class FakeRing:
    """A producer writing records the way kernel/bpf/ringbuf.c does."""

    def __init__(self) -> None:
        self.consumer = mmap.mmap(-1, PAGE)
        self.data = mmap.mmap(-1, PAGE + 2 * SIZE)
        self.prod = 0
        self.wrapped = 0  # records that run past the end of the data area
        self.ring = _Ring(self.consumer, self.data, SIZE)

    def _write(self, pos: int, b: bytes) -> None:
        for i, byte in enumerate(b):  # the data area is mapped twice: both copies
            at = (pos + i) % SIZE
            self.data[PAGE + at] = byte
            self.data[PAGE + SIZE + at] = byte

    def put(self, payload: bytes, flags: int = 0) -> int:
        """Reserves and writes a record; its position."""
        pos = self.prod
        self.wrapped += pos % SIZE + 8 + len(payload) > SIZE
        self._write(pos, struct.pack("<II", len(payload) | flags, 0) + payload)
        self.prod += (len(payload) + 8 + 7) & ~7
        self.data[0:8] = struct.pack("<Q", self.prod)
        return pos

    def commit(self, pos: int, flags: int = 0) -> None:
        (length,) = struct.unpack_from("<I", self.data, PAGE + pos % SIZE)
        self._write(pos, struct.pack("<I", (length & ~BUSY) | flags))

    @property
    def consumed(self) -> int:
        return struct.unpack_from("<Q", self.consumer, 0)[0]

    def read(self, limit: int = 1000) -> list[bytes]:
        out: list[bytes] = []
        self.ring.read(out, limit)
        return out


def test_records_come_out_in_order_and_their_space_is_given_back():
    r = FakeRing()
    for n in (1, 7, 8, 9, 100):
        r.put(bytes([n]) * n)
    assert r.read() == [bytes([n]) * n for n in (1, 7, 8, 9, 100)]
    assert r.consumed == r.prod
    assert r.read() == []


def test_a_busy_record_stops_the_drain_until_it_is_committed():
    r = FakeRing()
    r.put(b"first")
    busy = r.put(b"second", BUSY)
    r.put(b"third")
    assert r.read() == [b"first"]
    assert r.consumed == busy  # nothing past the busy record is taken
    r.commit(busy)
    assert r.read() == [b"second", b"third"]
    assert r.consumed == r.prod


def test_discarded_records_are_skipped():
    r = FakeRing()
    r.put(b"kept")
    pos = r.put(b"dropped", BUSY)
    r.commit(pos, DISCARD)
    r.put(b"also kept")
    assert r.read() == [b"kept", b"also kept"]
    assert r.consumed == r.prod


def test_a_record_wrapping_around_the_end_reads_whole():
    r = FakeRing()
    payloads = [bytes([i % 251]) * (300 + i) for i in range(40)]  # about three laps
    got = []
    for p in payloads:
        r.put(p)
        got += r.read()
    assert got == payloads
    assert r.wrapped >= 2  # read across the end, through the second mapping


def test_the_batch_limit_leaves_the_rest_for_the_next_drain():
    r = FakeRing()
    for i in range(10):
        r.put(b"%d" % i)
    assert r.read(limit=4) == [b"0", b"1", b"2", b"3"]
    assert r.read(limit=100) == [b"%d" % i for i in range(4, 10)]
    assert r.consumed == r.prod


def test_a_reader_without_rings_waits_instead_of_spinning():
    import time

    from agentsight.bpf.ring import RingReader

    reader = RingReader()
    t = time.monotonic()
    assert reader.poll(50) == []
    assert time.monotonic() - t >= 0.045
    assert reader.drain() == []
    reader.close()
