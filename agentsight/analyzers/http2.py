"""Stage 2 for HTTP/2: `StreamData` of h2 connections -> the same HTTP
exchange events the HTTP/1.1 stage makes (`HttpRequest`, `HttpResponse`,
`HttpBody`, `HttpEnd`, with ``protocol="h2"``).

Frames are parsed with hyperframe and header blocks decoded with hpack, one
decoder per direction. h2's `H2Connection` is not used: it is an endpoint's
state machine (it enforces flow control and stream states from one side,
answers SETTINGS and PING, and raises on what an endpoint must refuse),
while this stage watches both directions of someone else's connection and
must keep going where an endpoint would give up: after lost bytes, on a
capture that began mid-connection, or on a peer that breaks a rule.
Flow control is ignored; SETTINGS only matter for HPACK, and hpack follows
the table size updates inside the header blocks themselves.

Which side is the client is read from the headers themselves (`:method` in
a request, `:status` in a response), so a connection first seen in the
middle works whichever way round it is.

Lost context. A direction is *in sync* when the frame boundaries are known:
from its first byte (the client preface, or the server's first SETTINGS),
or from a read that is exactly a run of plausible frames. Bytes lost where
no frame length can bridge them, a capture that starts mid-connection and
a header block that fails to decode all reset that direction's decoder to
an empty table. A decoder reset this way never decodes wrongly: the
encoder's newest entries are the ones the decoder saw inserted, in the same
order, and a reference to anything older is past the end of its table and
fails. Such failures are reported as ``hpack_context_lost``; nothing is
guessed.
"""
from __future__ import annotations

import struct
from collections import OrderedDict

import hpack
from hyperframe.exceptions import HyperframeError
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, GoAwayFrame, HeadersFrame, PushPromiseFrame,
                              RstStreamFrame)

from .base import ConnKey, Headers, HttpBody, HttpEnd, HttpRequest, HttpResponse, Stats, StreamData, StreamEnd, xids
from .budget import BodyBudget, BodyHold

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_REQUEST_BODY = 64 << 20  # as in the HTTP/1.1 stage
MAX_HELD = 1 << 20  # response bytes held for a request not yet whole
MAX_HEADER_BLOCK = 1 << 20  # a header block longer than this is malformed
MAX_STREAMS = 1024  # open streams per connection; beyond this the oldest is ended
MAX_CONNS = 4096
MAX_FILL = 1 << 20
_FILL = b"\0" * MAX_FILL
_HEADER = struct.Struct(">HBBBI")  # length (24 bits as H + B), type, flags, stream id

# type: (allowed flags, must have a stream, exact length or None, minimum length)
_FRAME_RULES: dict[int, tuple[int, bool | None, int | None, int]] = {
    0x0: (0x09, True, None, 0),  # DATA: END_STREAM, PADDED
    0x1: (0x2D, True, None, 0),  # HEADERS: END_STREAM, END_HEADERS, PADDED, PRIORITY
    0x2: (0x00, True, 5, 5),  # PRIORITY
    0x3: (0x00, True, 4, 4),  # RST_STREAM
    0x4: (0x01, False, None, 0),  # SETTINGS: ACK
    0x5: (0x0C, True, None, 4),  # PUSH_PROMISE: END_HEADERS, PADDED
    0x6: (0x01, False, 8, 8),  # PING: ACK
    0x7: (0x00, False, None, 8),  # GOAWAY
    0x8: (0x00, None, 4, 4),  # WINDOW_UPDATE
    0x9: (0x04, True, None, 0),  # CONTINUATION: END_HEADERS
}


def frame_run(data: bytes) -> tuple[int, bool]:
    """How many plausible HTTP/2 frames `data` starts with, and whether they
    end exactly where it does. Plausible: a known type, only the flags that
    type defines, a stream id where the type needs one (and none where it
    must not), the fixed lengths. A run that ends exactly at the end of a
    read is how frames are recognised without the preface."""
    pos, n, count = 0, len(data), 0
    while n - pos >= 9:
        hi, lo, ftype, flags, sid = _HEADER.unpack_from(data, pos)
        length = (hi << 8) | lo
        rule = _FRAME_RULES.get(ftype)
        if rule is None or sid >> 31 or flags & ~rule[0]:
            break
        allowed, needs_stream, exact, least = rule
        sid &= 0x7FFFFFFF
        if needs_stream is not None and bool(sid) != needs_stream:
            break
        if (exact is not None and length != exact) or length < least:
            break
        if ftype == 0x4 and (length % 6 or (flags & 1 and length)):
            break
        if pos + 9 + length > n:
            break
        pos += 9 + length
        count += 1
    return count, count > 0 and pos == n


def starts_connection(data: bytes) -> bool:
    """Whether a direction's first read can be where the connection starts:
    (a part of) the client preface, or the server's preface, a SETTINGS
    frame on stream 0, of which a short read holds only the first bytes."""
    n = min(len(data), 24)
    if n and data[:n] == PREFACE[:n]:
        return True
    h = data[:9]
    if len(h) >= 3 and int.from_bytes(h[:3], "big") % 6:
        return False
    if len(h) > 3 and h[3] != 0x4:
        return False
    if len(h) > 4 and h[4] & 1:
        return False
    return not any(h[5:9])


def looks_like_frames(data: bytes) -> bool:
    """A read that is one or more whole HTTP/2 frames and nothing else."""
    return frame_run(data)[1]


class _Stream:
    __slots__ = ("sid", "xid", "req_role", "pushed", "method", "target", "headers", "started", "end_ts", "tid",
                 "comm", "side", "body", "body_size", "capped", "req_done", "req_sent", "incomplete", "responded",
                 "resp_size", "resp_done", "held", "held_size", "final", "resp_length", "hold")

    def __init__(self, sid: int, role: str, ev: StreamData, side: str, hold: BodyHold) -> None:
        self.sid = sid
        self.hold = hold  # the request body's share of the pipeline's body budget
        self.xid = next(xids)
        self.req_role = role  # the direction that carries the request
        self.pushed = False
        self.method = ""
        self.target = ""
        self.headers: Headers = []
        self.started = ev.ts
        self.end_ts = ev.ts
        self.tid = ev.tid
        self.comm = ev.comm
        self.side = side
        self.body: list[bytes] = []
        self.body_size = 0
        self.capped = False
        self.req_done = False
        self.req_sent = False  # HttpRequest emitted
        self.incomplete: str | None = None
        self.responded = False
        self.resp_size = 0
        self.resp_done = False
        self.held: list[object] = []  # response events before the request is whole
        self.held_size = 0
        self.final = False  # a final (non-1xx) response head was read
        self.resp_length: int | None = None  # its content-length


class _Direction:
    """One direction of a connection: frames, and the HPACK decoder of the
    header blocks it carries."""

    __slots__ = ("role", "parts", "have", "need", "started", "synced", "decoder", "reset", "first_settings",
                 "block", "block_size", "block_sid", "block_end", "block_promised", "block_ts", "frame_data",
                 "frame_left", "preface_left")

    def __init__(self, role: str) -> None:
        self.role = role
        self.parts: list[bytes] = []  # bytes of the frame being read
        self.have = 0
        self.need = 9  # bytes needed before the next frame can be parsed
        self.started = False  # bytes have been seen
        self.synced = False  # frame boundaries known
        self.decoder = _decoder()
        self.reset = False  # the decoder was reset: failures mean lost context
        self.first_settings = False  # the direction began with a SETTINGS frame (a server's preface)
        self.block: list[bytes] | None = None  # a header block being gathered (HEADERS + CONTINUATION)
        self.block_size = 0
        self.block_sid = 0
        self.block_end = False  # its HEADERS frame ended the stream
        self.block_promised = 0  # PUSH_PROMISE: the promised stream
        self.block_ts: StreamData | None = None
        self.frame_data = False  # the frame being read is DATA (lost bytes in it can be filled)
        self.frame_left = 0  # bytes of the frame being read still to come
        self.preface_left = len(PREFACE)

    def new_decoder(self) -> None:
        self.decoder = _decoder()
        self.reset = True


def _decoder() -> hpack.Decoder:
    # An observer enforces no limits of its own: the endpoints already agreed on them.
    d = hpack.Decoder(max_header_list_size=1 << 30)
    d.max_allowed_table_size = 1 << 32
    return d


class _Connection:
    __slots__ = ("key", "pid", "conn", "side", "stats", "budget", "out", "dirs", "streams", "preface", "last_ts",
                 "before_capture")

    def __init__(self, ev: StreamData, stats: Stats, budget: BodyBudget) -> None:
        self.key: ConnKey = ev.key
        self.budget = budget
        self.pid = ev.pid
        self.conn = ev.conn
        self.side = ev.side  # as the reassembly guessed it: "client" when "req" is what the traced process sent
        self.stats = stats
        self.out: list[object] = []
        self.dirs = {"req": _Direction("req"), "resp": _Direction("resp")}
        self.streams: OrderedDict[int, _Stream] = OrderedDict()
        self.preface = False  # the client preface was seen: the connection is seen from its start
        self.last_ts = ev.ts
        self.before_capture: set[int] = set()
        stats["h2.connections"] += 1

    # -- bytes -> frames --------------------------------------------------------------
    def feed(self, ev: StreamData) -> None:
        d = self.dirs[ev.role]
        self.last_ts = ev.ts
        if ev.gap:
            self._lose(d, ev.gap, "gap", ev)
        data = ev.data
        if data:
            if not d.started:
                d.started = True
                data = self._start(d, data, ev)
            elif not d.synced:
                if looks_like_frames(data):
                    self._sync(d)
                else:
                    self.stats["skipped.bytes"] += len(data)
                    data = b""
            if data:
                self._bytes(d, data, ev)
        if ev.trunc:
            self._lose(d, ev.trunc, "truncated", ev)

    def _start(self, d: _Direction, data: bytes, ev: StreamData) -> bytes:
        """The first bytes of a direction: the preface, the server's first
        SETTINGS, or frames of a connection that began before the capture."""
        if data[:24] == PREFACE[:min(len(data), 24)]:
            # the client preface (a direction that sent only part of it goes on below)
            take = min(len(data), d.preface_left)
            d.preface_left -= take
            self.preface = True
            d.synced = True
            return data[take:]
        if starts_connection(data):
            d.first_settings = True
            d.synced = True
            return data
        if looks_like_frames(data):
            self._mid(d)
            return data
        self._mid(d)
        d.synced = False
        self.stats["skipped.bytes"] += len(data)
        return b""

    def _mid(self, d: _Direction) -> None:
        """This direction is first seen in the middle of the connection."""
        self.stats["h2.mid_connection"] += 1
        d.synced = True
        d.reset = True

    def _sync(self, d: _Direction) -> None:
        d.synced = True
        d.parts, d.have, d.need = [], 0, 9
        self.stats["h2.resync"] += 1

    def _bytes(self, d: _Direction, data: bytes, ev: StreamData) -> None:
        if d.preface_left and self.preface and d.preface_left < len(PREFACE):
            take = min(len(data), d.preface_left)
            d.preface_left -= take
            data = data[take:]
            if not data:
                return
        if d.have:
            d.parts.append(data)
            d.have += len(data)
            if d.have < d.need:
                d.frame_left = d.need - d.have
                return
            data = b"".join(d.parts)
            d.parts = []
            d.have = 0
        view = memoryview(data)
        pos, n = 0, len(data)
        while n - pos >= 9:
            length = int.from_bytes(view[pos:pos + 3], "big")
            end = pos + 9 + length
            if end > n:
                break
            try:
                frame, _ = Frame.parse_frame_header(view[pos:pos + 9])
                frame.parse_body(view[pos + 9:end])
            except HyperframeError:
                self._broken(d, ev)
                return
            pos = end
            self._frame(d, frame, ev)
            if not d.synced:  # the frame broke the direction
                return
        if pos < n:
            rest = data[pos:]
            d.parts = [rest]
            d.have = len(rest)
            d.need = 9 + int.from_bytes(rest[:3], "big") if len(rest) >= 9 else 9
            d.frame_data = len(rest) >= 9 and rest[3] == 0 and not rest[4] & 0x8
            d.frame_left = d.need - d.have
        else:
            d.need = 9
            d.frame_left = 0

    def _lose(self, d: _Direction, n: int, reason: str, ev: StreamData) -> None:
        """`n` bytes of this direction were lost."""
        self.stats["bytes.lost_in_http"] += n
        if not d.synced or not d.started:
            d.started = True
            return
        if d.have and d.have >= 9 and d.frame_data and n <= d.frame_left and n <= MAX_FILL:
            # inside a DATA frame's payload: NUL filler keeps the framing
            head = b"".join(d.parts)
            d.parts = [head]
            s = self.streams.get(int.from_bytes(head[5:9], "big") & 0x7FFFFFFF)
            if s is not None:
                s.incomplete = s.incomplete or reason
            self._bytes(d, _FILL[:n], ev)
            return
        # The frame boundaries (and any header block in the loss) are gone.
        d.synced = False
        d.parts, d.have, d.need, d.frame_left = [], 0, 9, 0
        d.block = None
        d.new_decoder()
        for s in self.streams.values():
            if s.req_role == d.role and not s.req_done or s.req_role != d.role and not s.resp_done:
                s.incomplete = s.incomplete or reason

    def _broken(self, d: _Direction, ev: StreamData) -> None:
        """A frame that does not parse: the direction waits for a read that
        starts with frames again."""
        self.stats["skipped.malformed_h2"] += 1
        d.synced = False
        d.parts, d.have, d.need, d.frame_left = [], 0, 9, 0
        d.block = None
        d.new_decoder()
        for s in self.streams.values():
            if s.req_role == d.role and not s.req_done or s.req_role != d.role and not s.resp_done:
                s.incomplete = s.incomplete or "malformed_h2"

    # -- frames ---------------------------------------------------------------------------
    def _frame(self, d: _Direction, frame: Frame, ev: StreamData) -> None:
        t = type(frame)
        if t is DataFrame:
            if d.block is not None:
                return self._broken(d, ev)
            self._data(d, frame.stream_id, frame.data, "END_STREAM" in frame.flags, ev)  # type: ignore[attr-defined]
        elif t is HeadersFrame or t is PushPromiseFrame:
            if d.block is not None:
                return self._broken(d, ev)
            d.block = [frame.data]  # type: ignore[attr-defined]
            d.block_size = len(frame.data)  # type: ignore[attr-defined]
            d.block_sid = frame.stream_id
            d.block_end = "END_STREAM" in frame.flags
            d.block_promised = frame.promised_stream_id if t is PushPromiseFrame else 0  # type: ignore[attr-defined]
            d.block_ts = ev
            if "END_HEADERS" in frame.flags:
                self._block(d, ev)
        elif t is ContinuationFrame:
            if d.block is None or frame.stream_id != d.block_sid:
                if d.reset:  # the rest of a block whose start came before the capture
                    d.new_decoder()
                    return None
                return self._broken(d, ev)
            d.block.append(frame.data)  # type: ignore[attr-defined]
            d.block_size += len(frame.data)  # type: ignore[attr-defined]
            if d.block_size > MAX_HEADER_BLOCK:
                return self._broken(d, ev)
            if "END_HEADERS" in frame.flags:
                self._block(d, ev)
        elif t is RstStreamFrame:
            self._reset(frame.stream_id, ev)
        elif t is GoAwayFrame:
            self._goaway(d, frame.last_stream_id, ev)  # type: ignore[attr-defined]
        elif d.block is not None:  # anything else inside a header block is a protocol error
            return self._broken(d, ev)
        return None

    def _block(self, d: _Direction, ev: StreamData) -> None:
        assert d.block is not None
        block = d.block[0] if len(d.block) == 1 else b"".join(d.block)
        d.block = None
        first = d.block_ts or ev
        sid, promised, end_stream = d.block_sid, d.block_promised, d.block_end
        try:
            fields = d.decoder.decode(block, raw=True)
        except (hpack.HPACKError, ValueError, IndexError):
            reason = "hpack_context_lost" if d.reset or not (self.preface or d.first_settings) else "malformed_h2"
            self.stats["h2.undecodable_headers"] += 1
            d.new_decoder()  # its table may have missed some of this block's insertions
            self._undecodable(d, sid, promised, end_stream, reason, first, ev)
            return
        headers: Headers = []
        pseudo: dict[bytes, bytes] = {}
        for k, v in fields:
            name = k if isinstance(k, bytes) else k.encode()
            value = v if isinstance(v, bytes) else v.encode()
            if name[:1] == b":":
                pseudo[name] = value
            else:
                headers.append((name.lower(), value))
        if promised:
            self._pushed(d, promised, pseudo, headers, first, ev)
        elif b":method" in pseudo:
            self._request_head(d, sid, pseudo, headers, end_stream, first, ev)
        elif b":status" in pseudo:
            self._response_head(d, sid, pseudo, headers, end_stream, ev)
        else:
            self._trailers(d, sid, end_stream, ev)

    # -- streams ------------------------------------------------------------------------
    def _side(self, role: str) -> str:
        """Who the traced process is in a stream whose request came on `role`."""
        other = "server" if self.side == "client" else "client"
        return self.side if role == "req" else other

    def _new_stream(self, sid: int, role: str, ev: StreamData) -> _Stream:
        streams = self.streams
        if len(streams) >= MAX_STREAMS:
            old = next(iter(streams.values()))
            self.stats["h2.evicted_streams"] += 1
            self._finish(old, "evicted", ev.ts)
        s = streams[sid] = _Stream(sid, role, ev, self._side(role), self.budget.hold())
        self.stats["h2.streams"] += 1
        return s

    def _request_head(self, d: _Direction, sid: int, pseudo: dict[bytes, bytes], headers: Headers,
                      end_stream: bool, first: StreamData, ev: StreamData) -> None:
        s = self.streams.get(sid)
        if s is not None and (s.method or s.req_done):
            self.stats["skipped.h2_duplicate_request"] += 1
            return
        if s is None:
            s = self._new_stream(sid, d.role, first)
        s.method = pseudo[b":method"].decode("latin-1")
        s.target = pseudo.get(b":path", b"").decode("latin-1")
        if s.method == "CONNECT" and not s.target:
            s.target = pseudo.get(b":authority", b"").decode("latin-1")
        authority = pseudo.get(b":authority")
        if authority is not None and not any(k == b"host" for k, _ in headers):
            # what an HTTP/1.1 request carries as Host (RFC 9113 8.3.1)
            headers.insert(0, (b"host", authority))
        s.headers = headers
        s.end_ts = ev.ts
        if end_stream:
            self._request_done(s, ev)

    def _pushed(self, d: _Direction, promised: int, pseudo: dict[bytes, bytes], headers: Headers,
                first: StreamData, ev: StreamData) -> None:
        """A PUSH_PROMISE: the server's request, answered on the promised stream."""
        if promised in self.streams or b":method" not in pseudo:
            return
        s = self._new_stream(promised, "resp" if d.role == "req" else "req", first)
        s.pushed = True
        s.method = pseudo[b":method"].decode("latin-1")
        s.target = pseudo.get(b":path", b"").decode("latin-1")
        authority = pseudo.get(b":authority")
        if authority is not None and not any(k == b"host" for k, _ in headers):
            headers.insert(0, (b"host", authority))
        s.headers = headers
        self._request_done(s, ev)

    def _undecodable(self, d: _Direction, sid: int, promised: int, end_stream: bool, reason: str,
                     first: StreamData, ev: StreamData) -> None:
        """A header block that could not be read: its stream is reported,
        incomplete, with what is known."""
        if promised:
            return
        s = self.streams.get(sid)
        if s is None:
            s = self._new_stream(sid, d.role, first)
            s.incomplete = reason
            if end_stream:
                self._request_done(s, ev)
            return
        s.incomplete = s.incomplete or reason
        if d.role == s.req_role and not s.pushed:
            if end_stream:
                self._request_done(s, ev)
        elif end_stream:
            self._response_done(s, ev)

    def _request_done(self, s: _Stream, ev: StreamData) -> None:
        s.req_done = True
        s.end_ts = ev.ts
        self._emit_request(s)

    def _emit_request(self, s: _Stream) -> None:
        if s.req_sent:
            return
        s.req_sent = True
        self.stats["http.requests"] += 1
        self.out.append(HttpRequest(
            s.xid, self.key, s.started, s.end_ts, self.pid, s.tid, s.comm, self.conn, s.side, s.method, s.target,
            s.headers, "2", b"".join(s.body), s.body_size, s.capped or not s.req_done, s.incomplete, "h2"))
        s.body = []
        s.hold.release()  # handed on: the LLM stage keeps what it needs of it
        if s.held:
            self.out += s.held
            s.held = []

    def _response(self, s: _Stream, ev: object, size: int = 0) -> None:
        if s.req_sent:
            self.out.append(ev)
            return
        s.held.append(ev)
        s.held_size += size
        if s.held_size > MAX_HELD:  # a request that is still being sent: reported with what came
            self._emit_request(s)

    def _response_head(self, d: _Direction, sid: int, pseudo: dict[bytes, bytes], headers: Headers,
                       end_stream: bool, ev: StreamData) -> None:
        s = self.streams.get(sid)
        if s is None:
            self._before_capture(sid)
            return
        if d.role == s.req_role and not s.pushed:
            self.stats["skipped.h2_misdirected"] += 1
            return
        try:
            status = int(pseudo[b":status"])
        except ValueError:
            status = 0
        if not s.final and (status >= 200 or status < 100):
            s.final = True
            s.responded = True
            length = next((v for k, v in headers if k == b"content-length"), b"")
            s.resp_length = int(length) if length.isdigit() else None
            self._response(s, HttpResponse(s.xid, self.key, ev.ts, status, headers, "2"))
        if end_stream:
            self._response_done(s, ev)

    def _trailers(self, d: _Direction, sid: int, end_stream: bool, ev: StreamData) -> None:
        s = self.streams.get(sid)
        if s is None:
            self._before_capture(sid)
            return
        if d.role == s.req_role and not s.pushed:
            if end_stream:
                self._request_done(s, ev)
        elif end_stream:
            self._response_done(s, ev)

    def _data(self, d: _Direction, sid: int, data: bytes, end_stream: bool, ev: StreamData) -> None:
        s = self.streams.get(sid)
        if s is None:
            self._before_capture(sid)
            self.stats["skipped.bytes"] += len(data)
            return
        if d.role == s.req_role and not s.pushed:
            if data:
                s.body_size += len(data)
                if not s.capped:
                    if s.body_size > MAX_REQUEST_BODY:
                        s.capped = True
                    elif not s.hold.reserve(len(data)):
                        s.capped = True
                        self.stats["skipped.body_budget"] += 1
                    else:
                        s.body.append(data)
                    if s.capped:
                        s.body = []
                        s.hold.release()
            if end_stream:
                self._request_done(s, ev)
            return
        if data:
            s.resp_size += len(data)
            out = self.out
            last = out[-1] if out and s.req_sent else None
            if type(last) is HttpBody and last.xid == s.xid:
                last.data += data  # frames of one stream in one read: one body event
            else:
                self._response(s, HttpBody(s.xid, self.key, ev.ts, data), len(data))
        if end_stream:
            self._response_done(s, ev)

    def _response_done(self, s: _Stream, ev: StreamData) -> None:
        s.resp_done = True
        self._finish(s, None, ev.ts)

    def _finish(self, s: _Stream, reason: str | None, ts: int) -> None:
        """The stream's exchange ends: its request first, if it never ended."""
        self.streams.pop(s.sid, None)
        if not s.req_sent:
            if reason is not None and not s.req_done:
                s.incomplete = s.incomplete or reason
            self._emit_request(s)
        # A body as long as its content-length is whole, even if the END_STREAM
        # after it never came (a client that stops reading once it has it).
        whole = s.resp_done or s.resp_length is not None and s.resp_size >= s.resp_length
        incomplete = s.incomplete or (None if whole else reason)
        self.stats["http.exchanges"] += 1
        self.out.append(HttpEnd(s.xid, self.key, ts, incomplete, s.responded, s.resp_size))

    def _reset(self, sid: int, ev: StreamData) -> None:
        s = self.streams.get(sid)
        if s is not None:
            self.stats["h2.reset_streams"] += 1
            self._finish(s, "stream_reset", ev.ts)

    def _goaway(self, d: _Direction, last: int, ev: StreamData) -> None:
        """Streams the sender of GOAWAY never processed (those its peer
        opened after `last_stream_id`) end; the others go on."""
        self.stats["h2.goaway"] += 1
        for s in list(self.streams.values()):
            if s.sid > last and s.req_role != d.role and not s.pushed:
                self._finish(s, "goaway", ev.ts)

    def _before_capture(self, sid: int) -> None:
        if sid not in self.before_capture:
            if len(self.before_capture) > MAX_STREAMS:
                self.before_capture.clear()
            self.before_capture.add(sid)
            self.stats["h2.streams_before_capture"] += 1

    def close(self, reason: str, ts: int) -> list[object]:
        for s in list(self.streams.values()):
            self._finish(s, reason, ts)
        out, self.out = self.out, []
        return out


class Http2Parser:
    """The stage: consumes the `StreamData` and `StreamEnd` of h2
    connections, passes everything else on."""

    def __init__(self, stats: Stats, budget: BodyBudget | None = None) -> None:
        self.stats = stats
        self.budget = budget if budget is not None else BodyBudget()
        self._conns: OrderedDict[ConnKey, _Connection] = OrderedDict()
        self._failed: set[ConnKey] = set()

    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is StreamData:
            if ev.protocol != "h2":  # type: ignore[attr-defined]
                return [ev]
            return self._data(ev)  # type: ignore[arg-type]
        if t is StreamEnd:
            if ev.key not in self._conns and ev.key not in self._failed:  # type: ignore[attr-defined]
                return [ev]
            return self._end(ev)  # type: ignore[arg-type]
        return [ev]

    def _data(self, ev: StreamData) -> list[object]:
        key = ev.key
        conns = self._conns
        c = conns.get(key)
        evicted: list[object] = []
        if c is None:
            if key in self._failed:
                return []
            if len(conns) >= MAX_CONNS:
                self.stats["http.evicted"] += 1
                old = next(iter(conns))
                evicted = self._drop(old, "evicted", conns[old].last_ts)
            c = conns[key] = _Connection(ev, self.stats, self.budget)
        else:
            conns.move_to_end(key)
        try:
            c.feed(ev)
        except Exception:  # a bug must not take other connections down
            self.stats["errors.http2"] += 1
            self._failed.add(key)
            if len(self._failed) > MAX_CONNS:
                self._failed.clear()
            return evicted + self._drop(key, "internal_error", ev.ts)
        out, c.out = c.out, []
        return evicted + out if evicted else out

    def _end(self, ev: StreamEnd) -> list[object]:
        self._failed.discard(ev.key)
        c = self._conns.get(ev.key)
        if c is None:
            return []
        return self._drop(ev.key, ev.reason, ev.ts if ev.ts is not None else c.last_ts)

    def _drop(self, key: ConnKey, reason: str, ts: int) -> list[object]:
        c = self._conns.pop(key, None)
        if c is None:
            return []
        try:
            return c.close(reason, ts)
        except Exception:
            self.stats["errors.http2"] += 1
            return []

    def close(self) -> list[object]:
        out: list[object] = []
        for key in list(self._conns):
            out += self._drop(key, "end_of_capture", self._conns[key].last_ts)
        return out
