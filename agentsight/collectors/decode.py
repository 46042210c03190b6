"""Raw ring-buffer records -> typed events (agentsight.events).

This is the hot path: one struct unpack per record, comms decoded once and
cached, SSL calls larger than one record merged back into one event, their
payload kept as bytes. Nothing here raises on a bad record: it is counted.
"""
from __future__ import annotations

import posixpath
import socket
import time
from collections import Counter

from ..events import Connect, Exec, Exit, FileOp, Fork, Open, RawEvent, TlsData
from .records import (
    RecordError,
    EVENT_EXEC,
    EVENT_EXIT,
    EVENT_FORK,
    EVENT_OPEN,
    EVENT_CONNECT,
    EVENT_FILE,
    EVENT_SSL,
    FAST,
    FILE_OPS,
    KIND_OFFSET,
    SSL_DIRECTIONS,
    SSL_FUNCTIONS,
)


def monotonic_to_unix_offset() -> int:
    """Nanoseconds to add to CLOCK_MONOTONIC (bpf_ktime_get_ns) for Unix time."""
    before = time.monotonic_ns()
    wall = time.time_ns()
    after = time.monotonic_ns()
    return wall - (before + after) // 2


def _components_to_path(components: bytes, truncated: int) -> str:
    """Components resolved in the kernel, leaf first -> an absolute path.

    A path whose walk did not reach the root starts with "…/"."""
    parts = components.split(b"\0")
    if parts and parts[-1] == b"":
        parts.pop()
    parts.reverse()
    path = "/" + "/".join(p.decode("utf-8", "replace") for p in parts)
    return "…" + path if truncated else path


def _join(directory: bytes, path: str) -> str | None:
    if path.startswith("/"):
        return posixpath.normpath(path)
    if not directory:
        return None
    return posixpath.normpath(posixpath.join(_components_to_path(directory, 0), path))


def _decode_exit_status(status: int) -> tuple[int | None, int | None, bool]:
    sig = status & 0x7F
    if sig:
        return None, sig, bool(status & 0x80)
    return (status >> 8) & 0xFF, None, False


class _PendingCall:
    __slots__ = ("event", "parts", "received", "expected", "since")

    def __init__(self, event: TlsData, data: bytes, expected: int):
        self.event = event
        self.parts = [data]
        self.received = len(data)
        self.expected = expected
        self.since = time.monotonic()


class RecordDecoder:
    """Decodes batches of raw records; counts what it could not decode.

    counts: events emitted per type. bad_records: records that were too
    short, of an unknown kind or out of sequence. truncated_bytes: SSL
    bytes not captured (over the per-call limit, or cut by a full ring).
    """

    STALE_SECONDS = 2.0

    def __init__(self, clock_offset_ns: int | None = None):
        self.clock_offset_ns = monotonic_to_unix_offset() if clock_offset_ns is None else clock_offset_ns
        self._counts: Counter[str] = Counter()  # but for SSL calls, counted apart: they are most of the stream
        self.ssl_count = 0
        self.bad_records = 0
        self.bad_reasons: Counter[str] = Counter()
        self.truncated_bytes = 0
        self._comms: dict[bytes, str] = {}
        self._pending: dict[int, _PendingCall] = {}
        self._handlers = {
            EVENT_SSL: self._ssl,
            EVENT_EXEC: self._exec,
            EVENT_EXIT: self._exit,
            EVENT_FORK: self._fork,
            EVENT_OPEN: self._open,
            EVENT_FILE: self._file,
            EVENT_CONNECT: self._connect,
        }

    def decode(self, records: list[bytes]) -> list[RawEvent]:
        out: list[RawEvent] = []
        handlers = self._handlers
        for record in records:
            try:
                handler = handlers[record[KIND_OFFSET]]
            except (KeyError, IndexError):
                self._bad("unknown kind" if len(record) > KIND_OFFSET else "short record")
                continue
            try:
                handler(record, out)
            except Exception as exc:  # a malformed record must not stop the stream
                self._bad(f"{type(exc).__name__}: {exc}")
        return out

    def flush(self, older_than: float | None = None) -> list[RawEvent]:
        """Emit SSL calls still waiting for pieces (all, or those pending longer
        than `older_than` seconds); their missing bytes count as truncated."""
        if not self._pending:
            return []
        now = time.monotonic()
        out: list[RawEvent] = []
        for tid in list(self._pending):
            pending = self._pending[tid]
            if older_than is None or now - pending.since >= older_than:
                del self._pending[tid]
                self._finish(pending, out)
        return out

    def _bad(self, reason: str) -> None:
        self.bad_records += 1
        self.bad_reasons[reason] += 1

    def _comm(self, raw: bytes) -> str:
        comm = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        if len(self._comms) < 65536:
            self._comms[raw] = comm
        return comm

    def _task(self, kind: str, fields: tuple) -> tuple[int, int, int, str, int]:
        """(ts, pid, tid, comm, uid) of a record's header."""
        comm = self._comms.get(fields[5])
        if comm is None:
            comm = self._comm(fields[5])
        self._counts[kind] += 1
        return fields[0] + self.clock_offset_ns, fields[1], fields[2], comm, fields[3]

    @property
    def counts(self) -> Counter[str]:
        """Events emitted, per type."""
        counts = self._counts.copy()
        if self.ssl_count:
            counts["ssl"] += self.ssl_count
        return counts

    # Field positions follow the layouts in agentsight/collectors/records.py.
    # SSL records, most of the stream, are unpacked here without FastLayout.decode's
    # generic loop over trailing fields: theirs is one, the data.
    _SSL = FAST[EVENT_SSL]
    assert _SSL.tails == (("data", "data_len"),)
    _ssl_fixed = _SSL.struct.unpack_from
    _ssl_size = _SSL.size

    def _ssl(self, record: bytes, out: list) -> None:
        (ts, pid, tid, uid, kind, comm, conn, latency, ret, length, offset, data_len,
         truncated, gap, fn, direction, last) = self._ssl_fixed(record)
        start = self._ssl_size
        end = start + data_len
        if end > len(record):
            raise RecordError(f"record of {len(record)} bytes announces {end}")
        data = record[start:end]
        if offset:
            pending = self._pending.get(tid)
            if pending is None or pending.received != offset or pending.event.conn != conn:
                self._bad("ssl piece without its start")
                return
            pending.parts.append(data)
            pending.received += len(data)
            if last:
                del self._pending[tid]
                self._finish(pending, out)
            return
        previous = self._pending.pop(tid, None)
        if previous is not None:
            self._finish(previous, out)
        name = self._comms.get(comm)
        if name is None:
            name = self._comm(comm)
        self.ssl_count += 1
        ev = TlsData(ts + self.clock_offset_ns, pid, tid, name, uid, SSL_FUNCTIONS[fn], SSL_DIRECTIONS[direction],
                     conn, length, data, truncated, gap, latency, ret)
        if last:
            self.truncated_bytes += truncated
            out.append(ev)
        else:
            self._pending[tid] = _PendingCall(ev, data, length - truncated)

    def _finish(self, pending: _PendingCall, out: list) -> None:
        ev = pending.event
        missing = pending.expected - pending.received
        ev.truncated += missing
        self.truncated_bytes += ev.truncated
        ev.data = b"".join(pending.parts)
        out.append(ev)

    _EXEC = FAST[EVENT_EXEC]

    def _exec(self, record: bytes, out: list) -> None:
        f = self._EXEC.decode(record)
        (ppid, _, _, args_truncated, _, cwd_truncated, filename, args, cwd) = f[6:]
        argv = args.split(b"\0")
        if argv and argv[-1] == b"":
            argv.pop()
        out.append(Exec(*self._task("exec", f[:6]), ppid, filename.decode("utf-8", "replace"),
                        [a.decode("utf-8", "replace") for a in argv], bool(args_truncated),
                        _components_to_path(cwd, cwd_truncated)))

    _EXIT = FAST[EVENT_EXIT]

    def _exit(self, record: bytes, out: list) -> None:
        f = self._EXIT.decode(record)
        code, sig, core = _decode_exit_status(f[7])
        out.append(Exit(*self._task("exit", f[:6]), code, sig, core, f[6], f[8]))

    _FORK = FAST[EVENT_FORK]

    def _fork(self, record: bytes, out: list) -> None:
        f = self._FORK.decode(record)
        out.append(Fork(*self._task("fork", f[:6]), f[6]))

    _OPEN = FAST[EVENT_OPEN]

    def _open(self, record: bytes, out: list) -> None:
        f = self._OPEN.decode(record)
        (ret, flags, _, _, resolved_truncated, path, resolved) = f[6:]
        out.append(Open(*self._task("open", f[:6]), path.decode("utf-8", "replace"),
                        _components_to_path(resolved, resolved_truncated) if resolved else None, flags, ret))

    _FILE = FAST[EVENT_FILE]

    def _file(self, record: bytes, out: list) -> None:
        f = self._FILE.decode(record)
        (ret, op, flags, _, _, _, _, path, path2, directory, directory2) = f[6:]
        name = FILE_OPS.get(op)
        if name is None:
            self._bad(f"unknown file operation {op}")
            return
        text = path.decode("utf-8", "replace")
        ev = FileOp(*self._task(name, f[:6]), name, text, _join(directory, text), flags=flags, ret=ret)
        if name == "rename":
            ev.new_path = path2.decode("utf-8", "replace")
            ev.new_resolved = _join(directory2, ev.new_path)
        out.append(ev)

    _CONNECT = FAST[EVENT_CONNECT]

    def _connect(self, record: bytes, out: list) -> None:
        f = self._CONNECT.decode(record)
        (ret, family, port, addr) = f[6:]
        if family == socket.AF_INET6:
            name, text = "ipv6", socket.inet_ntop(socket.AF_INET6, addr)
        else:
            name, text = "ipv4", socket.inet_ntop(socket.AF_INET, addr[:4])
        out.append(Connect(*self._task("connect", f[:6]), name, text, port, ret))
