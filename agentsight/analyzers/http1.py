"""Stage 2: ``tls_data`` byte streams -> HTTP/1.1 exchanges, parsed with h11.

Each connection gets two h11 state machines driven passively:

* ``req``: an h11 *server* fed the request stream; after each request we
  "send" a dummy response so h11 moves on to the next request (keep-alive,
  pipelining);
* ``resp``: an h11 *client* fed the response stream; before parsing each
  response we "send" it a copy of the matching request line (method, target,
  Upgrade) so h11 frames the response correctly (HEAD, 1xx, 204, 304,
  CONNECT/101).  Response bytes are held in h11's buffer until the request
  they answer has been parsed, which handles ``Expect: 100-continue`` and
  early responses.

Output, in this order per exchange (``xid`` is unique in the Pipeline)::

    http_request   method, target, headers, body (wire bytes, capped), ...
    http_response  status, headers            (final response only)
    http_body      data                       (wire bytes, zero or more)
    http_end       incomplete reason or None, response body size

Lost bytes (``gap``/``trunc``) are replaced with NUL filler while a message is
being parsed, so Content-Length and chunk framing stay aligned and the next
exchange on the connection still parses; the exchange is marked incomplete.
A protocol error breaks one direction until a later read starts a new
message there ("resync"); it never affects other connections.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import h11

from .base import ConnKey, Event, Stats
from .reassembly import REQUEST, classify_prefix

MAX_HEADER_BYTES = 1 << 20
MAX_REQUEST_BODY = 64 << 20  # kept for the LLM stage; bigger bodies are counted, not kept
MAX_FILL = 64 << 20
MAX_CONNS = 4096  # beyond this, idle connections (nothing in flight) are forgotten
_FILL_PIECE = b"\0" * (1 << 16)

_xids = itertools.count(1)


def _filler(n: int) -> bytes:
    n = min(n, MAX_FILL)
    if n <= len(_FILL_PIECE):
        return _FILL_PIECE[:n]
    return b"\0" * n


class _Exchange:
    __slots__ = ("xid", "started", "tid", "comm", "method", "target", "headers",
                 "version", "body", "body_size", "capped", "incomplete", "responded",
                 "resp_size", "upgrade")

    def __init__(self, started: int, tid: int, comm: str) -> None:
        self.xid = next(_xids)
        self.started = started
        self.tid = tid
        self.comm = comm
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.version = b"1.1"
        self.body: list[bytes] = []
        self.body_size = 0
        self.capped = False
        self.incomplete: str | None = None
        self.responded = False
        self.resp_size = 0
        self.upgrade: list[tuple[bytes, bytes]] = []


def _new_req_parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)


def _new_resp_parser() -> h11.Connection:
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)


_DUMMY_RESPONSE = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
_EOM = h11.EndOfMessage()


class _H1Conn:
    __slots__ = ("key", "pid", "conn", "side", "stats", "req", "resp", "req_broken",
                 "resp_broken", "cur_req", "req_start", "req_tid", "req_comm",
                 "queue", "cur_resp", "req_lost", "resp_lost", "dead", "last_ts")

    def __init__(self, ev: Event, stats: Stats) -> None:
        self.key: ConnKey = ev["key"]
        self.pid: int = ev["pid"]
        self.conn: int = ev["conn"]
        self.side: str = ev.get("side", "client")
        self.stats = stats
        self.req = _new_req_parser()
        self.resp = _new_resp_parser()
        self.req_broken = False
        self.resp_broken = False
        self.cur_req: _Exchange | None = None
        self.req_start: int | None = None
        self.req_tid = self.pid
        self.req_comm = ""
        self.queue: deque[_Exchange] = deque()
        self.cur_resp: _Exchange | None = None
        self.req_lost: str | None = None
        self.resp_lost: str | None = None
        self.dead = False
        self.last_ts = ev["ts"]

    # -- request direction ------------------------------------------------
    def on_req(self, ev: Event, out: list[Event]) -> None:
        data: bytes = ev["data"]
        ts: int = ev["ts"]
        if self.dead:
            self.stats["skipped.bytes"] += len(data)
            return
        if self.req_broken:
            if data and classify_prefix(data[:24]) == REQUEST:
                self.req = _new_req_parser()
                self.req_broken = False
                self.req_lost = None
            else:
                self.stats["skipped.bytes"] += len(data)
                return
        if self.req_start is None and self.cur_req is None:
            self.req_start = ts
            self.req_tid = ev["tid"]
            self.req_comm = ev["comm"]
        if ev["gap"]:
            self._req_lost("gap")
            if self.cur_req is not None:
                self.req.receive_data(_filler(ev["gap"]))
        if data:
            self.req.receive_data(data)
        self._pump_req(ts, out)
        if ev["trunc"] and not self.req_broken:
            self._req_lost("truncated")
            if self.cur_req is not None:
                self.req.receive_data(_filler(ev["trunc"]))
                self._pump_req(ts, out)

    def _req_lost(self, reason: str) -> None:
        if self.cur_req is not None:
            self.cur_req.incomplete = self.cur_req.incomplete or reason
        else:
            self.req_lost = self.req_lost or reason

    def _pump_req(self, ts: int, out: list[Event]) -> None:
        req = self.req
        try:
            while True:
                e: Any = req.next_event()
                if e is h11.NEED_DATA:
                    return
                if e is h11.PAUSED:
                    if req.their_state is h11.DONE and req.our_state is h11.SEND_RESPONSE:
                        req.send(_DUMMY_RESPONSE)
                        req.send(_EOM)
                    if req.their_state is h11.DONE and req.our_state is h11.DONE:
                        req.start_next_cycle()
                        continue
                    return  # closed or switched protocol: no more requests
                t = type(e)
                if t is h11.Data:
                    x = self.cur_req
                    if x is not None:
                        n = len(e.data)
                        x.body_size += n
                        if not x.capped:
                            if x.body_size > MAX_REQUEST_BODY:
                                x.capped = True
                                x.body = []
                            else:
                                x.body.append(bytes(e.data))
                elif t is h11.Request:
                    x = _Exchange(self.req_start if self.req_start is not None else ts,
                                  self.req_tid, self.req_comm)
                    self.req_start = None
                    x.method = e.method
                    x.target = e.target
                    x.headers = list(e.headers)
                    x.version = e.http_version
                    x.upgrade = [(k, v) for k, v in e.headers
                                 if k == b"upgrade" or k == b"connection"]
                    if self.req_lost:
                        x.incomplete = self.req_lost
                        self.req_lost = None
                    self.cur_req = x
                elif t is h11.EndOfMessage:
                    self._finish_req(ts, out)
                elif t is h11.ConnectionClosed:
                    return
        except h11.ProtocolError:
            self.stats["skipped.malformed_http"] += 1
            self.req_broken = True
            self.req_start = None
            if self.cur_req is not None:
                self.cur_req.incomplete = self.cur_req.incomplete or "malformed_http"
                self._finish_req(ts, out)

    def _finish_req(self, ts: int, out: list[Event]) -> None:
        x = self.cur_req
        if x is None:
            return
        self.cur_req = None
        self.stats["http.requests"] += 1
        out.append({
            "type": "http_request", "xid": x.xid, "key": self.key, "ts": x.started,
            "end_ts": ts, "pid": self.pid, "tid": x.tid, "comm": x.comm,
            "conn": self.conn, "side": self.side, "method": x.method.decode("latin-1"),
            "target": x.target.decode("latin-1"), "headers": x.headers,
            "http_version": x.version.decode("latin-1"),
            "body": b"".join(x.body), "body_size": x.body_size, "body_capped": x.capped,
            "incomplete": x.incomplete,
        })
        x.body = []
        self.queue.append(x)
        self._pump_resp(ts, out)

    # -- response direction -----------------------------------------------
    def on_resp(self, ev: Event, out: list[Event]) -> None:
        data: bytes = ev["data"]
        ts: int = ev["ts"]
        if self.dead:
            self.stats["skipped.bytes"] += len(data)
            return
        if self.resp_broken:
            if data[:7] == b"HTTP/1.":
                self.resp = _new_resp_parser()
                self.resp_broken = False
                self.resp_lost = None
            else:
                self.stats["skipped.bytes"] += len(data)
                return
        if ev["gap"]:
            self._resp_lost("gap")
            if self.cur_resp is not None:
                self.resp.receive_data(_filler(ev["gap"]))
        if data:
            self.resp.receive_data(data)
        self._pump_resp(ts, out)
        if ev["trunc"] and not self.resp_broken:
            self._resp_lost("truncated")
            if self.cur_resp is not None:
                self.resp.receive_data(_filler(ev["trunc"]))
                self._pump_resp(ts, out)

    def _resp_lost(self, reason: str) -> None:
        x = self.cur_resp
        if x is None and self.queue:
            x = self.queue[0]
        if x is not None:
            x.incomplete = x.incomplete or reason
        else:
            self.resp_lost = self.resp_lost or reason

    def _pump_resp(self, ts: int, out: list[Event], eof: str | None = None) -> None:
        if self.resp_broken or self.dead:
            return
        resp = self.resp
        try:
            while True:
                x = self.cur_resp
                if x is None:
                    if not self.queue or resp.our_state is not h11.IDLE:
                        return
                    x = self.cur_resp = self.queue.popleft()
                    if self.resp_lost:
                        x.incomplete = x.incomplete or self.resp_lost
                        self.resp_lost = None
                    hdrs = [(b"host", b"h"), (b"content-length", b"0")]
                    hdrs.extend(x.upgrade)
                    resp.send(h11.Request(method=x.method, target=x.target or b"/",
                                          headers=hdrs))
                    resp.send(_EOM)
                e: Any = resp.next_event()
                if e is h11.NEED_DATA:
                    return
                t = type(e)
                if t is h11.Data:
                    n = len(e.data)
                    x.resp_size += n
                    out.append({"type": "http_body", "xid": x.xid, "key": self.key,
                                "ts": ts, "data": bytes(e.data)})
                elif t is h11.Response:
                    x.responded = True
                    out.append({"type": "http_response", "xid": x.xid, "key": self.key,
                                "ts": ts, "status": e.status_code,
                                "headers": list(e.headers),
                                "http_version": e.http_version.decode("latin-1")})
                elif t is h11.EndOfMessage:
                    self._end(x, ts, out, x.incomplete)
                    if resp.our_state is h11.DONE and resp.their_state is h11.DONE:
                        resp.start_next_cycle()
                    else:
                        self._resp_closed(ts, out)
                        return
                elif t is h11.InformationalResponse:
                    if e.status_code == 101:
                        out.append({"type": "http_response", "xid": x.xid, "key": self.key,
                                    "ts": ts, "status": 101, "headers": list(e.headers),
                                    "http_version": e.http_version.decode("latin-1")})
                        self._end(x, ts, out, None)
                        self.stats["skipped.upgrade"] += 1
                        self._resp_closed(ts, out)
                        return
                elif e is h11.PAUSED:
                    if resp.their_state is h11.SWITCHED_PROTOCOL:  # CONNECT 2xx
                        self._end(x, ts, out, None)
                        self.stats["skipped.upgrade"] += 1
                        self._resp_closed(ts, out)
                    return
                elif t is h11.ConnectionClosed:
                    self._resp_closed(ts, out, eof or "connection_closed")
                    return
        except h11.ProtocolError:
            # at the end of the connection h11 complains about the missing bytes:
            # that is the close reason, not malformed HTTP
            if eof is None:
                self.stats["skipped.malformed_http"] += 1
            self.resp_broken = True
            x = self.cur_resp
            if x is not None:
                self._end(x, ts, out, x.incomplete or eof or "malformed_http")

    def _end(self, x: _Exchange, ts: int, out: list[Event], incomplete: str | None) -> None:
        self.cur_resp = None
        self.stats["http.exchanges"] += 1
        out.append({"type": "http_end", "xid": x.xid, "key": self.key, "ts": ts,
                    "incomplete": incomplete, "responded": x.responded,
                    "resp_size": x.resp_size})

    def _resp_closed(self, ts: int, out: list[Event], reason: str = "connection_closed") -> None:
        """No more responses can be parsed on this connection."""
        self.dead = True
        if self.cur_resp is not None:
            self._end(self.cur_resp, ts, out, self.cur_resp.incomplete or reason)
        while self.queue:
            x = self.queue.popleft()
            self._end(x, ts, out, x.incomplete or reason)

    # -- end of the connection -------------------------------------------
    def close(self, reason: str, ts: int, out: list[Event]) -> None:
        if self.cur_req is not None:
            x = self.cur_req
            x.incomplete = x.incomplete or reason
            self._finish_req(ts, out)
        if not self.dead and not self.resp_broken:
            if self.cur_resp is not None or self.queue:
                try:
                    self.resp.receive_data(b"")
                except h11.ProtocolError:
                    pass
                self._pump_resp(ts, out, eof=reason)
        cur = self.cur_resp
        if cur is not None:
            self._end(cur, ts, out, cur.incomplete or reason)
        while self.queue:
            x = self.queue.popleft()
            self._end(x, ts, out, x.incomplete or reason)


class Http1Parser:
    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._conns: dict[ConnKey, _H1Conn] = {}
        self._failed: set[ConnKey] = set()  # dropped after an internal error

    def feed(self, ev: Event) -> list[Event]:
        t = ev["type"]
        if t == "tls_data":
            key = ev["key"]
            c = self._conns.get(key)
            if c is None:
                if key in self._failed:
                    return []
                if len(self._conns) >= MAX_CONNS:
                    self._evict_idle()
                c = self._conns[key] = _H1Conn(ev, self.stats)
            out: list[Event] = []
            try:
                c.last_ts = ev["ts"]
                if ev["role"] == "req":
                    c.on_req(ev, out)
                else:
                    c.on_resp(ev, out)
            except Exception:  # a bug must not take other connections down
                self.stats["errors.http"] += 1
                self._failed.add(key)
                self._drop(key, "internal_error", ev["ts"], out)
            return out
        if t == "tls_close":
            out = []
            ts = ev["ts"]
            self._failed.discard(ev["key"])
            c = self._conns.get(ev["key"])
            self._drop(ev["key"], ev["reason"], ts if ts is not None else (c.last_ts if c else 0), out)
            return out
        return [ev]

    def _evict_idle(self) -> None:
        """Forget the oldest idle connections: they hold no exchange, so if
        one is used again a fresh parser starts at a message boundary."""
        target = MAX_CONNS * 3 // 4
        for key in list(self._conns):
            if len(self._conns) <= target:
                break
            c = self._conns[key]
            if (c.cur_req is None and c.cur_resp is None and not c.queue
                    and c.req_start is None):
                del self._conns[key]
                self.stats["http.evicted_idle"] += 1
        if len(self._failed) > MAX_CONNS:
            self._failed.clear()

    def _drop(self, key: ConnKey, reason: str, ts: int, out: list[Event]) -> None:
        c = self._conns.pop(key, None)
        if c is None:
            return
        try:
            c.close(reason, ts, out)
        except Exception:
            self.stats["errors.http"] += 1

    def close(self) -> list[Event]:
        out: list[Event] = []
        for key in sorted(self._conns):
            c = self._conns[key]
            self._drop(key, "end_of_capture", c.last_ts, out)
        return out


def header_value(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    """The (comma-joined) value of a lower-case header name, or None."""
    vals = [v for k, v in headers if k == name]
    if not vals:
        return None
    return b", ".join(vals).decode("latin-1")


def headers_dict(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    d: dict[str, str] = {}
    for k, v in headers:
        ks = k.decode("latin-1")
        vs = v.decode("latin-1")
        d[ks] = d[ks] + ", " + vs if ks in d else vs
    return d
