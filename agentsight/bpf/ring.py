"""Draining the BPF ring buffers of one or more objects.

The rings are read through their memory maps, as libbpf's ring_buffer__consume
does, but without a C-to-Python callback per record: a record costs a few
reads of shared memory and one copy. Layout (the kernel's, see
kernel/bpf/ringbuf.c): the first page holds the consumer position, which
we write; then, read-only, a page with the producer position and the data
area, mapped twice in a row so that a record wrapping around the end reads
as one piece. Each record starts with an 8-byte header: its length, with
a BUSY bit while the producer is still writing it and a DISCARD bit if
it was given up, and records are 8-byte aligned.

Positions and lengths are read and written as aligned machine words
(memoryview casts), and x86-64 keeps loads in order with loads and stores
with earlier loads, which is all the acquire/release the protocol needs.
The prebuilt programs are for x86-64 only (see preflight).
"""
from __future__ import annotations

import mmap
import select
import time

from ..errors import AgentsightError
from .object import BpfObject

# Records taken per drain at most: a backlog is worked off in bounded
# batches rather than copied whole into memory first.
MAX_BATCH = 8192

_BUSY = 1 << 31
_DISCARD = 1 << 30
_LENGTH = _DISCARD - 1
_HEADER = 8


class _Ring:
    """One ring buffer: `consumer` is its first page, `data` the producer
    page and the data area (of `size` bytes) mapped twice after it."""

    def __init__(self, consumer: mmap.mmap, data: mmap.mmap, size: int) -> None:
        self._mask = size - 1
        self._base = mmap.PAGESIZE  # where the data area starts in data
        self._consumer = consumer
        self._data = data
        self._views = [memoryview(consumer), memoryview(data)]
        self._cons = self._views[0].cast("Q")
        self._words = self._views[1].cast("I")
        self._prod = self._views[1].cast("Q")
        self._views += [self._cons, self._words, self._prod]

    @classmethod
    def map(cls, fd: int, size: int) -> _Ring:
        """The ring buffer map `fd` (of `size` bytes), mapped into this process."""
        page = mmap.PAGESIZE
        consumer = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            data = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            consumer.close()
            raise
        return cls(consumer, data, size)

    def read(self, out: list[bytes], limit: int) -> None:
        """Appends the committed records to `out`, up to `limit` in all,
        freeing their space as it goes."""
        cons_view, prod_view, words, data = self._cons, self._prod, self._words, self._data
        mask, base = self._mask, self._base
        append = out.append
        n = len(out)
        cons = cons_view[0]
        while n < limit:
            prod = prod_view[0]
            if cons >= prod:
                return
            busy = False
            while cons < prod and n < limit:
                at = base + (cons & mask)
                header = words[at >> 2]
                if header & _BUSY:  # still being written: the next drain takes it
                    busy = True
                    break
                size = header & _LENGTH
                if not header & _DISCARD:
                    start = at + _HEADER
                    append(data[start:start + size])
                    n += 1
                cons += (size + _HEADER + 7) & ~7
            cons_view[0] = cons  # what was read is copied out: its space goes back to the producer
            if busy:
                return

    def close(self) -> None:
        for view in reversed(self._views):
            view.release()
        self._views = []
        self._data.close()
        self._consumer.close()


class RingReader:
    """Collects raw records from the ring buffers of one or more objects.

    Records are copied out as bytes and decoded by the caller in batches,
    so a bad record never holds up the ones behind it.
    """

    def __init__(self) -> None:
        self._rings: list[_Ring] = []
        self._epoll: select.epoll | None = None
        self._full = False

    def add(self, obj: BpfObject, ring: str = "events") -> None:
        fd = obj.map_fd(ring)
        try:
            r = _Ring.map(fd, obj.map_size(ring))
        except OSError as exc:
            raise AgentsightError(f"cannot map the ring buffer {ring} of {obj.name}: {exc.strerror}") from None
        try:
            if self._epoll is None:
                self._epoll = select.epoll()
            self._epoll.register(fd, select.EPOLLIN)
        except OSError as exc:
            r.close()
            raise AgentsightError(f"cannot wait on the ring buffer {ring} of {obj.name}: {exc.strerror}") from None
        self._rings.append(r)

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms for a wake-up, then drain every ring.

        The programs wake us only when data piles up; the drain after the
        wait picks up whatever arrived without a wake-up.
        """
        if not self._full:  # after a cut-short drain, more is waiting already
            if self._epoll is not None:
                self._epoll.poll(timeout_ms / 1000)
            else:  # no ring to wait on: still a wait, not a busy loop
                time.sleep(timeout_ms / 1000)
        batch = self._batch()
        self._full = len(batch) >= MAX_BATCH
        return batch

    def drain(self) -> list[bytes]:
        """Everything left, however many batches that takes."""
        records: list[bytes] = []
        while True:
            batch = self._batch()
            records += batch
            if len(batch) < MAX_BATCH:
                return records

    def _batch(self) -> list[bytes]:
        """What the rings hold now, MAX_BATCH records at most."""
        batch: list[bytes] = []
        for r in self._rings:
            r.read(batch, MAX_BATCH)
        return batch

    def close(self) -> None:
        for r in self._rings:
            r.close()
        self._rings = []
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None
