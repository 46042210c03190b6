"""Stage 3 for WebSocket: connections the HTTP/1.1 stage handed over after
101 Switching Protocols (`StreamSwitched`, then their `StreamData` and
`StreamEnd`) -> their messages (`WsMessage`) and their end (`WsEnd`).

Frames are read with wsproto's frame layer, one `FrameProtocol` per
direction: as a server reads the client's frames (masked: the mask is
removed) and as a client reads the server's. permessage-deflate is set up
from the extensions the server accepted in its 101, each direction with its
own inflater and its own window and context rules; fragmented messages are
joined, control frames between the fragments are messages of their own.

Lost bytes break a direction: WebSocket frames cannot be found again in the
middle of a stream, so what follows a loss is counted and dropped, and the
message it fell into is reported incomplete. A switch to anything other than
WebSocket (h2c, a private protocol) is counted and its bytes dropped; the
LLM stage reports its handshake as an ``http`` exchange.
"""
from __future__ import annotations

from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason, FrameDecoder, FrameProtocol, Opcode, ParseFailed, RsvBits

from .base import ConnKey, Headers, Stats, StreamData, StreamEnd, StreamSwitched, WsEnd, WsMessage

MAX_MESSAGE = 64 << 20  # payload kept per message; bigger ones are counted, not kept
MAX_CONNS = 4096

_OPCODES = {Opcode.TEXT: "text", Opcode.BINARY: "binary", Opcode.PING: "ping", Opcode.PONG: "pong",
            Opcode.CLOSE: "close"}


def is_websocket(response_headers: Headers) -> bool:
    """Whether a 101 switched to WebSocket."""
    return any(k == b"upgrade" and b"websocket" in v.lower() for k, v in response_headers)


def _deflate(response_headers: Headers) -> str | None:
    """The permessage-deflate offer the server accepted, if any."""
    for k, v in response_headers:
        if k == b"sec-websocket-extensions":
            for ext in v.decode("latin-1").split(","):
                if ext.split(";", 1)[0].strip().lower() == "permessage-deflate":
                    return ext.strip()
    return None


def _close_payload(payload: object) -> tuple[int, str]:
    """wsproto gives a close frame's payload as (code, reason)."""
    if isinstance(payload, tuple) and len(payload) == 2:
        return int(payload[0]), str(payload[1])
    return 1005, ""


class _Deflate(PerMessageDeflate):
    """permessage-deflate that lets control frames between the fragments of
    a compressed message pass without ending that message's compression
    (wsproto's own resets it at the end of any frame that is not data)."""

    _control = False

    def frame_inbound_header(self, proto: FrameDecoder | FrameProtocol, opcode: Opcode, rsv: RsvBits,
                             payload_length: int) -> CloseReason | RsvBits:
        if opcode.iscontrol():
            self._control = True
            return RsvBits(False, False, False)  # never compressed: RSV1 on one is an error
        self._control = False
        return super().frame_inbound_header(proto, opcode, rsv, payload_length)

    def frame_inbound_payload_data(self, proto: FrameDecoder | FrameProtocol, data: bytes) -> bytes | CloseReason:
        return data if self._control else super().frame_inbound_payload_data(proto, data)

    def frame_inbound_complete(self, proto: FrameDecoder | FrameProtocol, fin: bool) -> bytes | CloseReason | None:
        if self._control:
            self._control = False
            return None
        return super().frame_inbound_complete(proto, fin)


class _Direction:
    __slots__ = ("from_client", "proto", "broken", "opcode", "parts", "size", "first_ts", "capped", "wire",
                 "lost")

    def __init__(self, from_client: bool, deflate: str | None) -> None:
        self.from_client = from_client
        extensions = []
        if deflate is not None:
            ext = _Deflate()
            ext.finalize(deflate)  # as the client learns it from the 101: both directions' parameters
            extensions.append(ext)
        # The client's frames are read as the server reads them, and the other way round.
        self.proto = FrameProtocol(client=not from_client, extensions=extensions)  # type: ignore[arg-type]
        self.broken: str | None = None
        self.opcode: str | None = None  # of the data message being read
        self.parts: list[str | bytes] = []
        self.size = 0
        self.first_ts = 0
        self.capped = False
        self.wire = 0
        self.lost: str | None = None  # bytes of the message being read were lost


class _Connection:
    __slots__ = ("key", "xid", "stats", "dirs", "out", "last_ts")

    def __init__(self, ev: StreamSwitched, stats: Stats) -> None:
        self.key: ConnKey = ev.key
        self.xid = ev.xid
        self.stats = stats
        deflate = _deflate(ev.response.headers)
        self.dirs = {"req": _Direction(True, deflate), "resp": _Direction(False, deflate)}
        self.out: list[object] = []
        self.last_ts = ev.ts
        stats["ws.connections"] += 1

    def feed(self, ev: StreamData) -> None:
        d = self.dirs[ev.role]
        self.last_ts = ev.ts
        if ev.gap:
            self._lose(d, "gap", ev.gap, ev.ts)
        if ev.data:
            if d.broken:
                self.stats["skipped.bytes"] += len(ev.data)
            else:
                d.wire += len(ev.data)
                self._frames(d, ev.data, ev.ts)
        if ev.trunc:
            self._lose(d, "truncated", ev.trunc, ev.ts)

    def _lose(self, d: _Direction, reason: str, n: int, ts: int) -> None:
        self.stats["bytes.lost_in_http"] += n
        if d.broken is None:
            d.broken = reason
            self._partial(d, reason, ts)

    def _frames(self, d: _Direction, data: bytes, ts: int) -> None:
        proto = d.proto
        proto.receive_bytes(data)
        try:
            for frame in proto.received_frames():
                op = frame.opcode
                if op is Opcode.TEXT or op is Opcode.BINARY:
                    if d.opcode is None:
                        d.opcode = _OPCODES[op]
                        d.first_ts = ts
                    payload = frame.payload
                    d.size += len(payload.encode()) if isinstance(payload, str) else len(payload)
                    if not d.capped:
                        if d.size > MAX_MESSAGE:
                            d.capped = True
                            d.parts = []
                            self.stats["ws.messages_over_size"] += 1
                        elif payload:
                            d.parts.append(payload)  # type: ignore[arg-type]
                    if frame.message_finished:
                        self._message(d, ts)
                elif op is Opcode.CLOSE:
                    code, reason = _close_payload(frame.payload)
                    self.out.append(WsMessage(self.xid, self.key, ts, ts, d.from_client, "close", b"",
                                              len(reason.encode()) + 2 if code != 1005 else 0, None, code, reason))
                elif op in _OPCODES:
                    self.out.append(WsMessage(self.xid, self.key, ts, ts, d.from_client, _OPCODES[op], b"",
                                              len(frame.payload), None))
        except ParseFailed:
            self.stats["skipped.malformed_websocket"] += 1
            d.broken = "malformed_websocket"
            self._partial(d, "malformed_websocket", ts)

    def _message(self, d: _Direction, ts: int) -> None:
        parts = d.parts
        data: str | bytes
        if d.opcode == "text":
            data = "".join(parts) if not d.capped else ""  # type: ignore[arg-type]
        else:
            data = b"".join(parts) if not d.capped else b""  # type: ignore[arg-type]
        self.stats["ws.messages"] += 1
        self.out.append(WsMessage(self.xid, self.key, ts, d.first_ts, d.from_client, d.opcode or "binary", data,
                                  d.size, d.lost))
        d.opcode, d.parts, d.size, d.capped, d.lost = None, [], 0, False, None

    def _partial(self, d: _Direction, reason: str, ts: int) -> None:
        """The message being read will not end: reported with what came."""
        if d.opcode is not None:
            d.lost = reason
            self._message(d, ts)

    def close(self, reason: str, ts: int) -> list[object]:
        for d in self.dirs.values():
            if d.broken is None:
                self._partial(d, reason, ts)
        self.out.append(WsEnd(self.xid, self.key, ts, reason, self.dirs["req"].wire, self.dirs["resp"].wire))
        out, self.out = self.out, []
        return out


class WebSocketParser:
    """The stage: takes over the connections handed on by `StreamSwitched`."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self._conns: dict[ConnKey, _Connection] = {}
        self._other: set[ConnKey] = set()  # switched to something else: dropped

    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is StreamData:
            return self._data(ev)  # type: ignore[arg-type]
        if t is StreamSwitched:
            return self._switched(ev)  # type: ignore[arg-type]
        if t is StreamEnd:
            return self._end(ev)  # type: ignore[arg-type]
        return [ev]

    def _switched(self, ev: StreamSwitched) -> list[object]:
        key = ev.key
        old = self._conns.pop(key, None)
        out: list[object] = old.close("connection_closed", ev.ts) if old is not None else []
        if is_websocket(ev.response.headers):
            if len(self._conns) >= MAX_CONNS:
                first = next(iter(self._conns))
                self.stats["ws.evicted"] += 1
                out += self._conns.pop(first).close("evicted", ev.ts)
            try:
                self._conns[key] = _Connection(ev, self.stats)
            except (ValueError, IndexError):  # extension parameters that make no sense
                self.stats["skipped.malformed_websocket"] += 1
                self._other.add(key)
        else:
            self.stats["skipped.upgrade"] += 1
            self._other.add(key)
        out.append(ev)
        return out

    def _data(self, ev: StreamData) -> list[object]:
        c = self._conns.get(ev.key)
        if c is None:
            if ev.key in self._other:
                self.stats["skipped.bytes"] += len(ev.data)
                return []
            return [ev]
        try:
            c.feed(ev)
        except Exception:  # a bug must not take other connections down
            self.stats["errors.websocket"] += 1
            del self._conns[ev.key]
            self._other.add(ev.key)
            return c.close("internal_error", ev.ts)
        out, c.out = c.out, []
        return out

    def _end(self, ev: StreamEnd) -> list[object]:
        c = self._conns.pop(ev.key, None)
        if c is None:
            if ev.key in self._other:
                self._other.discard(ev.key)
                return []
            return [ev]
        return c.close(ev.reason, ev.ts if ev.ts is not None else c.last_ts)

    def close(self) -> list[object]:
        out: list[object] = []
        for key in list(self._conns):
            c = self._conns.pop(key)
            out += c.close("end_of_capture", c.last_ts)
        self._other.clear()
        return out
