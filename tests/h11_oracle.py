"""An HTTP/1.1 stage built on h11 alone, as the oracle the llhttp stage is
compared with: the same input events (StreamData, StreamEnd), the same
output events (HttpRequest, HttpResponse, HttpBody, HttpEnd).

Per connection, an h11 server reads the requests (answering each with a
dummy response so it moves on) and an h11 client reads the responses (told
each request first, so it frames HEAD, 1xx, 204/304 and CONNECT answers).
Lost bytes inside a message are NUL filler, as in the real stage; a
protocol error breaks one direction until a read starts a new message.
A request with Upgrade holds the request bytes after it until the answer:
a 101 hands the connection over (StreamSwitched, then the bytes as they
came), anything else lets the held requests be read."""
from __future__ import annotations

import itertools
from collections import deque

import h11

from agentsight.analyzers.base import HttpBody, HttpEnd, HttpRequest, HttpResponse, StreamData, StreamEnd, StreamSwitched
from agentsight.analyzers.http1 import MAX_FILL, MAX_HEADER_BYTES, MAX_REQUEST_BODY
from agentsight.analyzers.reassembly import REQUEST, classify_prefix

_DUMMY = h11.Response(status_code=200, headers=[(b"content-length", b"0")])
_DENIED = h11.Response(status_code=400, headers=[(b"content-length", b"0")])
# llhttp's methods: a request line with another method does not parse there, so
# the oracle does not resync on one either.
_METHODS = {b"DELETE", b"GET", b"HEAD", b"POST", b"PUT", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH", b"PURGE",
            b"PROPFIND", b"PROPPATCH", b"MKCOL", b"COPY", b"MOVE", b"LOCK", b"UNLOCK", b"SEARCH", b"REPORT",
            b"MKACTIVITY", b"CHECKOUT", b"MERGE", b"NOTIFY", b"SUBSCRIBE", b"UNSUBSCRIBE", b"ACL", b"BIND",
            b"LINK", b"UNLINK", b"QUERY"}
_xids = itertools.count(10**9)


class _X:
    def __init__(self, ts, tid, comm):
        self.xid = next(_xids)
        self.ts, self.tid, self.comm = ts, tid, comm
        self.method = b""
        self.target = b""
        self.headers = []
        self.version = b"1.1"
        self.body = []
        self.size = 0
        self.capped = False
        self.incomplete = None
        self.responded = False
        self.resp_size = 0
        self.end_ts = ts
        self.head = None  # the HttpRequest passed on


class _Conn:
    def __init__(self, ev: StreamData):
        self.key, self.pid, self.conn, self.side = ev.key, ev.pid, ev.conn, ev.side
        self.req = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
        self.req_broken = self.resp_broken = self.dead = False
        self.cur: _X | None = None
        self.queue: deque[_X] = deque()
        self.answering: _X | None = None
        self.req_lost = self.resp_lost = None
        self.reads: list[tuple[int, int, int, str]] = []  # (stream offset, ts, tid, comm) of each request read
        self.fed = 0
        self.boundary = 0  # stream offset where the next request begins
        self.ts = ev.ts
        self.tid, self.comm = ev.tid, ev.comm
        self.out = []
        self.held: list[StreamData] | None = None  # request bytes after an Upgrade request, until its answer
        self.upgrading: _X | None = None
        self.last_req: _X | None = None
        self.held_rest: StreamData | None = None
        self.releasing = False
        self.tunnel = False
        self.req_ev: StreamData | None = None
        self.resp_ev: StreamData | None = None

    # requests
    def _start_of(self, offset: int) -> tuple[int, int, str]:
        """ts, tid, comm of the read holding this offset of the request stream."""
        found = self.reads[-1][1:]
        for start, ts, tid, comm in reversed(self.reads):
            if start <= offset:
                return ts, tid, comm
        return found

    def _piece(self, ev: StreamData, role: str, data: bytes, trunc: int = 0) -> StreamData:
        return StreamData(self.key, role, data, 0, trunc, ev.ts, self.pid, ev.tid, ev.comm, self.conn, self.side)

    def on_req(self, ev: StreamData) -> None:
        self.ts = ev.ts
        self.req_ev = ev
        if self.tunnel:
            self.out.append(ev)
            return
        if self.held is not None:
            self.held.append(ev)
            return
        data = ev.data
        if self.req_broken:
            if data and classify_prefix(data[:24]) == REQUEST and data.split(b" ", 1)[0] in _METHODS:
                self.req = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
                self.req_broken = False
                self.req_lost = None
                self.boundary = self.fed
            else:
                return
        if ev.gap:
            if self.cur is not None and ev.gap <= MAX_FILL:
                self.cur.incomplete = self.cur.incomplete or "gap"
                data = b"\0" * ev.gap + data
            elif self.cur is not None:
                self._req_error("gap")
                return
            else:
                self.req_lost = self.req_lost or "gap"
        self.reads.append((self.fed, ev.ts, ev.tid, ev.comm))
        self._req_bytes(data)
        if ev.trunc and self.held is not None:
            self.held.append(self._piece(ev, "req", b"", ev.trunc))
        elif ev.trunc and not self.req_broken:
            if self.cur is not None and ev.trunc <= MAX_FILL:
                self.cur.incomplete = self.cur.incomplete or "truncated"
                self._req_bytes(b"\0" * ev.trunc)
            elif self.cur is not None:
                self.cur.incomplete = self.cur.incomplete or "truncated"
                self._req_error("truncated")
            else:
                self.req_lost = self.req_lost or "truncated"

    def _req_bytes(self, data: bytes, buffered: bool = False) -> None:
        """`buffered`: read what h11 holds already (no new bytes)."""
        if data:
            self.fed += len(data)
            self.req.receive_data(data)
        elif not buffered:
            return
        try:
            while True:
                e = self.req.next_event()
                if e is h11.NEED_DATA:
                    return
                if e is h11.PAUSED:
                    # An Upgrade waits for the server's answer, the bytes after it held.
                    # A CONNECT is answered here as denied: after a real one, what
                    # follows is not HTTP and fails to parse, which yields no exchange.
                    last = self.last_req
                    if self.req.their_state is h11.MIGHT_SWITCH_PROTOCOL and last is not None \
                            and last.method != b"CONNECT" and self.held is None and not self.dead:
                        self.upgrading = last
                        self.held = []
                        rest = bytes(self.req.trailing_data[0])  # h11 keeps it, for a refusal
                        self.held_rest = self._piece(self.req_ev, "req", rest) if rest else None
                        return
                    if self.req.their_state in (h11.DONE, h11.MIGHT_SWITCH_PROTOCOL) \
                            and self.req.our_state is h11.SEND_RESPONSE:
                        self.req.send(_DENIED if self.req.their_state is h11.MIGHT_SWITCH_PROTOCOL else _DUMMY)
                        self.req.send(h11.EndOfMessage())
                    if self.req.our_state is h11.DONE and self.req.their_state is h11.DONE:
                        self.req.start_next_cycle()
                        continue
                    return
                if type(e) is h11.Request:
                    if e.method not in _METHODS:
                        raise h11.RemoteProtocolError("a method llhttp does not know")
                    x = self.cur = _X(*self._start_of(self.boundary))
                    if self.req_lost:
                        x.incomplete, self.req_lost = self.req_lost, None
                    x.method, x.target, x.headers, x.version = e.method, e.target, list(e.headers), e.http_version
                elif type(e) is h11.Data and self.cur is not None:
                    x = self.cur
                    x.size += len(e.data)
                    if not x.capped:
                        if x.size > MAX_REQUEST_BODY:
                            x.capped, x.body = True, []
                        else:
                            x.body.append(bytes(e.data))
                elif type(e) is h11.EndOfMessage:
                    self.boundary = self.fed - len(self.req.trailing_data[0])
                    self._req_done()
                elif type(e) is h11.ConnectionClosed:
                    return
        except h11.ProtocolError:
            self._req_error("malformed_http")

    def _req_error(self, reason: str) -> None:
        self.req_broken = True
        if self.cur is not None:
            self.cur.incomplete = self.cur.incomplete or reason
            self._req_done()

    def _release(self) -> None:
        """The Upgrade was refused: the held requests are read."""
        held, self.held = self.held, None
        self.upgrading = self.held_rest = None
        if held is None:
            return
        if self.req.our_state is h11.SEND_RESPONSE:
            self.req.send(_DENIED)
            self.req.send(h11.EndOfMessage())
            if self.req.our_state is h11.DONE and self.req.their_state is h11.DONE:
                self.req.start_next_cycle()
        ts = self.ts
        self.releasing = True  # the responses being read go on after this, at their own time
        try:
            self._req_bytes(b"", buffered=True)
            for ev in held:
                self.on_req(ev)
        finally:
            self.releasing = False
        self.ts = ts

    def _req_done(self) -> None:
        x, self.cur = self.cur, None
        if x is None:
            return
        x.head = HttpRequest(x.xid, self.key, x.ts, self.ts, self.pid, x.tid, x.comm, self.conn, self.side,
                             x.method.decode("latin-1"), x.target.decode("latin-1"), x.headers,
                             x.version.decode(), b"".join(x.body), x.size, x.capped, x.incomplete)
        self.out.append(x.head)
        self.last_req = x
        self.queue.append(x)
        if not self.releasing:
            self._pump()

    # responses
    def on_resp(self, ev: StreamData) -> None:
        self.ts = ev.ts
        self.resp_ev = ev
        if self.tunnel:
            self.out.append(ev)
            return
        data = ev.data
        if self.dead:
            return
        resynced = False
        if self.resp_broken:
            if data[:7] == b"HTTP/1.":
                self.resp = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEADER_BYTES)
                self.resp_broken = False
                self.resp_lost = None
                self.answering = None
                resynced = True  # what was lost before this read belonged to the broken message
            else:
                return
        if ev.gap and not resynced:
            x = self.answering
            if x is not None and not x.responded:
                x.incomplete = x.incomplete or "gap"
            elif x is not None and ev.gap <= MAX_FILL:
                x.incomplete = x.incomplete or "gap"
                data = b"\0" * ev.gap + data
            elif x is not None:
                self._resp_error(x, "gap")
                return
            else:
                self.resp_lost = self.resp_lost or "gap"
        self.resp.receive_data(data)
        self._pump()
        if ev.trunc and not self.resp_broken and not self.dead:
            x = self.answering
            if x is not None and not x.responded:
                x.incomplete = x.incomplete or "truncated"
            elif x is not None and ev.trunc <= MAX_FILL:
                x.incomplete = x.incomplete or "truncated"
                self.resp.receive_data(b"\0" * ev.trunc)
                self._pump()
            if self.tunnel:
                self.out.append(self._piece(ev, "resp", b"", ev.trunc))
                return
            elif x is not None:
                self._resp_error(x, "truncated")
            else:
                self.resp_lost = self.resp_lost or "truncated"

    def _pump(self, eof: str | None = None) -> None:
        if self.resp_broken or self.dead:
            return
        try:
            while True:
                x = self.answering
                if x is None:
                    if not self.queue or self.resp.our_state is not h11.IDLE:
                        return
                    x = self.answering = self.queue.popleft()
                    if self.resp_lost:
                        x.incomplete, self.resp_lost = x.incomplete or self.resp_lost, None
                    hdrs = [(b"host", b"h"), (b"content-length", b"0")]
                    hdrs += [(k, v) for k, v in x.headers if k in (b"upgrade", b"connection")]
                    self.resp.send(h11.Request(method=x.method, target=b"/", headers=hdrs))
                    self.resp.send(h11.EndOfMessage())
                e = self.resp.next_event()
                if e is h11.NEED_DATA:
                    return
                if type(e) is h11.Response:
                    x.responded = True
                    self.out.append(HttpResponse(x.xid, self.key, self.ts, e.status_code, list(e.headers),
                                                 e.http_version.decode()))
                    if x is self.upgrading:
                        self._release()
                elif type(e) is h11.InformationalResponse:
                    if e.status_code == 101 and x is self.upgrading:
                        self.out.append(StreamSwitched(x.xid, self.key, self.ts, x.head, HttpResponse(
                            x.xid, self.key, self.ts, 101, list(e.headers), e.http_version.decode())))
                        self.tunnel = True
                        self.answering = None
                        if self.held_rest is not None:
                            self.out.append(self.held_rest)
                        self.out += self.held
                        self.held = self.upgrading = self.held_rest = None
                        rest = bytes(self.resp.trailing_data[0])
                        if rest:
                            self.out.append(self._piece(self.resp_ev, "resp", rest))
                        return
                    if e.status_code == 101:
                        x.responded = True
                        self.out.append(HttpResponse(x.xid, self.key, self.ts, 101, list(e.headers),
                                                     e.http_version.decode()))
                        self._end(x)
                        self._closed("connection_closed")
                        return
                elif type(e) is h11.Data:
                    x.resp_size += len(e.data)
                    self.out.append(HttpBody(x.xid, self.key, self.ts, bytes(e.data)))
                elif type(e) is h11.EndOfMessage:
                    self._end(x)
                    if self.resp.our_state is h11.DONE and self.resp.their_state is h11.DONE:
                        self.resp.start_next_cycle()
                    else:
                        self._closed("connection_closed")
                        return
                elif e is h11.PAUSED:
                    if self.resp.their_state is h11.SWITCHED_PROTOCOL:
                        self._end(x)
                        self._closed("connection_closed")
                    return
                elif type(e) is h11.ConnectionClosed:
                    self._closed(eof or "connection_closed")
                    return
        except h11.ProtocolError:
            self.resp_broken = True
            x = self.answering
            if x is not None:
                self._end(x, x.incomplete or eof or "malformed_http")

    def _resp_error(self, x: _X, reason: str) -> None:
        self.resp_broken = True
        self._end(x, x.incomplete or reason)

    def _end(self, x: _X, incomplete=None) -> None:
        self.answering = None
        self.out.append(HttpEnd(x.xid, self.key, self.ts, incomplete or x.incomplete, x.responded, x.resp_size))

    def _closed(self, reason: str) -> None:
        self.dead = True
        if self.answering is not None:
            self._end(self.answering, self.answering.incomplete or reason)
        while self.queue:
            x = self.queue.popleft()
            self._end(x, x.incomplete or reason)

    def close(self, reason: str, ts: int) -> None:
        self.ts = ts
        if self.tunnel:
            return
        if self.held is not None:
            self._release()
        if self.cur is not None:
            self.cur.incomplete = self.cur.incomplete or reason
            self._req_done()
        if not self.dead and not self.resp_broken:
            try:
                self.resp.receive_data(b"")
            except h11.ProtocolError:
                pass
            self._pump(eof=reason)
        if self.answering is not None:
            self._end(self.answering, self.answering.incomplete or reason)
        while self.queue:
            x = self.queue.popleft()
            self._end(x, x.incomplete or reason)


class H11Stage:
    """Drop-in for agentsight.analyzers.http1.Http1Parser."""

    def __init__(self, stats):
        self.stats = stats
        self.conns: dict = {}

    def feed(self, ev):
        if type(ev) is StreamData:
            c = self.conns.get(ev.key)
            if c is None:
                c = self.conns[ev.key] = _Conn(ev)
            (c.on_req if ev.role == "req" else c.on_resp)(ev)
            out, c.out = c.out, []
            return out
        if type(ev) is StreamEnd:
            c = self.conns.pop(ev.key, None)
            if c is None:
                return []
            ts = ev.ts if ev.ts is not None else c.ts
            c.close(ev.reason, ts)
            return c.out + [StreamEnd(ev.key, ev.reason, ts)] if c.tunnel else c.out
        return [ev]

    def close(self):
        out = []
        for key in list(self.conns):
            c = self.conns.pop(key)
            c.close("end_of_capture", c.ts)
            out += c.out
        return out
