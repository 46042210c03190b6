"""Stage 2: `StreamData` byte streams -> HTTP/1.x exchanges, parsed with
httptools (llhttp).

Each connection has two readers, one per direction, and the queue of
exchanges whose request has been read and whose response has not::

    requests  --RequestReader-->   queue of _Exchange   <--ResponseReader--  responses

A reader's state is one of `ReaderState` (the table below). llhttp parses
heads and frames every body (Content-Length, chunked with trailers,
close-delimited); this module decides only what llhttp cannot know from one
direction: that a response answers HEAD or CONNECT (a head without a body),
and what happens after a protocol switch.

A request with Upgrade answered by 101 Switching Protocols is handed over:
instead of that exchange's `HttpResponse` and `HttpEnd` comes one
`StreamSwitched` (with the request and the 101), then the bytes that
followed in either direction, and from then on the connection's
`StreamData` and `StreamEnd` pass through untouched, for the WebSocket
stage.

Output, in this order per exchange (``xid`` is unique in the Pipeline)::

    HttpRequest    method, target, headers, body (wire bytes, capped)
    HttpResponse   status, headers            (the final response only)
    HttpBody       data                       (wire bytes, zero or more)
    HttpEnd        incomplete reason or None, response body size

Lost bytes (``gap``/``trunc``) inside a message are replaced with NUL filler
(up to MAX_FILL per loss), so Content-Length and chunk framing stay aligned
and the next exchange on the connection still parses; the exchange is
marked incomplete. A protocol error breaks one direction until a later read
starts a new message there (a resync); it never affects other connections.
"""
from __future__ import annotations

import abc
import enum
import itertools
from collections import OrderedDict, deque

import httptools

from .base import (ConnKey, Headers, HttpBody, HttpEnd, HttpRequest, HttpResponse, Stats, StreamData, StreamEnd,
                   StreamSwitched, xids)
from .budget import BodyBudget, BodyHold
from .reassembly import REQUEST, classify_prefix

MAX_HEADER_BYTES = 1 << 20  # a head longer than this is malformed
MAX_REQUEST_BODY = 64 << 20  # kept for the LLM stage; bigger bodies are counted, not kept
MAX_FILL = 1 << 20  # a loss longer than this inside a message breaks the direction instead
MAX_HELD = 1 << 20  # response bytes no request asked for (yet), held at most
MAX_CONNS = 4096  # connections with state; beyond this the least recently used is ended
MAX_CAREFUL = 256 << 10  # bytes parsed one at a time to find where a response before one to HEAD ends
_FILL_PIECE = b"\0" * MAX_FILL

class ReaderState(enum.Enum):
    MESSAGES = "reading messages"  # llhttp parses, message after message
    HEAD_ONLY = "a head without a body"  # the response to HEAD or CONNECT: bytes held to the head's end
    SWITCH_BODY = "the body of a request asking to switch"  # llhttp skips it: read here by Content-Length
    AWAIT_SWITCH = "a protocol switch was asked for"  # request side: held until the response decides
    SWITCHED = "another protocol"  # after 101 or CONNECT 2xx: not HTTP any more
    BROKEN = "after a protocol error"  # skipped until a read starts a new message
    CLOSED = "closed"  # Connection: close was honoured, or the connection ended


class _Stop(Exception):
    """Raised from a parser callback to stop llhttp where it is."""


class _Unanswered(_Stop):
    """A response began that no request asked for: the rest of the read is
    dropped."""


class _Exchange:
    __slots__ = ("xid", "started", "tid", "comm", "method", "target", "headers", "version", "body",
                 "body_size", "capped", "incomplete", "responded", "resp_size", "switch", "until_close", "early",
                 "ended", "head", "switch_response", "hold", "keep_alive")

    def __init__(self, started: int, tid: int, comm: str) -> None:
        self.xid = next(xids)
        self.hold: BodyHold | None = None  # the request body's share of the pipeline's body budget, once it has one
        self.started = started
        self.tid = tid
        self.comm = comm
        self.method = ""
        self.target = b""
        self.headers: Headers = []
        self.version = "1.1"
        self.body: list[bytes] = []
        self.body_size = 0
        self.capped = False
        self.incomplete: str | None = None
        self.responded = False
        self.resp_size = 0
        self.switch = False  # the request asked to switch protocols (CONNECT, Upgrade)
        self.until_close = False  # the response body ends when the connection does
        self.keep_alive = True  # the client means to send more requests after this one
        # A response read before its request: its events, until the request comes.
        self.early: list[object] | None = None
        self.ended = False
        self.head: HttpRequest | None = None  # a request that asked to switch, as passed on
        self.switch_response: HttpResponse | None = None  # its 101, handed over in a StreamSwitched


def _until_close(status: int, method: str, headers: Headers) -> bool:
    """A response body that only the end of the connection delimits
    (RFC 9112 6.3: no Content-Length, not chunked, a status with a body)."""
    if method == "HEAD" or status < 200 or status in (204, 304):
        return False
    for k, v in headers:
        if k == b"content-length":
            return False
        if k == b"transfer-encoding" and v.lower().rstrip().endswith(b"chunked"):
            return False
    return True


class _Reader(abc.ABC):
    """One direction of a connection. llhttp calls its on_* methods."""

    __slots__ = ("c", "state", "parser", "in_message", "lost", "ts", "tid", "comm", "held", "scan", "x",
                 "headers", "head_done")
    parser_class: type = httptools.HttpRequestParser

    def __init__(self, c: _Connection) -> None:
        self.c = c
        self.state = ReaderState.MESSAGES
        self.parser: httptools.HttpRequestParser | httptools.HttpResponseParser | None = None
        self.in_message = False
        self.lost: str | None = None  # bytes were lost at a message boundary: the next message is incomplete
        self.ts = 0
        self.tid = 0
        self.comm = ""
        self.held = bytearray()
        self.scan = 0
        self.x: _Exchange | None = None
        self.headers: Headers = []
        self.head_done = False

    def feed(self, ev: StreamData) -> None:
        self.ts, self.tid, self.comm = ev.ts, ev.tid, ev.comm
        data = ev.data
        if ev.gap:
            data = self._lose("gap", ev.gap) + data
        if data:
            if self.state is ReaderState.MESSAGES:  # most reads: straight to llhttp
                self._parse(data)
            else:
                self.data(data)
        if ev.trunc and self.c.tunnel:  # handed over in this read: the loss goes with the bytes
            self.c.out.append(StreamData(self.c.key, ev.role, b"", 0, ev.trunc, ev.ts, self.c.pid, ev.tid, ev.comm,
                                         self.c.conn, self.c.side))
        elif ev.trunc:
            fill = self._lose("truncated", ev.trunc)
            if fill:
                self.data(fill)

    def _lose(self, reason: str, n: int) -> bytes:
        """Bytes of this direction were lost: the filler that keeps a
        message's framing, or nothing at a boundary or for a large loss."""
        self.c.stats["bytes.lost_in_http"] += n
        if self.state is not ReaderState.MESSAGES or not self.in_message:
            self.lost = self.lost or reason
            return b""
        self._mark(reason)
        if not self.head_done:  # a head with a hole in it is not to be patched up
            return b""
        if n > MAX_FILL:
            self.break_off(reason)
            return b""
        return _FILL_PIECE[:n]

    def _mark(self, reason: str) -> None:
        if self.x is not None:
            self.x.incomplete = self.x.incomplete or reason

    def data(self, data: bytes) -> None:
        state = self.state
        if state is ReaderState.MESSAGES:
            self._parse(data)
        elif state is ReaderState.BROKEN:
            if self.starts_message(data):
                self.state = ReaderState.MESSAGES
                self.parser = None
                self.lost = None
                self.data(data)
            else:
                self.c.stats["skipped.bytes"] += len(data)
        else:
            self.other_state(data)

    def _new_parser(self) -> httptools.HttpRequestParser | httptools.HttpResponseParser:
        parser = self.parser_class(self)
        # What peers that talk to each other accept, this observer must too:
        # blanks after a chunk size, bare LF line ends.
        parser.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True, lenient_optional_cr_before_lf=True)
        return parser  # type: ignore[no-any-return]

    def _parse(self, data: bytes) -> None:
        if self.parser is None:
            self.parser = self._new_parser()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as up:
            self.switched(data[up.args[0]:])
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised: a _Stop is ours.
            stop = exc.__context__
            if isinstance(stop, _Unanswered):
                raise stop from None
            if not isinstance(stop, _Stop) and self.state is ReaderState.MESSAGES:
                self.c.stats["skipped.malformed_http"] += 1
                self.break_off("malformed_http")

    def break_off(self, reason: str) -> None:
        """This direction cannot be parsed until a new message starts."""
        self.state = ReaderState.BROKEN
        self.parser = None
        self.in_message = False
        self.ended_badly(reason)

    # llhttp callbacks shared by both directions
    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.head_done:
            self.headers.append((name.lower(), value.strip(b" \t")))

    # what each direction does
    @abc.abstractmethod
    def starts_message(self, data: bytes) -> bool:
        """Whether a read starts a new message of this direction (a resync point)."""

    @abc.abstractmethod
    def other_state(self, data: bytes) -> None:
        """Bytes in a state other than MESSAGES and BROKEN."""

    @abc.abstractmethod
    def switched(self, rest: bytes) -> None:
        """llhttp stopped at a protocol switch; `rest` followed it."""

    @abc.abstractmethod
    def ended_badly(self, reason: str) -> None:
        """The message being read cannot be finished."""


class _RequestReader(_Reader):
    __slots__ = ("pending", "body_left")
    parser_class = httptools.HttpRequestParser

    def __init__(self, c: _Connection) -> None:
        super().__init__(c)
        self.pending: list[StreamData] = []  # what followed a request that asked to switch protocols
        self.body_left = 0  # Content-Length bytes of such a request's body still to come

    def starts_message(self, data: bytes) -> bool:
        return classify_prefix(data[:24]) == REQUEST

    def on_message_begin(self) -> None:
        self.in_message = True
        self.head_done = False
        x = self.x = _Exchange(self.ts, self.tid, self.comm)
        self.headers = x.headers
        if self.lost:
            x.incomplete = self.lost
            self.lost = None

    def on_url(self, url: bytes) -> None:
        x = self.x
        if x is not None:
            x.target += url

    def on_headers_complete(self) -> None:
        x = self.x
        parser = self.parser
        if x is None or parser is None:
            return
        self.head_done = True
        x.method = parser.get_method().decode("latin-1")  # type: ignore[union-attr]
        x.version = parser.get_http_version()
        x.switch = parser.should_upgrade()
        x.keep_alive = parser.should_keep_alive()  # llhttp reads Connection and the version
        if x.switch:
            # llhttp leaves the body of such a request to the caller
            self.body_left = next((int(v) for k, v in x.headers if k == b"content-length" and v.isdigit()), 0)

    def on_body(self, body: bytes) -> None:
        x = self.x
        if x is None:
            return
        x.body_size += len(body)
        if not x.capped:
            if x.hold is None:
                x.hold = self.c.budget.hold()
            if x.body_size > MAX_REQUEST_BODY:
                x.capped = True
            elif not x.hold.reserve(len(body)):
                x.capped = True
                self.c.stats["skipped.body_budget"] += 1
            else:
                x.body.append(body)
                return
            x.body = []
            if x.hold is not None:
                x.hold.release()

    def on_message_complete(self) -> None:
        self.in_message = False
        if self.body_left:
            return  # the body follows, read in switched()
        x, self.x = self.x, None
        if x is not None:
            self.c.request_done(x)

    def feed(self, ev: StreamData) -> None:
        if self.state is ReaderState.AWAIT_SWITCH:
            self._hold(ev)
        else:
            super().feed(ev)

    def _hold(self, ev: StreamData) -> None:
        """Bytes after a request that asked to switch protocols, kept as they
        came (losses included) until the server's answer says what they are."""
        size = sum(len(e.data) for e in self.pending) + len(ev.data)
        if size > MAX_HELD:
            self.c.stats["skipped.bytes"] += size
            self.pending = []
            self.state = ReaderState.BROKEN
            return
        self.pending.append(ev)

    def _lose(self, reason: str, n: int) -> bytes:
        if self.state is ReaderState.SWITCH_BODY:
            self.c.stats["bytes.lost_in_http"] += n
            self._mark(reason)
            return _FILL_PIECE[:min(n, MAX_FILL)]
        if self.state is ReaderState.AWAIT_SWITCH:
            self._hold(self._piece(b"", 0, n) if reason == "truncated" else self._piece(b"", n, 0))
            return b""
        return super()._lose(reason, n)

    def _piece(self, data: bytes, gap: int, trunc: int) -> StreamData:
        c = self.c
        return StreamData(c.key, "req", data, gap, trunc, self.ts, c.pid, self.tid, self.comm, c.conn, c.side)

    def switched(self, rest: bytes) -> None:
        # CONNECT, or an Upgrade: what follows is HTTP again only if the server refuses
        self.state = ReaderState.SWITCH_BODY if self.body_left else ReaderState.AWAIT_SWITCH
        if rest:
            self.other_state(rest)

    def other_state(self, data: bytes) -> None:
        if self.state is ReaderState.SWITCH_BODY:
            n = self.body_left
            self.on_body(data[:n])
            self.body_left = max(0, n - len(data))
            if self.body_left:
                return
            self.state = ReaderState.AWAIT_SWITCH
            data = data[n:]
            x, self.x = self.x, None
            if x is not None:
                self.c.request_done(x)
            if not data:
                return
        if self.state is ReaderState.AWAIT_SWITCH:
            self._hold(self._piece(data, 0, 0))
        else:
            self.c.stats["skipped.bytes"] += len(data)

    def switch_decided(self, switched: bool) -> None:
        """The server answered the request that asked to switch protocols."""
        if self.state is not ReaderState.AWAIT_SWITCH:
            return
        pending, self.pending = self.pending, []
        if switched:
            self.state = ReaderState.SWITCHED
            if self.c.tunnel:
                self.c.handed = pending  # passed on after the StreamSwitched
            else:
                self.c.stats["skipped.bytes"] += sum(len(e.data) for e in pending)
            return
        self.state = ReaderState.MESSAGES
        self.parser = None
        now = (self.ts, self.tid, self.comm)
        for ev in pending:
            self.feed(ev)
        self.ts, self.tid, self.comm = now

    def ended_badly(self, reason: str) -> None:
        x, self.x = self.x, None
        if x is not None and x.method:  # a head that never completed is no request
            x.incomplete = x.incomplete or reason
            self.c.request_done(x)

    def close(self, reason: str) -> None:
        if self.state is ReaderState.AWAIT_SWITCH and self.pending:
            # Never answered: what followed is read as the requests it looks like.
            self.switch_decided(False)
        if self.state is ReaderState.SWITCH_BODY:
            self.state = ReaderState.CLOSED
            self.ended_badly(reason)
        elif self.in_message:
            self.in_message = False
            self.ended_badly(reason)


class _ResponseReader(_Reader):
    __slots__ = ("status", "final", "arranged", "head_only", "careful", "completed", "body_parts", "_body_at")
    parser_class = httptools.HttpResponseParser

    def __init__(self, c: _Connection) -> None:
        super().__init__(c)
        self.status = 0
        self.final = False
        # The exchange whose response to HEAD or CONNECT is read as a head alone.
        self.arranged: _Exchange | None = None
        self.head_only = False  # llhttp is fed that head (and nothing else) right now
        self.careful = 0  # bytes parsed one at a time so far (see _parse)
        self.completed = False  # a message ended in the last feed
        self.body_parts: list[bytes] | None = None  # body bytes gathered while parsing one at a time
        self._body_at = 0  # where in the output they go

    def starts_message(self, data: bytes) -> bool:
        return data[:7] == b"HTTP/1."

    def _hold(self, data: bytes) -> None:
        """The response to HEAD or CONNECT: bytes held until its head is whole."""
        self.held += data
        self._head_only()

    def _parse(self, data: bytes) -> None:
        queue = self.c.queue
        if queue and not self.in_message:
            x = queue[0]
            if x.method in ("HEAD", "CONNECT") and self.arranged is not x:
                # its head is read here: llhttp would take a Content-Length in it for a body
                self.arranged = x
                self.state = ReaderState.HEAD_ONLY
                self.scan = 0
                self._hold(data)
                return
        if len(queue) < 2 or not any(x.method in ("HEAD", "CONNECT") for x in itertools.islice(queue, 1, None)):
            try:
                super()._parse(data)
            except _Unanswered:
                self.c.stats["skipped.bytes"] += len(data)
            return
        # A response to HEAD or CONNECT waits behind this one, and llhttp
        # cannot say where this one ends: it is fed a byte at a time (rare:
        # it takes pipelining), its body gathered into one HttpBody per read.
        self.body_parts = []
        try:
            for i in range(len(data)):
                self.completed = False
                super()._parse(data[i:i + 1])
                self.careful += 1
                if self.state is not ReaderState.MESSAGES:
                    self.c.stats["skipped.bytes"] += len(data) - i - 1
                    return
                if self.completed:
                    self._flush_body()
                    rest = data[i + 1:]
                    if rest:
                        self.data(rest)
                    return
                if self.careful > MAX_CAREFUL:
                    self.c.stats["skipped.pipelined_head"] += 1
                    self.break_off("malformed_http")
                    return
        finally:
            self._flush_body()
            self.body_parts = None

    def _flush_body(self) -> None:
        parts = self.body_parts
        if parts:
            x = self.x or (self.c.queue[0] if self.c.queue else None)
            self.body_parts = []
            if x is not None:
                body = HttpBody(x.xid, self.c.key, self.ts, b"".join(parts))
                if x.early is None:
                    self.c.out.insert(self._body_at, body)
                else:
                    x.early.append(body)

    def _head_only(self) -> None:
        held = self.held
        end = held.find(b"\r\n\r\n", self.scan)
        if end < 0:
            self.scan = max(0, len(held) - 3)
            if len(held) > MAX_HEADER_BYTES:
                self.c.stats["skipped.malformed_http"] += 1
                self.held = bytearray()
                self.break_off("malformed_http")
            return
        head, rest = bytes(held[:end + 4]), bytes(held[end + 4:])
        self.held = bytearray()
        self.state = ReaderState.MESSAGES
        x = self.c.queue[0]
        self.parser = self._new_parser()
        self.head_only = True
        try:
            self.parser.feed_data(head)
        except httptools.HttpParserError as exc:
            if not isinstance(exc.__context__, _Stop):
                self.c.stats["skipped.malformed_http"] += 1
                self.break_off("malformed_http")
        finally:
            self.head_only = False
            self.parser = None
        if self.state is not ReaderState.MESSAGES:
            return
        if not self.final:  # a 1xx: the final response follows
            self.in_message = False
            self.arranged = None
            if rest:
                self.data(rest)
        elif x.method == "CONNECT" and 200 <= self.status < 300:
            self._end(x)
            self.c.switched(rest)
        elif x.method == "CONNECT":  # refused: an ordinary response, body and all
            self.in_message = False
            self.final = False
            self.c.requests.switch_decided(False)
            self.data(head + rest)
        else:  # HEAD: no body, whatever the head says
            self._end(x)
            if not self.c.keep_alive:
                self.c.close_responses("connection_closed")
            elif rest:
                self.data(rest)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        c = self.c
        if not c.queue:
            if c.requests.state is ReaderState.BROKEN or c.early_size > MAX_HELD:
                # Answers to requests that could not be parsed, or a pile of
                # responses no request asked for: matched with the next request
                # they would be attributed wrongly, so they are counted and
                # dropped until a read starts a response again.
                c.drop_early()
                c.stats["skipped.unanswered_responses"] += 1
                self.break_off("malformed_http")
                raise _Unanswered
            # Read before its request (the capture saw the answer first): kept
            # aside until the request comes.
            x = _Exchange(self.ts, self.tid, self.comm)
            x.early = []
            c.early.append(x)
            c.queue.append(x)
        x = c.queue[0]
        if x.method in ("HEAD", "CONNECT") and self.arranged is not x:
            # A response to HEAD pipelined behind another in the same read:
            # llhttp would read its head's Content-Length as a body.
            c.stats["skipped.pipelined_head"] += 1
            x.incomplete = x.incomplete or "malformed_http"
            self.break_off("malformed_http")
            raise _Stop
        self.in_message = True
        self.head_done = False
        self.x = x
        self.headers = []
        if self.lost:
            x.incomplete = x.incomplete or self.lost
            self.lost = None

    def on_headers_complete(self) -> None:
        x = self.x
        parser = self.parser
        if x is None or parser is None:
            return
        self.head_done = True
        status = parser.get_status_code()  # type: ignore[union-attr]
        self.status = status
        self.final = status >= 200 or status == 101
        if not self.final:
            return
        x.responded = True
        x.until_close = _until_close(status, x.method, self.headers)
        self.c.keep_alive = parser.should_keep_alive() and x.keep_alive
        head = HttpResponse(x.xid, self.c.key, self.ts, status, self.headers, parser.get_http_version())
        if status == 101 and x.head is not None and x.early is None and x.method != "CONNECT":
            x.switch_response = head
            self.c.tunnel = True
        else:
            self._emit(x, head)
        if x.switch or status == 101:
            self.c.requests.switch_decided(status == 101)

    def on_body(self, body: bytes) -> None:
        x = self.x
        if x is not None and self.final and not self.head_only:
            x.resp_size += len(body)
            if self.body_parts is None:
                self._emit(x, HttpBody(x.xid, self.c.key, self.ts, body))
            else:
                if not self.body_parts:
                    self._body_at = len(self.c.out)
                self.body_parts.append(body)

    def on_message_complete(self) -> None:
        if self.head_only:
            return  # the head is all there is; _head_only ends the exchange
        self.in_message = False
        x = self.x
        if x is None or not self.final:
            return  # a 1xx: the same request's final response follows
        self._flush_body()
        self.completed = True
        self.careful = 0
        self._end(x)
        if self.status == 101:
            return  # llhttp raises HttpParserUpgrade next
        if not self.c.keep_alive:
            self.c.close_responses("connection_closed")
            raise _Stop

    def _emit(self, x: _Exchange, ev: HttpResponse | HttpBody | HttpEnd) -> None:
        if x.early is None:
            self.c.out.append(ev)
        else:
            x.early.append(ev)
            if type(ev) is HttpBody:
                self.c.early_size += len(ev.data)

    def _end(self, x: _Exchange, incomplete: str | None = None) -> None:
        c = self.c
        if c.queue and c.queue[0] is x:
            c.queue.popleft()
        if x.early is not None and not x.responded:
            # Bytes no request asked for, which were not even a response.
            c.early.remove(x)
            c.stats["skipped.unanswered_responses"] += 1
            self.x = None
            self.in_message = False
            return
        self.x = None
        self.final = False
        self.in_message = False
        x.ended = True
        if x.early is None:
            c.stats["http.exchanges"] += 1
        if x.switch_response is not None and x.head is not None:
            c.stats["http.switched"] += 1
            c.out.append(StreamSwitched(x.xid, c.key, self.ts, x.head, x.switch_response))
            return
        self._emit(x, HttpEnd(x.xid, c.key, self.ts, incomplete or x.incomplete, x.responded, x.resp_size))

    def switched(self, rest: bytes) -> None:
        self.c.switched(rest)

    def other_state(self, data: bytes) -> None:
        if self.state is ReaderState.HEAD_ONLY:
            self._hold(data)
        else:
            self.c.stats["skipped.bytes"] += len(data)

    def ended_badly(self, reason: str) -> None:
        x = self.x
        if x is not None:
            self._end(x, x.incomplete or reason)

    def close(self, reason: str) -> None:
        x = self.x
        if x is not None and self.in_message:
            if x.until_close and self.final:  # the close is the end of its body
                self._end(x)
                self.c.close_responses("connection_closed")
            else:
                self._end(x, x.incomplete or reason)


class _Connection:
    __slots__ = ("key", "pid", "conn", "side", "stats", "budget", "out", "queue", "requests", "responses",
                 "keep_alive", "last_ts", "early", "early_size", "tunnel", "handed")

    def __init__(self, ev: StreamData, stats: Stats, budget: BodyBudget) -> None:
        self.key: ConnKey = ev.key
        self.budget = budget
        self.pid = ev.pid
        self.conn = ev.conn
        self.side = ev.side
        self.stats = stats
        self.out: list[object] = []
        self.queue: deque[_Exchange] = deque()
        self.requests = _RequestReader(self)
        self.responses = _ResponseReader(self)
        self.keep_alive = True
        self.last_ts = ev.ts
        self.early: deque[_Exchange] = deque()  # responses read before their requests
        self.early_size = 0
        self.tunnel = False  # switched by a 101: bytes pass on to the next stage
        self.handed: list[StreamData] = []  # request bytes that followed the request that switched

    def request_done(self, x: _Exchange) -> None:
        self.stats["http.requests"] += 1
        answer = self.early.popleft() if self.early else None
        if answer is not None:
            x.xid = answer.xid  # the response's events already carry it
        req = HttpRequest(
            x.xid, self.key, x.started, self.requests.ts, self.pid, x.tid, x.comm, self.conn, self.side,
            x.method, x.target.decode("latin-1"), x.headers, x.version, b"".join(x.body), x.body_size, x.capped,
            x.incomplete)
        self.out.append(req)
        if x.switch:
            x.head = req
        x.body = []
        if x.hold is not None:  # handed on: the LLM stage keeps what it needs of it
            x.hold.release()
        if answer is None:
            self.queue.append(x)
            return
        assert answer.early is not None
        self.out += answer.early
        self.early_size -= sum(len(e.data) for e in answer.early if isinstance(e, HttpBody))
        answer.early = None
        answer.method, answer.switch = x.method, x.switch
        if answer.ended:
            self.stats["http.exchanges"] += 1
            if answer in self.queue:
                self.queue.remove(answer)

    def drop_early(self) -> None:
        """Responses read before a request that never came."""
        for x in self.early:
            self.stats["skipped.unanswered_responses"] += 1
            if x in self.queue:
                self.queue.remove(x)
        self.stats["skipped.bytes"] += self.early_size
        self.early.clear()
        self.early_size = 0

    def switched(self, rest: bytes) -> None:
        """The connection now carries another protocol (101, CONNECT 2xx)."""
        if self.tunnel:
            self.responses.state = ReaderState.SWITCHED
            self.requests.switch_decided(True)
            self.out += self.handed
            self.handed = []
            if rest:
                r = self.responses
                self.out.append(StreamData(self.key, "resp", rest, 0, 0, r.ts, self.pid, r.tid, r.comm, self.conn,
                                           self.side))
            return
        self.stats["skipped.upgrade"] += 1
        self.stats["skipped.bytes"] += len(rest)
        self.responses.state = ReaderState.SWITCHED
        self.requests.switch_decided(True)
        self.close_responses("connection_closed")

    def close_responses(self, reason: str) -> None:
        """No more responses can be read on this connection."""
        responses = self.responses
        if responses.state is not ReaderState.SWITCHED:
            responses.state = ReaderState.CLOSED
        responses.parser = None
        while self.queue:
            responses._end(self.queue[0], self.queue[0].incomplete or reason)

    def close(self, reason: str, ts: int) -> list[object]:
        self.requests.ts = self.responses.ts = ts
        self.requests.close(reason)
        self.responses.close(reason)
        self.drop_early()
        self.close_responses(reason)
        out, self.out = self.out, []
        return out


class Http1Parser:
    def __init__(self, stats: Stats, budget: BodyBudget | None = None) -> None:
        self.stats = stats
        self.budget = budget if budget is not None else BodyBudget()
        self._conns: OrderedDict[ConnKey, _Connection] = OrderedDict()
        self._failed: set[ConnKey] = set()  # dropped after an internal error

    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is not StreamData:
            if t is StreamEnd:
                return self._end(ev)  # type: ignore[arg-type]
            return [ev]
        piece: StreamData = ev  # type: ignore[assignment]
        key = piece.key
        conns = self._conns
        c = conns.get(key)
        evicted: list[object] = []
        if c is None:
            if key in self._failed:
                return []
            if len(conns) >= MAX_CONNS:
                # The connection used least recently is ended: a long capture
                # of processes that never exit keeps at most MAX_CONNS states.
                self.stats["http.evicted"] += 1
                old = next(iter(conns))
                evicted = self._drop(old, "evicted", conns[old].last_ts)
            c = conns[key] = _Connection(piece, self.stats, self.budget)
        else:
            if c.tunnel:
                c.last_ts = piece.ts
                return [ev]
            conns.move_to_end(key)
        c.last_ts = piece.ts
        try:
            (c.requests if piece.role == "req" else c.responses).feed(piece)
        except Exception:  # a bug must not take other connections down
            self.stats["errors.http"] += 1
            self._failed.add(key)
            if len(self._failed) > MAX_CONNS:
                self._failed.clear()
            return evicted + self._drop(key, "internal_error", piece.ts)
        out, c.out = c.out, []
        return evicted + out if evicted else out

    def _end(self, ev: StreamEnd) -> list[object]:
        self._failed.discard(ev.key)
        c = self._conns.get(ev.key)
        if c is None:
            return []
        return self._drop(ev.key, ev.reason, ev.ts if ev.ts is not None else c.last_ts)

    def _drop(self, key: ConnKey, reason: str, ts: int, end_tunnel: bool = True) -> list[object]:
        c = self._conns.pop(key, None)
        if c is None:
            return []
        try:
            out = c.close(reason, ts)
        except Exception:
            self.stats["errors.http"] += 1
            out = []
        if c.tunnel and end_tunnel:  # the next stage owns the rest of the connection
            out.append(StreamEnd(key, reason, ts))
        return out

    def close(self) -> list[object]:
        out: list[object] = []
        for key in list(self._conns):
            # a switched connection is ended by the stage it was handed to
            out += self._drop(key, "end_of_capture", self._conns[key].last_ts, end_tunnel=False)
        return out


def header_value(headers: Headers, name: bytes) -> str | None:
    """The (comma-joined) value of a lower-case header name, or None."""
    vals = [v for k, v in headers if k == name]
    if not vals:
        return None
    return b", ".join(vals).decode("latin-1")


def headers_dict(headers: Headers) -> dict[str, str]:
    d: dict[str, str] = {}
    for k, v in headers:
        ks = k.decode("latin-1")
        vs = v.decode("latin-1")
        d[ks] = d[ks] + ", " + vs if ks in d else vs
    return d
