"""Builders of raw capture events (docs/events.md) for analyzer tests."""
from __future__ import annotations

import base64
import json
from typing import Any, Iterable

from agentsight.analyzers import Analysis


class Capture:
    """Raw `ssl` events of one process; ts grows by 1000 ns per event."""

    def __init__(self, pid: int = 4242, comm: str = "agent", ts: int = 1_700_000_000_000_000_000):
        self.pid = pid
        self.comm = comm
        self.ts = ts
        self.events: list[dict[str, Any]] = []

    def _ev(self, d: str, conn: int, data: bytes, **kw: Any) -> dict[str, Any]:
        self.ts += 1000
        ev: dict[str, Any] = {
            "type": "ssl", "ts": self.ts, "pid": self.pid, "tid": kw.pop("tid", self.pid),
            "comm": self.comm, "uid": 1000, "fn": "SSL_write" if d == "send" else "SSL_read",
            "dir": d, "conn": conn, "len": len(data) + kw.get("truncated", 0),
            "truncated": 0, "gap": 0, "latency_ns": 500, "ret": len(data),
        }
        ev.update(kw)
        try:
            ev["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            ev["data_b64"] = base64.b64encode(data).decode()
        self.events.append(ev)
        return ev

    def send(self, data: bytes, conn: int = 1, **kw: Any) -> dict[str, Any]:
        return self._ev("send", conn, data, **kw)

    def recv(self, data: bytes, conn: int = 1, **kw: Any) -> dict[str, Any]:
        return self._ev("recv", conn, data, **kw)

    def send_pieces(self, data: bytes, cuts: Iterable[int], conn: int = 1) -> None:
        for piece in cut(data, cuts):
            self.send(piece, conn)

    def recv_pieces(self, data: bytes, cuts: Iterable[int], conn: int = 1) -> None:
        for piece in cut(data, cuts):
            self.recv(piece, conn)

    def exit(self) -> dict[str, Any]:
        self.ts += 1000
        ev = {"type": "exit", "ts": self.ts, "pid": self.pid, "tid": self.pid, "comm": self.comm,
              "uid": 1000, "exit_code": 0, "signal": None, "core_dumped": False,
              "duration_ns": 5}
        self.events.append(ev)
        return ev


def cut(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """data split at the given offsets (sorted, duplicates and ends ignored)."""
    pts = sorted({c for c in cuts if 0 < c < len(data)})
    out, prev = [], 0
    for c in pts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return [p for p in out if p]


def every(n: int, size: int) -> list[int]:
    return list(range(n, size, n))


def request(method: str = "POST", path: str = "/v1/messages", host: str = "api.anthropic.com",
            body: Any = None, headers: dict[str, str] | None = None,
            chunked: bool = False) -> bytes:
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    h = {"Host": host, "User-Agent": "test/1.0"}
    if body is not None:
        h["Content-Type"] = "application/json"
        if chunked:
            h["Transfer-Encoding"] = "chunked"
        else:
            h["Content-Length"] = str(len(body))
    h.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    data = head.encode() + b"\r\n"
    if body is not None:
        data += chunk_body([body]) if chunked else body
    return data


def chunk_body(pieces: Iterable[bytes], ext: bool = False) -> bytes:
    out = b""
    for p in pieces:
        if p:
            out += b"%x%s\r\n%s\r\n" % (len(p), b";x=y" if ext else b"", p)
    return out + b"0\r\n\r\n"


def response(status: int = 200, body: Any = b"", headers: dict[str, str] | None = None,
             chunks: list[bytes] | None = None, reason: str = "OK",
             length: bool = True) -> bytes:
    """A response; `chunks` makes it chunked (one chunk per piece)."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    h = {"Content-Type": "application/json", "Date": "Thu, 01 Jan 2025 00:00:00 GMT"}
    if chunks is not None:
        h["Transfer-Encoding"] = "chunked"
    elif length:
        h["Content-Length"] = str(len(body))
    h.update(headers or {})
    head = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode() + b"\r\n" + (chunk_body(chunks) if chunks is not None else body)


def sse_response(frames: list[bytes], headers: dict[str, str] | None = None) -> bytes:
    h = {"Content-Type": "text/event-stream"}
    h.update(headers or {})
    return response(200, chunks=frames, headers=h)


class JsonAnalysis:
    """The analysis chain fed raw events in their JSON form, its output in
    JSON form too, as the commands read and write them."""

    def __init__(self, redact: bool = True, **kw: Any) -> None:
        self.analysis = Analysis(redact=redact, **kw)

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.analysis.feed(event)]

    def close(self) -> list[dict[str, Any]]:
        return [e.to_json() for e in self.analysis.close()]

    @property
    def stats(self) -> dict[str, int]:
        return self.analysis.stats


def run(events: Iterable[dict[str, Any]], redact: bool = True,
        **kw: Any) -> tuple[list[dict[str, Any]], JsonAnalysis]:
    p = JsonAnalysis(redact=redact, **kw)
    out: list[dict[str, Any]] = []
    for e in events:
        out.extend(p.feed(e))
    out.extend(p.close())
    return out, p


def of_type(out: list[dict[str, Any]], t: str) -> list[dict[str, Any]]:
    return [o for o in out if o["type"] == t]
