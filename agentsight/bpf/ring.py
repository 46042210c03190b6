"""Draining the BPF ring buffers of one or more objects."""
from __future__ import annotations

from ..errors import AgentsightError
from .libbpf import ffi, lib
from .object import BpfObject


# Records taken per drain at most: a backlog is worked off in bounded
# batches rather than copied whole into memory first.
MAX_BATCH = 8192


class RingReader:
    """Collects raw records from the ring buffers of one or more objects.

    The C callback only copies the record out; decoding happens in batches
    after the poll returns, so a bad record can never make libbpf drop the
    ones behind it (a callback that returns an error loses its record).
    """

    def __init__(self) -> None:
        self._rb = ffi.NULL
        self._batch: list[bytes] = []
        self._full = False
        self.callback_errors = 0
        batch = self._batch
        append = batch.append
        buffer = ffi.buffer

        def on_record(_ctx, data, size):
            append(buffer(data, size)[:])
            # Copied already: libbpf has moved past this record, so stopping
            # the drain here loses nothing.
            return -1 if len(batch) >= MAX_BATCH else 0

        def on_error(_exc, _value, _tb):
            self.callback_errors += 1
            return 0

        self._callback = ffi.callback("int(void *, void *, size_t)", on_record, onerror=on_error)

    def add(self, obj: BpfObject, ring: str = "events") -> None:
        fd = obj.map_fd(ring)
        libbpf = lib()
        if self._rb == ffi.NULL:
            rb = libbpf.ring_buffer__new(fd, self._callback, ffi.NULL, ffi.NULL)
            if rb == ffi.NULL:
                raise AgentsightError(f"cannot open the ring buffer of {obj.name}: errno {ffi.errno}")
            self._rb = rb
        elif libbpf.ring_buffer__add(self._rb, fd, self._callback, ffi.NULL) != 0:
            raise AgentsightError(f"cannot add the ring buffer of {obj.name}: errno {ffi.errno}")

    def poll(self, timeout_ms: int) -> list[bytes]:
        """Wait up to timeout_ms for a wake-up, then drain every ring.

        The programs wake us only when data piles up; the drain after the
        wait picks up whatever arrived without a wake-up.
        """
        libbpf = lib()
        if not self._full:  # after a cut-short drain, more is waiting already
            libbpf.ring_buffer__poll(self._rb, timeout_ms)
        if len(self._batch) < MAX_BATCH:
            libbpf.ring_buffer__consume(self._rb)
        self._full = len(self._batch) >= MAX_BATCH
        return self.take()

    def drain(self) -> list[bytes]:
        """Everything left, however many batches that takes."""
        records = []
        while True:
            lib().ring_buffer__consume(self._rb)
            full = len(self._batch) >= MAX_BATCH
            records += self.take()
            if not full:
                return records

    def take(self) -> list[bytes]:
        batch = self._batch[:]
        self._batch.clear()
        return batch

    def close(self) -> None:
        if self._rb != ffi.NULL:
            lib().ring_buffer__free(self._rb)
            self._rb = ffi.NULL
