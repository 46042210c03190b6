"""Stage 1: raw ``ssl`` events -> per-connection ``tls_data`` byte streams.

* validates and decodes each raw event once (``data`` or ``data_b64``);
* keys connections by ``(pid, conn)``;
* decides, from the first bytes, whether a connection carries HTTP/1.x
  (and which side is the client), HTTP/2, or something else; non-HTTP/1
  connections are counted once in ``stats`` and then dropped cheaply;
* passes lost byte counts (``gap`` before, ``truncated`` after the data) on
  to the HTTP stage, which owns framing;
* turns an ``exit`` of a process, and ``close()``, into ``tls_close`` for each
  of its connections.
"""
from __future__ import annotations

import binascii
import re

from .base import PROCESS_TYPES, ConnKey, Event, Stats

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHOD = re.compile(rb"[A-Z][A-Z_-]{0,23}")
_DECIDE_BYTES = 24  # enough to tell a request, a response and the h2 preface
MAX_CONNS = 1 << 16  # connection states kept; the oldest quarter goes beyond that

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
    __slots__ = ("state", "swapped", "pending", "first", "pid")

    def __init__(self, pid: int) -> None:
        self.state = _UNDECIDED
        self.swapped = False
        self.pending: list[Event] = []
        self.first = {"send": b"", "recv": b""}
        self.pid = pid


class StreamReassembler:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._conns: dict[ConnKey, _Conn] = {}
        self._by_pid: dict[int, set[ConnKey]] = {}

    # -- raw event validation -------------------------------------------
    def feed(self, ev: Event) -> list[Event]:
        stats = self.stats
        if type(ev) is not dict:
            stats["skipped.malformed_event"] += 1
            return []
        t = ev.get("type")
        if t == "ssl":
            return self._ssl(ev)
        if type(t) is not str:
            stats["skipped.malformed_event"] += 1
            return []
        if t in PROCESS_TYPES:
            if t == "exit":
                return self._exit(ev)
            return [ev]
        stats["skipped.unknown_type"] += 1
        return []

    def _ssl(self, ev: Event) -> list[Event]:
        stats = self.stats
        stats["events.ssl"] += 1
        pid = ev.get("pid")
        conn = ev.get("conn")
        d = ev.get("dir")
        ts = ev.get("ts")
        if type(pid) is not int or type(conn) is not int or type(ts) is not int:
            stats["skipped.malformed_event"] += 1
            return []
        if d != "send" and d != "recv":
            if d == "handshake":
                stats["ssl.handshake"] += 1
                return []
            if d == "close":
                # The TLS session was freed: both streams have ended.
                stats["ssl.closed"] += 1
                keys = self._by_pid.get(pid)
                if keys is not None:
                    keys.discard((pid, conn))
                return self._close_keys([(pid, conn)], "connection_closed", ts)
            stats["skipped.malformed_event"] += 1
            return []
        key = (pid, conn)
        c = self._conns.get(key)
        if c is not None and c.state == _DEAD:
            stats["skipped.bytes"] += ev.get("len", 0) if type(ev.get("len")) is int else 0
            return []
        s = ev.get("data")
        if type(s) is str:
            data = s.encode("utf-8", "surrogatepass")
        else:
            b64 = ev.get("data_b64")
            if type(b64) is not str:
                if s is None and ev.get("len", 0) == 0:
                    data = b""
                else:
                    stats["skipped.malformed_event"] += 1
                    return []
            else:
                try:
                    data = binascii.a2b_base64(b64)
                except (binascii.Error, ValueError):
                    stats["skipped.malformed_event"] += 1
                    return []
        gap = ev.get("gap", 0)
        trunc = ev.get("truncated", 0)
        if type(gap) is not int or gap < 0:
            gap = 0
        if type(trunc) is not int or trunc < 0:
            trunc = 0
        if not data and not gap and not trunc:
            return []
        stats["bytes.ssl"] += len(data)
        if gap or trunc:
            stats["bytes.lost"] += gap + trunc
        if c is None:
            if len(self._conns) >= MAX_CONNS:
                self._evict()
            c = self._conns[key] = _Conn(pid)
            self._by_pid.setdefault(pid, set()).add(key)
        if c.state == _HTTP:
            role = "req" if (d == "send") != c.swapped else "resp"
            tid = ev.get("tid")
            comm = ev.get("comm")
            return [{
                "type": "tls_data", "key": key, "role": role, "data": data,
                "gap": gap, "trunc": trunc, "ts": ts,
                "pid": pid, "tid": tid if type(tid) is int else pid,
                "comm": comm if type(comm) is str else "", "conn": conn,
                "side": "server" if c.swapped else "client",
            }]
        return self._undecided(key, c, ev, d, data, gap, trunc, ts)

    def _undecided(self, key: ConnKey, c: _Conn, ev: Event, d: str, data: bytes,
                   gap: int, trunc: int, ts: int) -> list[Event]:
        tid = ev.get("tid")
        comm = ev.get("comm")
        c.pending.append({
            "type": "tls_data", "key": key, "role": d, "data": data,
            "gap": gap, "trunc": trunc, "ts": ts, "pid": key[0],
            "tid": tid if type(tid) is int else key[0],
            "comm": comm if type(comm) is str else "", "conn": key[1],
        })
        first = c.first[d]
        if len(first) < _DECIDE_BYTES:
            first = c.first[d] = first + data[: _DECIDE_BYTES - len(first)]
        kind = classify_prefix(first)
        if kind is None:
            if trunc:  # the next bytes are lost: we will not learn more
                kind = OTHER
            else:
                return []
        if kind == OTHER or kind == HTTP2:
            c.state = _DEAD
            self.stats["skipped.http2" if kind == HTTP2 else "skipped.not_http"] += 1
            self.stats["skipped.bytes"] += sum(len(p["data"]) for p in c.pending)
            c.pending = []
            return []
        # REQUEST on send / RESPONSE on recv: we are the client
        c.swapped = (kind == RESPONSE) == (d == "send")
        c.state = _HTTP
        side = "server" if c.swapped else "client"
        out = c.pending
        c.pending = []
        c.first = {}
        for p in out:
            p["role"] = "req" if (p["role"] == "send") != c.swapped else "resp"
            p["side"] = side
        return out

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
    def _exit(self, ev: Event) -> list[Event]:
        # One exit event per process, sent by whichever thread left last.
        pid = ev.get("pid")
        if type(pid) is not int:
            return [ev]
        keys = self._by_pid.pop(pid, None)
        if not keys:
            return [ev]
        ts = ev.get("ts") if type(ev.get("ts")) is int else 0
        out = self._close_keys(sorted(keys), "process_exit", ts)
        out.append(ev)
        return out

    def _close_keys(self, keys: list[ConnKey], reason: str, ts: int | None) -> list[Event]:
        out: list[Event] = []
        for key in keys:
            c = self._conns.pop(key, None)
            if c is None:
                continue
            if c.state == _UNDECIDED and c.pending:
                # too few bytes to decide: not HTTP as far as we can tell
                self.stats["skipped.not_http"] += 1
            if c.state == _HTTP:
                out.append({"type": "tls_close", "key": key, "reason": reason, "ts": ts})
        return out

    def close(self) -> list[Event]:
        keys = sorted(self._conns)
        self._by_pid.clear()
        return self._close_keys(keys, "end_of_capture", None)
