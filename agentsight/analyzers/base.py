"""Shared types of the analysis chain.

Every stage is a small sans-I/O object with the same two methods (the
`Stage` protocol)::

    feed(event) -> list[event]    # one event in, zero or more out
    close() -> list[event]        # end of input: flush what is pending

A stage consumes the kinds it owns, may emit new (internal) kinds for the
next stage, and passes every other event through unchanged, in order. The
internal kinds below never leave the analyzers:

`StreamData`   reassembly -> HTTP: one piece of a connection's request or
               response byte stream.
`StreamEnd`    reassembly -> HTTP: the connection will see no more bytes
               (the TLS session was freed, the process exited, the capture
               ended).
`HttpRequest`, `HttpResponse`, `HttpBody`, `HttpEnd`
               HTTP (HTTP/1.1 or HTTP/2) -> LLM: one exchange, in this order
               (`xid` ties them).
`StreamSwitched`
               HTTP/1.1 -> WebSocket: a request was answered with 101
               Switching Protocols; it replaces that exchange's
               `HttpResponse`/`HttpEnd`, and the connection's later
               `StreamData` and `StreamEnd` pass on as they come.
`WsMessage`, `WsEnd`
               WebSocket -> LLM: the messages of a connection switched to
               WebSocket (after its `StreamSwitched`), and its end.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Protocol

ConnKey = tuple[int, int]  # (pid, conn)
Headers = list[tuple[bytes, bytes]]  # lower-case names, as on the wire otherwise

try:  # orjson is much faster; fall back to the stdlib.  Both raise ValueError.
    import orjson as _json
except ImportError:  # pragma: no cover - orjson is a dependency
    import json as _json  # type: ignore[no-redef]

# no wrapper function: this is called once per SSE event
json_loads = _json.loads


# ids of exchanges (`xid`), unique in the process: every HTTP stage draws from it
xids = itertools.count(1)


class Stats(dict[str, int]):
    """Counters shared by all stages (``skipped.*``, ``errors.*``, ...): a
    missing name reads as 0. Not a Counter: stages count on the hot path,
    and ``+= 1`` on a Counter costs about twice as much."""

    def __missing__(self, key: str) -> int:
        return 0


class Stage(Protocol):
    def feed(self, ev: Any) -> list[Any]: ...

    def close(self) -> list[Any]: ...


@dataclass(slots=True)
class StreamData:
    key: ConnKey
    role: str  # "req" or "resp"
    data: bytes
    gap: int  # bytes lost before data
    trunc: int  # bytes lost after data
    ts: int
    pid: int
    tid: int
    comm: str
    conn: int
    side: str = "client"  # "server" when the traced process answers requests
    protocol: str = "http/1.1"  # or "h2": which stage reads it


@dataclass(slots=True)
class StreamEnd:
    key: ConnKey
    reason: str  # process_exit, connection_closed, end_of_capture
    ts: int | None


@dataclass(slots=True)
class HttpRequest:
    xid: int
    key: ConnKey
    ts: int  # when its first byte was seen
    end_ts: int
    pid: int
    tid: int
    comm: str
    conn: int
    side: str
    method: str
    target: str
    headers: Headers
    http_version: str
    body: bytes  # on the wire (still encoded), at most MAX_REQUEST_BODY
    body_size: int
    body_capped: bool
    incomplete: str | None
    protocol: str = "http/1.1"


@dataclass(slots=True)
class HttpResponse:
    xid: int
    key: ConnKey
    ts: int
    status: int
    headers: Headers
    http_version: str


@dataclass(slots=True)
class HttpBody:
    xid: int
    key: ConnKey
    ts: int
    data: bytes  # on the wire (still encoded)


@dataclass(slots=True)
class HttpEnd:
    xid: int
    key: ConnKey | None
    ts: int | None
    incomplete: str | None
    responded: bool
    resp_size: int


@dataclass(slots=True)
class StreamSwitched:
    xid: int
    key: ConnKey
    ts: int
    request: HttpRequest  # already passed on, as for any exchange
    response: HttpResponse  # the 101, which is not passed on by itself


@dataclass(slots=True)
class WsMessage:
    xid: int  # of the exchange that switched the connection
    key: ConnKey
    ts: int  # when its last frame was read
    first_ts: int  # when its first frame was read
    from_client: bool
    opcode: str  # text, binary, ping, pong, close
    data: str | bytes  # the payload, uncompressed: str for text; empty when over the size kept
    size: int  # payload bytes, uncompressed (text: UTF-8)
    incomplete: str | None = None  # bytes of it were lost, or it never ended
    close_code: int | None = None
    close_reason: str | None = None


@dataclass(slots=True)
class WsEnd:
    xid: int
    key: ConnKey
    ts: int
    reason: str  # how the connection ended: connection_closed, process_exit, end_of_capture, ...
    client_wire_bytes: int  # what each direction carried, frame headers included
    server_wire_bytes: int
