"""Stage 1: `TlsData` events -> per-connection `StreamData` byte streams.

* keys connections by ``(pid, conn)``;
* decides, from the first bytes, whether a connection carries HTTP/1.x
  (and which side is the client), HTTP/2 (its preface, or a read that is
  whole HTTP/2 frames: a connection first seen in its middle), or
  something else; other connections are counted once in ``stats`` and then
  dropped cheaply. When one direction's first bytes are not HTTP, the
  other direction still gets its say (up to MAX_UNDECIDED bytes held): an
  HTTP/2 client's requests are whole frames even where the responses
  captured first began in the middle of one;
* passes lost byte counts (``gap`` before, ``truncated`` after the data) on
  to the HTTP stage, which owns framing;
* turns the end of a TLS session, an `Exit` of a process, and ``close()``
  into `StreamEnd` for each of its connections.
"""
from __future__ import annotations

import re

from ..events import Exit, TlsData
from .base import ConnKey, Stats, StreamData, StreamEnd
from .http2 import looks_like_frames

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHOD = re.compile(rb"[A-Z][A-Z_-]{0,23}")
_DECIDE_BYTES = 24  # enough to tell a request, a response and the h2 preface
MAX_CONNS = 1 << 16  # connection states kept; the oldest quarter goes beyond that
MAX_UNDECIDED = 256 << 10  # bytes held while one direction waits for the other to decide
MAX_UNDECIDED_READS = 1024  # and reads

# connection states
_UNDECIDED, _HTTP, _DEAD = 0, 1, 2

REQUEST, RESPONSE, HTTP2, OTHER = "request", "response", "http2", "other"


def classify_prefix(b: bytes) -> str | None:
    """What the first bytes of a byte stream are; None: need more bytes."""
    n = len(b)
    if n == 0:
        return None
    if b[:24] == H2_PREFACE[: min(n, 24)]:
        return HTTP2 if n >= 24 else None
    if b[:5] == b"HTTP/"[: min(n, 5)]:
        if n < 5:
            return None
        return RESPONSE
    sp = b.find(b" ", 0, _DECIDE_BYTES + 1)
    if sp > 0:
        return REQUEST if _METHOD.fullmatch(b, 0, sp) else OTHER
    if sp == 0:
        return OTHER
    if n <= _DECIDE_BYTES and _METHOD.fullmatch(b):
        return None
    return OTHER


class _Conn:
    __slots__ = ("state", "swapped", "pending", "first", "protocol", "not_http", "held")

    def __init__(self) -> None:
        self.state = _UNDECIDED
        self.swapped = False  # the traced process answers requests on it
        self.pending: list[StreamData] = []
        self.first = {"send": b"", "recv": b""}
        self.protocol = "http/1.1"
        self.not_http: str | None = None  # the direction whose first bytes were not HTTP
        self.held = 0  # bytes in pending


class StreamReassembler:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.tls_events = 0  # of all, and the bytes they held: kept apart from stats, they change every event
        self.tls_bytes = 0
        self._conns: dict[ConnKey, _Conn] = {}
        self._by_pid: dict[int, set[ConnKey]] = {}

    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is TlsData:
            return self._tls(ev)  # type: ignore[arg-type]
        if t is Exit:
            return self._exit(ev)  # type: ignore[arg-type]
        return [ev]

    def _tls(self, ev: TlsData) -> list[object]:
        stats = self.stats
        self.tls_events += 1
        pid = ev.pid
        d = ev.dir
        if d != "send" and d != "recv":
            if d == "close":
                # The TLS session was freed: both streams have ended.
                stats["ssl.closed"] += 1
                keys = self._by_pid.get(pid)
                if keys is not None:
                    keys.discard((pid, ev.conn))
                return self._close_keys([(pid, ev.conn)], "connection_closed", ev.ts)
            stats["ssl.handshake"] += 1
            return []
        key = (pid, ev.conn)
        c = self._conns.get(key)
        if c is not None and c.state == _DEAD:
            stats["skipped.bytes"] += ev.len
            return []
        data = ev.data
        gap = ev.gap
        trunc = ev.truncated
        if not data and not gap and not trunc:
            return []
        self.tls_bytes += len(data)
        if gap or trunc:
            stats["bytes.lost"] += gap + trunc
        if c is None:
            if len(self._conns) >= MAX_CONNS:
                self._evict()
            c = self._conns[key] = _Conn()
            self._by_pid.setdefault(pid, set()).add(key)
        if c.state == _HTTP:
            return [StreamData(key, "req" if (d == "send") != c.swapped else "resp", data, gap, trunc, ev.ts,
                               pid, ev.tid, ev.comm, ev.conn, "server" if c.swapped else "client", c.protocol)]
        return self._undecided(key, c, ev, d, data, gap, trunc)

    def _undecided(self, key: ConnKey, c: _Conn, ev: TlsData, d: str, data: bytes,
                   gap: int, trunc: int) -> list[object]:
        c.pending.append(StreamData(key, d, data, gap, trunc, ev.ts, ev.pid, ev.tid, ev.comm, ev.conn))
        c.held += len(data)
        if d == c.not_http:  # this direction said no already: the other one decides
            if c.held > MAX_UNDECIDED or len(c.pending) > MAX_UNDECIDED_READS:
                return self._dead(c)
            return []
        first = c.first[d]
        if len(first) < _DECIDE_BYTES:
            first = c.first[d] = first + data[: _DECIDE_BYTES - len(first)]
        kind = classify_prefix(first)
        if kind is None:
            if trunc:  # the next bytes are lost: we will not learn more
                kind = OTHER
            else:
                return []
        if kind == OTHER and looks_like_frames(b"".join(p.data for p in c.pending if p.role == d)):
            kind = HTTP2  # frames without the preface: seen from the middle
        if kind == OTHER:
            if c.not_http is None:
                c.not_http = d
                return []
            return self._dead(c)
        if kind == HTTP2:
            # the client sends the preface; mid-connection the HTTP/2 stage reads who is who from the headers
            c.swapped = d == "recv" and first[:24] == H2_PREFACE
            c.protocol = "h2"
        else:
            # REQUEST on send / RESPONSE on recv: we are the client
            c.swapped = (kind == RESPONSE) == (d == "send")
        c.state = _HTTP
        side = "server" if c.swapped else "client"
        out: list[object] = list(c.pending)
        c.pending = []
        c.first = {}
        for p in out:
            p.role = "req" if (p.role == "send") != c.swapped else "resp"  # type: ignore[attr-defined]
            p.side = side  # type: ignore[attr-defined]
            p.protocol = c.protocol  # type: ignore[attr-defined]
        return out

    def _dead(self, c: _Conn) -> list[object]:
        c.state = _DEAD
        self.stats["skipped.not_http"] += 1
        self.stats["skipped.bytes"] += c.held
        c.pending = []
        c.first = {}
        return []

    def _evict(self) -> None:
        """Forget the oldest connections (a long capture whose processes never exit)."""
        n = len(self._conns) // 4
        for key in list(self._conns)[:n]:
            del self._conns[key]
            keys = self._by_pid.get(key[0])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_pid[key[0]]
        self.stats["ssl.evicted_conns"] += n

    # -- end of connections ----------------------------------------------
    def _exit(self, ev: Exit) -> list[object]:
        # One exit event per process, sent by whichever thread left last.
        keys = self._by_pid.pop(ev.pid, None)
        if not keys:
            return [ev]
        out = self._close_keys(sorted(keys), "process_exit", ev.ts)
        out.append(ev)
        return out

    def _close_keys(self, keys: list[ConnKey], reason: str, ts: int | None) -> list[object]:
        out: list[object] = []
        for key in keys:
            c = self._conns.pop(key, None)
            if c is None:
                continue
            if c.state == _UNDECIDED and c.pending:
                # too few bytes to decide: not HTTP as far as we can tell
                self.stats["skipped.not_http"] += 1
                self.stats["skipped.bytes"] += sum(len(p.data) for p in c.pending)
            if c.state == _HTTP:
                out.append(StreamEnd(key, reason, ts))
        return out

    def close(self) -> list[object]:
        keys = sorted(self._conns)
        self._by_pid.clear()
        return self._close_keys(keys, "end_of_capture", None)
