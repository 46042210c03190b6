"""Stage 2: ``tls_data`` byte streams -> HTTP/1.1 exchanges, parsed with
httptools (llhttp) and h11.

A message head at a message boundary that is plain -- HTTP/1.1, keep-alive,
framed by Content-Length or chunked, no protocol switch -- is parsed with
httptools and its body framed here.  Every other head goes to h11, which
decides all the edge cases and all the errors, exactly as before the
httptools path existed (tests compare the two paths on hard input).  When h11
parses, each connection gets two h11 state machines driven passively:

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

h11 parses message heads and drives keep-alive cycles, but bodies with
Content-Length or chunked framing are framed here (``_start_body``,
``_req_body``, chunked.py): h11's per-read event machinery was most of the
cost of streamed responses.  At the end of such a body a fresh h11 parser
takes the rest of the stream, which is what h11's ``start_next_cycle`` would
do; every case where h11 would do something else (Connection: close, HTTP/1.0,
protocol switches, chunked trailers, malformed framing) keeps h11's outcome.
"""
from __future__ import annotations

import itertools
from collections import deque
from typing import Any

import h11
import httptools

from .base import ConnKey, Event, Stats
from .chunked import BAD, DONE, MORE, ChunkedDecoder
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


def _body_length(method: bytes, resp: h11.Response) -> int | None:
    """How a response body is framed, as h11 decides it: -1 chunked, n > 0
    Content-Length; None: no body, or close-delimited (h11 frames those)."""
    status = resp.status_code
    if (status == 204 or status == 304 or method == b"HEAD"
            or (method == b"CONNECT" and 200 <= status < 300)):
        return None
    length = None
    for k, v in resp.headers:
        if k == b"transfer-encoding":  # h11 accepts nothing but "chunked"
            return -1
        if k == b"content-length":  # h11 checked the value (digits, one value)
            length = int(v)
    return length if length else None


def _request_body_length(req: h11.Request) -> int | None:
    """The length of a request body that can be framed without h11 (0: no
    body): one on a keep-alive connection that cannot switch protocols
    afterwards (then h11 just starts the next cycle at the end of the body)."""
    if req.method == b"CONNECT" or req.http_version != b"1.1":
        return None
    length = 0
    for k, v in req.headers:
        if k == b"content-length":
            length = int(v)
        elif (k == b"transfer-encoding" or k == b"upgrade"
              or (k == b"connection" and _closes(((k, v),)))):
            return None
    return length


def _closes(headers: Any) -> bool:
    """A ``Connection: close`` among the headers (h11's keep-alive test)."""
    for k, v in headers:
        if k == b"connection" and b"close" in [t.strip() for t in v.lower().split(b",")]:
            return True
    return False


_REQUEST_LINES: dict[tuple, h11.Request] = {}


# -- message heads at a message boundary, parsed with httptools -------------
# h11 spends 10-17 us on a message head (a connection object, its state
# machines, regex validation); llhttp through httptools about 1 us.  So a
# head that h11 would take without surprises -- HTTP/1.1, keep-alive, framed
# by Content-Length or chunked, no protocol switch -- is parsed with
# httptools; every other head (and anything llhttp rejects) goes to h11 as
# before, so h11 still decides all the edge cases and all the errors.

class _Head:
    __slots__ = ("target", "headers", "complete", "status_code", "http_version")

    def __init__(self) -> None:
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.complete = 0
        self.status_code = 0
        self.http_version = b"1.1"

    def on_url(self, url: bytes) -> None:
        self.target += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value.strip(b" \t")))

    def on_headers_complete(self) -> None:
        self.complete += 1


class _Pending:
    """The bytes of one direction at a message boundary, held until a whole
    head is there.  The search for its end resumes where it stopped, so a
    head that arrives a byte per read still costs linear time."""

    __slots__ = ("data", "scan")

    def __init__(self) -> None:
        self.data: bytes | bytearray = b""
        self.scan = 0

    def set(self, data: bytes) -> None:
        self.data = data
        self.scan = 0

    def add(self, data: bytes) -> None:
        if not self.data:
            self.data = data
            return
        if type(self.data) is bytes:
            self.data = bytearray(self.data)
        self.data += data

    def take(self) -> bytes:
        data = self.data
        self.set(b"")
        return data if type(data) is bytes else bytes(data)

    def head_length(self) -> int:
        """The length of the head at the start: > 0 when it is there whole, 0
        when more bytes are needed, -1 when only h11 should read it (a bare-LF
        line ending, a control byte or space first, or no end within the
        limit)."""
        buf = self.data
        if not buf:
            return 0
        if buf[0] < 0x21:  # h11 rejects this at once, before the head is whole
            return -1
        start = self.scan
        end = buf.find(b"\r\n\r\n", start)
        if buf.find(b"\n\n", start, len(buf) if end < 0 else end) >= 0:
            return -1
        if end < 0:
            if len(buf) > MAX_HEADER_BYTES:
                return -1
            self.scan = max(0, len(buf) - 3)
            return 0
        return end + 4


def _parse_head(parser: Any, head: bytes) -> _Head | None:
    h = _Head()
    try:
        parser(h).feed_data(head)
    except (httptools.HttpParserError, httptools.HttpParserUpgrade):  # h11 decides
        return None
    return h if h.complete == 1 else None


def _is_length(v: bytes) -> bool:
    return v.isdigit() and len(v) <= 20  # h11's limit on Content-Length digits


def _fast_request(head: bytes) -> tuple[_Head, int] | None:
    """A request head and its Content-Length (0: none), or None when h11 is
    to parse it (anything but a plain keep-alive HTTP/1.1 request)."""
    line = head[:head.find(b"\r\n")]
    if not line.endswith(b" HTTP/1.1") or line.startswith(b"CONNECT "):
        return None
    h = _parse_head(httptools.HttpRequestParser, head)
    if h is None:
        return None
    length = -1
    hosts = 0
    for k, v in h.headers:
        if k == b"host":
            hosts += 1
        elif k == b"content-length":
            if length >= 0 or not _is_length(v):
                return None
            length = int(v)
        elif (k == b"transfer-encoding" or k == b"upgrade"
              or (k == b"connection" and _closes(((k, v),)))):
            return None
    if hosts != 1:
        return None
    return h, max(length, 0)


def _fast_response(head: bytes, x: _Exchange) -> tuple[_Head, int] | None:
    """A response head to ``x`` and how its body is framed (-1 chunked, else
    the Content-Length), or None when h11 is to parse it: 1xx, 204, 304,
    answers to HEAD or CONNECT, close-delimited bodies, Connection: close,
    HTTP/1.0."""
    if not head.startswith(b"HTTP/1.1 ") or x.method in (b"HEAD", b"CONNECT"):
        return None
    for k, v in x.upgrade:
        if k == b"upgrade" or _closes(((k, v),)):
            return None
    h = _parse_head(httptools.HttpResponseParser, head)
    if h is None:
        return None
    status = int(head[9:12]) if head[9:12].isdigit() else 0
    if status < 200 or status > 599 or status == 204 or status == 304:
        return None
    h.status_code = status
    length = None
    headers = h.headers
    for i, (k, v) in enumerate(headers):
        if k == b"content-length":
            if length is not None or not _is_length(v):
                return None
            length = int(v)
        elif k == b"transfer-encoding":
            if length is not None or v.lower() != b"chunked":
                return None
            headers[i] = (k, b"chunked")  # as h11 reports it
            length = -1
        elif k == b"connection" and _closes(((k, v),)):
            return None
    if length is None:
        return None
    return h, length


def _request_line(x: _Exchange) -> h11.Request:
    """What the response parser is told the response answers: the method and
    any Upgrade are all that frame a response, so one is built per pair."""
    key = (x.method, *x.upgrade)
    line = _REQUEST_LINES.get(key)
    if line is None:
        hdrs = [(b"host", b"h"), (b"content-length", b"0")]
        hdrs.extend(x.upgrade)
        line = h11.Request(method=x.method, target=b"/", headers=hdrs)
        if len(_REQUEST_LINES) < 256:
            _REQUEST_LINES[key] = line
    return line


class _H1Conn:
    __slots__ = ("key", "pid", "conn", "side", "stats", "req", "resp", "req_broken",
                 "resp_broken", "cur_req", "req_start", "req_tid", "req_comm",
                 "queue", "cur_resp", "req_lost", "resp_lost", "dead", "last_ts",
                 "chunked", "body_left", "keep", "head", "req_left", "req_pending",
                 "resp_pending")

    def __init__(self, ev: Event, stats: Stats) -> None:
        self.key: ConnKey = ev["key"]
        self.pid: int = ev["pid"]
        self.conn: int = ev["conn"]
        self.side: str = ev.get("side", "client")
        self.stats = stats
        # None: at a message boundary, the bytes so far in req_pending /
        # resp_pending (see _fast_request); h11 only for heads that need it.
        self.req: h11.Connection | None = None
        self.resp: h11.Connection | None = None
        self.req_pending = _Pending()
        self.resp_pending = _Pending()
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
        # Once h11 has parsed a response head, the body is framed here (see
        # _start_body): a chunked decoder, or the Content-Length bytes left.
        self.chunked: ChunkedDecoder | None = None
        self.body_left = 0
        self.keep = True  # the connection stays open after this response
        self.head: h11.Response | _Head | None = None  # the response whose body is framed here
        self.req_left = 0  # Content-Length bytes of cur_req's body still to come

    # -- request direction ------------------------------------------------
    def on_req(self, ev: Event, out: list[Event]) -> None:
        data: bytes = ev["data"]
        ts: int = ev["ts"]
        if self.dead:
            self.stats["skipped.bytes"] += len(data)
            return
        if self.req_broken:
            if data and classify_prefix(data[:24]) == REQUEST:
                self.req = None
                self.req_pending.set(b"")
                self.req_broken = False
                self.req_lost = None
                self.req_left = 0
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
                data = _filler(ev["gap"]) + data
        self._req_data(data, ts, out)
        if ev["trunc"] and not self.req_broken:
            self._req_lost("truncated")
            if self.cur_req is not None:
                self._req_data(_filler(ev["trunc"]), ts, out)

    def _req_data(self, data: bytes, ts: int, out: list[Event]) -> None:
        if self.req_left:
            if not self._req_body(data, ts, out):
                return
        elif data:
            if self.req is None:
                self.req_pending.add(data)
            else:
                self.req.receive_data(data)
        self._pump_req(ts, out)

    def _req_lost(self, reason: str) -> None:
        if self.cur_req is not None:
            self.cur_req.incomplete = self.cur_req.incomplete or reason
        else:
            self.req_lost = self.req_lost or reason

    def _pump_req(self, ts: int, out: list[Event]) -> None:
        while self.req is not None or self._fast_req(ts, out):
            if not self._pump_h11_req(ts, out):
                return

    def _fast_req(self, ts: int, out: list[Event]) -> bool:
        """Requests at message boundaries, for as long as they are plain;
        True when h11 is to parse the next one (then ``self.req`` is set)."""
        pending = self.req_pending
        while True:
            n = pending.head_length()
            if n == 0:
                return False
            buf = pending.take()
            fast = _fast_request(buf[:n]) if n > 0 else None
            if fast is None:
                self.req = _new_req_parser()
                self.req.receive_data(buf)
                return True
            h, length = fast
            x = self._new_request(ts)
            x.method = buf[:buf.index(b" ")]
            x.target = h.target
            x.headers = h.headers
            x.upgrade = [(k, v) for k, v in h.headers if k == b"connection"]
            self.req_left = length
            if not self._req_body(buf[n:], ts, out):
                return False

    def _new_request(self, ts: int) -> _Exchange:
        x = _Exchange(self.req_start if self.req_start is not None else ts,
                      self.req_tid, self.req_comm)
        self.req_start = None
        if self.req_lost:
            x.incomplete = self.req_lost
            self.req_lost = None
        self.cur_req = x
        return x

    def _pump_h11_req(self, ts: int, out: list[Event]) -> bool:
        """True when the next request starts at a boundary (``self.req`` None)."""
        req = self.req
        assert req is not None
        try:
            while True:
                e: Any = req.next_event()
                if e is h11.NEED_DATA:
                    return False
                if e is h11.PAUSED:
                    if req.their_state is h11.DONE and req.our_state is h11.SEND_RESPONSE:
                        req.send(_DUMMY_RESPONSE)
                        req.send(_EOM)
                    if req.their_state is h11.DONE and req.our_state is h11.DONE:
                        # the next request starts at a boundary, as after a body framed here
                        self.req = None
                        self.req_pending.set(req.trailing_data[0])
                        return True
                    return False  # closed or switched protocol: no more requests
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
                    x = self._new_request(ts)
                    x.method = e.method
                    x.target = e.target
                    x.headers = list(e.headers)
                    x.version = e.http_version
                    x.upgrade = [(k, v) for k, v in e.headers
                                 if k == b"upgrade" or k == b"connection"]
                    length = _request_body_length(e)
                    if length is not None:
                        self.req_left = length
                        return self._req_body(req.trailing_data[0], ts, out)
                elif t is h11.EndOfMessage:
                    self._finish_req(ts, out)
                elif t is h11.ConnectionClosed:
                    return False
        except h11.ProtocolError:
            self.stats["skipped.malformed_http"] += 1
            self.req_broken = True
            self.req_start = None
            if self.cur_req is not None:
                self.cur_req.incomplete = self.cur_req.incomplete or "malformed_http"
                self._finish_req(ts, out)
        return False

    def _req_body(self, data: bytes, ts: int, out: list[Event]) -> bool:
        """Content-Length body bytes of ``cur_req``, framed without h11 (like
        response bodies, see _start_body); True when the request ended and
        ``self.req`` is to parse what follows."""
        x = self.cur_req
        assert x is not None
        left = self.req_left
        if len(data) < left:
            self.req_left = left - len(data)
            rest = None
        else:
            self.req_left = 0
            data, rest = data[:left], data[left:]
        if data:
            x.body_size += len(data)
            if not x.capped:
                if x.body_size > MAX_REQUEST_BODY:
                    x.capped = True
                    x.body = []
                else:
                    x.body.append(data)
        if rest is None:
            return False
        self._finish_req(ts, out)
        # h11 would answer with a dummy response and start the next cycle
        self.req = None
        self.req_pending.set(rest)
        return True

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
                self.resp = None
                self.resp_pending.set(b"")
                self.resp_broken = False
                self.resp_lost = None
                self.chunked = None
                self.body_left = 0
            else:
                self.stats["skipped.bytes"] += len(data)
                return
        if self.cur_resp is None and not self.queue and self.cur_req is None and self.resp is None:
            held = len(self.resp_pending.data) + len(data)
            if self.req_broken or held > MAX_HEADER_BYTES:
                # Answers to requests that could not be parsed, or a pile of
                # bytes no request asked for: matched with the next request
                # they would be attributed wrongly, so they are counted and
                # dropped until a read starts a response again.
                self.stats["skipped.bytes"] += held
                self.stats["skipped.unanswered_responses"] += 1
                self.resp_pending.set(b"")
                self.resp_broken = True
                return
        if ev["gap"]:
            self._resp_lost("gap")
            if self.cur_resp is not None:
                data = _filler(ev["gap"]) + data
        self._resp_data(data, ts, out)
        if ev["trunc"] and not self.resp_broken:
            self._resp_lost("truncated")
            if self.cur_resp is not None:
                self._resp_data(_filler(ev["trunc"]), ts, out)

    def _resp_data(self, data: bytes, ts: int, out: list[Event]) -> None:
        if self.chunked is not None or self.body_left:
            if not self._body_data(data, ts, out):
                return
        elif data:
            if self.resp is None:
                self.resp_pending.add(data)
            else:
                self.resp.receive_data(data)
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
        while not (self.resp_broken or self.dead or self.chunked is not None or self.body_left):
            if self.resp is None and not self._fast_resp(ts, out, eof):
                return
            if not self._pump_h11_resp(ts, out, eof):
                return

    def _fast_resp(self, ts: int, out: list[Event], eof: str | None) -> bool:
        """Responses at message boundaries, for as long as they are plain;
        True when h11 is to parse the next one (then ``self.resp`` is set)."""
        while True:
            x = self.cur_resp
            if x is None:
                if not self.queue:
                    return False
                x = self.cur_resp = self.queue.popleft()
                if self.resp_lost:
                    x.incomplete = x.incomplete or self.resp_lost
                    self.resp_lost = None
            n = self.resp_pending.head_length() if eof is None else -1
            if n == 0:
                return False
            buf = self.resp_pending.take()
            fast = _fast_response(buf[:n], x) if n > 0 else None
            if fast is None:
                self.resp = _new_resp_parser()
                self.resp.send(_request_line(x))
                self.resp.send(_EOM)
                if buf:  # (no bytes at all would tell h11 the stream ended)
                    self.resp.receive_data(buf)
                if eof is not None:
                    self.resp.receive_data(b"")
                return True
            h, length = fast
            x.responded = True
            out.append({"type": "http_response", "xid": x.xid, "key": self.key,
                        "ts": ts, "status": h.status_code, "headers": h.headers,
                        "http_version": "1.1"})
            if length < 0:
                self.chunked = ChunkedDecoder(MAX_HEADER_BYTES)
            else:
                self.body_left = length
            self.keep = True
            self.head = h
            if length == 0:
                self._end(x, ts, out, x.incomplete)
                self.resp_pending.set(buf[n:])
            elif not self._body_data(buf[n:], ts, out):
                return False
            elif self.resp is not None:  # trailer fields follow: h11 parses them
                return True

    def _pump_h11_resp(self, ts: int, out: list[Event], eof: str | None) -> bool:
        """True when the next response starts at a boundary (``self.resp`` None)."""
        resp = self.resp
        assert resp is not None
        try:
            while True:
                x = self.cur_resp
                if x is None:
                    if not self.queue or resp.our_state is not h11.IDLE:
                        return False
                    x = self.cur_resp = self.queue.popleft()
                    if self.resp_lost:
                        x.incomplete = x.incomplete or self.resp_lost
                        self.resp_lost = None
                    resp.send(_request_line(x))
                    resp.send(_EOM)
                e: Any = resp.next_event()
                if e is h11.NEED_DATA:
                    return False
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
                    rest = self._start_body(x, e, resp) if eof is None else None
                    if rest is not None:
                        return self._body_data(rest, ts, out)
                elif t is h11.EndOfMessage:
                    self._end(x, ts, out, x.incomplete)
                    if resp.our_state is h11.DONE and resp.their_state is h11.DONE:
                        rest, closed = resp.trailing_data
                        if eof is None and not closed:
                            # the next response starts at a boundary
                            self.resp = None
                            self.resp_pending.set(rest)
                            return True
                        resp.start_next_cycle()
                    else:
                        self._resp_closed(ts, out)
                        return False
                elif t is h11.InformationalResponse:
                    if e.status_code == 101:
                        out.append({"type": "http_response", "xid": x.xid, "key": self.key,
                                    "ts": ts, "status": 101, "headers": list(e.headers),
                                    "http_version": e.http_version.decode("latin-1")})
                        self._end(x, ts, out, None)
                        self.stats["skipped.upgrade"] += 1
                        self._resp_closed(ts, out)
                        return False
                elif e is h11.PAUSED:
                    if resp.their_state is h11.SWITCHED_PROTOCOL:  # CONNECT 2xx
                        self._end(x, ts, out, None)
                        self.stats["skipped.upgrade"] += 1
                        self._resp_closed(ts, out)
                    return False
                elif t is h11.ConnectionClosed:
                    self._resp_closed(ts, out, eof or "connection_closed")
                    return False
        except h11.ProtocolError:
            # at the end of the connection h11 complains about the missing bytes:
            # that is the close reason, not malformed HTTP
            if eof is None:
                self.stats["skipped.malformed_http"] += 1
            self.resp_broken = True
            x = self.cur_resp
            if x is not None:
                self._end(x, ts, out, x.incomplete or eof or "malformed_http")
        return False

    # -- response bodies, framed without h11 ---------------------------------
    # h11 turns every read into several events and state-machine steps; a
    # streamed response is hundreds of small reads.  So once h11 has parsed a
    # response head with a chunked or Content-Length body, the body is framed
    # here, and at its end a fresh h11 parser takes the rest of the stream
    # (what h11's start_next_cycle would have done).

    def _start_body(self, x: _Exchange, e: h11.Response, resp: h11.Connection) -> bytes | None:
        """Take over the body of ``e``: the bytes h11 holds past the head, or None
        when h11 keeps framing this body."""
        n = _body_length(x.method, e)
        if n is None:
            return None
        rest, closed = resp.trailing_data
        if closed:
            return None
        if n < 0:
            self.chunked = ChunkedDecoder(MAX_HEADER_BYTES)
        else:
            self.body_left = n
        self.keep = e.http_version >= b"1.1" and not _closes(e.headers) and not _closes(x.upgrade)
        self.head = e
        return rest

    def _body_data(self, data: bytes, ts: int, out: list[Event]) -> bool:
        """Body bytes of ``cur_resp``; True when its body ended and ``self.resp``
        is to parse what follows."""
        x = self.cur_resp
        assert x is not None
        dec = self.chunked
        if dec is None:
            left = self.body_left
            if len(data) < left:
                self.body_left = left - len(data)
                body, status, rest = data, MORE, b""
            else:
                self.body_left = 0
                body, status, rest = data[:left], DONE, data[left:]
        else:
            body, status, rest = dec.feed(data)
        if body:
            x.resp_size += len(body)
            out.append({"type": "http_body", "xid": x.xid, "key": self.key,
                        "ts": ts, "data": body})
        if status is MORE:
            return False
        self.chunked = None
        if status is BAD:  # as when h11 raises a protocol error
            self.stats["skipped.malformed_http"] += 1
            self.resp_broken = True
            self._end(x, ts, out, x.incomplete or "malformed_http")
            return False
        if status is not DONE:  # trailer fields: h11 parses them, from the last chunk on
            self.resp = self._resume_chunked(x)
            self.resp.receive_data(rest)
            return True
        self._end(x, ts, out, x.incomplete)
        if not self.keep:
            self._resp_closed(ts, out)
            return False
        self.resp = None
        self.resp_pending.set(rest)
        return True

    def _resume_chunked(self, x: _Exchange) -> h11.Connection:
        """An h11 parser in the state h11 would be in at a chunk boundary of
        the body of ``self.head``: fed the same request and an equivalent head."""
        e = self.head
        assert e is not None
        p = _new_resp_parser()
        p.send(_request_line(x))
        p.send(_EOM)
        head = [b"HTTP/%s %d \r\ntransfer-encoding: chunked\r\n" % (e.http_version, e.status_code)]
        head += [b"connection: %s\r\n" % v for k, v in e.headers if k == b"connection"]
        p.receive_data(b"".join(head) + b"\r\n")
        if type(p.next_event()) is not h11.Response:  # pragma: no cover - a bug
            raise RuntimeError("could not resume a chunked body")
        return p

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
        if self.chunked is not None or self.body_left:
            # the body was cut short: h11 would raise a protocol error at EOF
            self.chunked = None
            self.body_left = 0
            self.resp_broken = True
        if not self.dead and not self.resp_broken:
            if self.cur_resp is not None or self.queue:
                if self.resp is not None:
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
