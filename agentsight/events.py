"""The events agentsight produces, from the kernel to the sinks.

One dataclass per kind. Collectors produce the raw kinds (`TlsData` and the
process events); the analyzers produce `HttpExchange`, `LlmCall` and
`WebSocketSession`;
correlation produces `Link`, `Unexplained`, `Startup` and `ToolResult`. Every event has `ts` (Unix
time, ns) and a JSON form, `to_json()`, documented in docs/events.md; only
sinks encode, and `from_json()` decodes a raw event at the edge of the
program (`replay`, the public `analyze()`).

Payloads stay bytes from the decoder to the sinks: `TlsData.data` is what
the process wrote or read. Its JSON form carries it as `data` when it is
UTF-8 and as `data_b64` otherwise.
"""
from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any, ClassVar, Union

JsonValue = Any
JsonObject = dict[str, Any]

__all__ = [
    "Event", "RawEvent", "TlsData", "Exec", "Exit", "Fork", "Open", "FileOp", "Connect",
    "HttpExchange", "LlmCall", "LlmResponse", "ToolCall", "WebSocketSession", "WebSocketMessage", "ToolCallRef",
    "ProcessKey", "FileKey",
    "Link", "LINK_ROLES", "Unexplained", "Startup", "ToolResult", "LlmCallRef", "EventDecodeError", "from_json",
    "PROCESS_KINDS", "FILE_OPS",
]


class EventDecodeError(ValueError):
    """A JSON object that is not a raw event of a known kind, or one whose
    fields have the wrong types; the message names the field."""


def _get(d: JsonObject, key: str, kind: type, optional: bool = False) -> Any:
    v = d.get(key)
    if v is None and optional:
        return None
    # bool is an int subclass: never taken where a number is meant
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise EventDecodeError(f"{d.get('type')!r} event: {key!r} is {type(v).__name__}, not {kind.__name__}")
    return v


def _str_or(d: JsonObject, key: str) -> str:
    v = d.get(key)
    return v if isinstance(v, str) else ""


def _int_or(d: JsonObject, key: str, default: int) -> int:
    v = d.get(key, default)
    return v if isinstance(v, int) and not isinstance(v, bool) else default


@dataclass(slots=True)
class RawEvent:
    """What every collector event has: when, and which task."""

    kind: ClassVar[str] = "raw"
    ts: int
    pid: int
    tid: int
    comm: str
    uid: int

    def _head(self) -> JsonObject:
        return {"type": self.kind, "ts": self.ts, "pid": self.pid, "tid": self.tid, "comm": self.comm,
                "uid": self.uid}

    def to_json(self) -> JsonObject:
        return self._head()


def _head_fields(d: JsonObject) -> tuple[int, int, int, str, int]:
    pid = _get(d, "pid", int)
    comm = d.get("comm", "")
    return (_get(d, "ts", int), pid, _int_or(d, "tid", pid), comm if isinstance(comm, str) else "",
            _int_or(d, "uid", 0))


@dataclass(slots=True)
class TlsData(RawEvent):
    """One TLS library call: plaintext written (`send`) or read (`recv`), a
    handshake, or the end of a session (`close`)."""

    kind: ClassVar[str] = "ssl"
    fn: str = ""
    dir: str = "send"  # send, recv, handshake, close
    conn: int = 0
    len: int = 0
    data: bytes = b""
    truncated: int = 0  # bytes of this call not captured; they follow data
    gap: int = 0  # bytes of this stream lost before this call
    latency_ns: int = 0
    ret: int = 0

    def to_json(self) -> JsonObject:
        d = self._head()
        d.update(fn=self.fn, dir=self.dir, conn=self.conn, len=self.len, truncated=self.truncated, gap=self.gap,
                 latency_ns=self.latency_ns, ret=self.ret)
        try:
            d["data"] = self.data.decode()
        except UnicodeDecodeError:
            d["data_b64"] = base64.b64encode(self.data).decode()
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> TlsData:
        # The bulk of a replayed capture: well-formed events take one pass
        # with no helper calls; anything odd goes through the checks below.
        g = d.get
        ts, pid, conn, direction, text = g("ts"), g("pid"), g("conn"), g("dir"), g("data")
        tid, comm, uid, fn = g("tid", pid), g("comm", ""), g("uid", 0), g("fn", "")
        n, trunc, gap, latency, ret = g("len", 0), g("truncated", 0), g("gap", 0), g("latency_ns", 0), g("ret", 0)
        if (type(ts) is int and type(pid) is int and type(conn) is int and type(tid) is int
                and type(uid) is int and type(n) is int and type(trunc) is int and type(gap) is int
                and type(latency) is int and type(ret) is int and type(comm) is str and type(fn) is str
                and direction in _DIRECTIONS and n >= 0 and trunc >= 0 and gap >= 0 and latency >= 0):
            if type(text) is str:
                return cls(ts, pid, tid, comm, uid, fn, direction, conn, n, text.encode("utf-8", "surrogatepass"),
                           trunc, gap, latency, ret)
            b64 = g("data_b64")
            if text is None and type(b64) is str:
                try:
                    data = binascii.a2b_base64(b64)
                except (binascii.Error, ValueError) as exc:
                    raise EventDecodeError(f"'ssl' event: 'data_b64' is not base64 ({exc})") from None
                return cls(ts, pid, tid, comm, uid, fn, direction, conn, n, data, trunc, gap, latency, ret)
        return cls._checked(d)

    @classmethod
    def _checked(cls, d: JsonObject) -> TlsData:
        text = d.get("data")
        if isinstance(text, str):
            data = text.encode("utf-8", "surrogatepass")
        elif isinstance(d.get("data_b64"), str):
            try:
                data = binascii.a2b_base64(d["data_b64"])
            except (binascii.Error, ValueError) as exc:
                raise EventDecodeError(f"'ssl' event: 'data_b64' is not base64 ({exc})") from None
        elif text is None and not d.get("len"):
            data = b""
        else:
            raise EventDecodeError("'ssl' event: neither 'data' nor 'data_b64' holds its bytes")
        direction = _get(d, "dir", str)
        if direction not in _DIRECTIONS:
            raise EventDecodeError(f"'ssl' event: 'dir' is {direction!r}")

        def count(key: str) -> int:
            return max(_int_or(d, key, 0), 0)

        fn = d.get("fn", "")
        return cls(*_head_fields(d), fn=fn if isinstance(fn, str) else "", dir=direction,
                   conn=_get(d, "conn", int), len=count("len"), data=data, truncated=count("truncated"),
                   gap=count("gap"), latency_ns=count("latency_ns"), ret=_int_or(d, "ret", 0))


_DIRECTIONS = frozenset(("send", "recv", "handshake", "close"))


@dataclass(slots=True)
class Exec(RawEvent):
    kind: ClassVar[str] = "exec"
    ppid: int = 0
    filename: str = ""
    argv: list[str] = field(default_factory=list)
    argv_truncated: bool = False
    cwd: str = ""

    def to_json(self) -> JsonObject:
        d = self._head()
        d.update(ppid=self.ppid, filename=self.filename, argv=self.argv, argv_truncated=self.argv_truncated,
                 cwd=self.cwd)
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> Exec:
        argv = d.get("argv") or []
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise EventDecodeError("'exec' event: 'argv' is not a list of strings")
        return cls(*_head_fields(d), ppid=_int_or(d, "ppid", 0),
                   filename=_str_or(d, "filename"), argv=argv, argv_truncated=bool(d.get("argv_truncated")),
                   cwd=_str_or(d, "cwd"))


@dataclass(slots=True)
class Exit(RawEvent):
    """A process ended (its last thread left; `tid` is that thread)."""

    kind: ClassVar[str] = "exit"
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    duration_ns: int = 0
    ppid: int = 0

    def to_json(self) -> JsonObject:
        d = self._head()
        d.update(exit_code=self.exit_code, signal=self.signal, core_dumped=self.core_dumped,
                 duration_ns=self.duration_ns, ppid=self.ppid)
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> Exit:
        return cls(*_head_fields(d), exit_code=_get(d, "exit_code", int, optional=True),
                   signal=_get(d, "signal", int, optional=True), core_dumped=bool(d.get("core_dumped")),
                   duration_ns=_int_or(d, "duration_ns", 0), ppid=_int_or(d, "ppid", 0))


@dataclass(slots=True)
class Fork(RawEvent):
    """A new process (not a thread)."""

    kind: ClassVar[str] = "fork"
    child_pid: int = 0

    def to_json(self) -> JsonObject:
        d = self._head()
        d["child_pid"] = self.child_pid
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> Fork:
        return cls(*_head_fields(d), child_pid=_get(d, "child_pid", int))


@dataclass(slots=True)
class Open(RawEvent):
    kind: ClassVar[str] = "open"
    path: str = ""
    resolved: str | None = None  # absolute, as the process sees it; None when the open failed
    flags: int = 0
    ret: int = 0  # the fd, or -errno

    def to_json(self) -> JsonObject:
        d = self._head()
        d.update(path=self.path, resolved=self.resolved, flags=self.flags, ret=self.ret)
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> Open:
        return cls(*_head_fields(d), path=_get(d, "path", str), resolved=_get(d, "resolved", str, optional=True),
                   flags=_int_or(d, "flags", 0), ret=_get(d, "ret", int))


FILE_OPS = ("unlink", "rmdir", "rename")


@dataclass(slots=True)
class FileOp(RawEvent):
    """unlink, rmdir or rename; `kind` in the JSON form is the operation."""

    kind: ClassVar[str] = "file"
    op: str = "unlink"
    path: str = ""
    resolved: str | None = None
    new_path: str | None = None  # rename only
    new_resolved: str | None = None
    flags: int = 0
    ret: int = 0

    def to_json(self) -> JsonObject:
        d = self._head()
        d["type"] = self.op
        d.update(path=self.path, resolved=self.resolved)
        if self.op == "rename":
            d.update(new_path=self.new_path, new_resolved=self.new_resolved)
        d.update(flags=self.flags, ret=self.ret)
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> FileOp:
        return cls(*_head_fields(d), op=d["type"], path=_get(d, "path", str),
                   resolved=_get(d, "resolved", str, optional=True),
                   new_path=_get(d, "new_path", str, optional=True),
                   new_resolved=_get(d, "new_resolved", str, optional=True),
                   flags=_int_or(d, "flags", 0), ret=_get(d, "ret", int))


@dataclass(slots=True)
class Connect(RawEvent):
    kind: ClassVar[str] = "connect"
    family: str = "ipv4"
    addr: str = ""
    port: int = 0
    ret: int = 0

    def to_json(self) -> JsonObject:
        d = self._head()
        d.update(family=self.family, addr=self.addr, port=self.port, ret=self.ret)
        return d

    @classmethod
    def from_json(cls, d: JsonObject) -> Connect:
        return cls(*_head_fields(d), family=_get(d, "family", str), addr=_get(d, "addr", str),
                   port=_get(d, "port", int), ret=_get(d, "ret", int))


PROCESS_KINDS: tuple[type[RawEvent], ...] = (Exec, Exit, Fork, Open, FileOp, Connect)
_FROM_JSON: dict[str, Any] = {
    "ssl": TlsData.from_json, "exec": Exec.from_json, "exit": Exit.from_json, "fork": Fork.from_json,
    "open": Open.from_json, "unlink": FileOp.from_json, "rmdir": FileOp.from_json, "rename": FileOp.from_json,
    "connect": Connect.from_json,
}


def from_json(d: Any) -> RawEvent:
    """A raw event from its JSON form (docs/events.md). Raises
    EventDecodeError for anything else."""
    if not isinstance(d, dict):
        raise EventDecodeError(f"not a JSON object but {type(d).__name__}")
    kind = d.get("type")
    decode = _FROM_JSON.get(kind) if isinstance(kind, str) else None
    if decode is None:
        raise EventDecodeError(f"unknown event type {str(kind)[:40]!r}")
    try:
        event: RawEvent = decode(d)
    except KeyError as exc:
        raise EventDecodeError(f"{kind!r} event: no {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        if isinstance(exc, EventDecodeError):
            raise
        raise EventDecodeError(f"{kind!r} event: {exc}") from None
    return event


# -- what the analyzers make of it ----------------------------------------------


@dataclass(slots=True)
class HttpExchange:
    """An HTTP exchange that is not an LLM call: only its shape is kept."""

    kind: ClassVar[str] = "http"
    ts: int  # ended_ns
    method: str
    host: str
    path: str  # with the query string
    status: int | None
    request_size: int  # body bytes on the wire
    response_size: int
    started_ns: int
    ended_ns: int
    pid: int
    tid: int
    comm: str
    conn: int
    side: str  # "client", or "server" when the traced process answered
    incomplete_reason: str | None = None
    error: JsonObject | None = None
    protocol: str = "http/1.1"

    @property
    def incomplete(self) -> bool:
        return self.incomplete_reason is not None

    def to_json(self) -> JsonObject:
        d: JsonObject = {
            "type": "http", "ts": self.ts, "method": self.method, "host": self.host, "path": self.path,
            "status": self.status, "request_size": self.request_size, "response_size": self.response_size,
            "started_ns": self.started_ns, "ended_ns": self.ended_ns, "pid": self.pid, "tid": self.tid,
            "comm": self.comm, "conn": self.conn, "side": self.side,
        }
        if self.protocol != "http/1.1":
            d["protocol"] = self.protocol
        if self.incomplete_reason is not None:
            d["incomplete"] = True
            d["incomplete_reason"] = self.incomplete_reason
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass(slots=True)
class ToolCall:
    """A tool the model asked to run: its id, name and parsed arguments."""

    id: str | None
    name: str | None
    arguments: JsonValue

    def to_json(self) -> JsonObject:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(slots=True)
class LlmResponse:
    text: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    stop_reason: str | None = None
    thinking: str | None = None
    model: str | None = None  # as served
    id: str | None = None

    def to_json(self) -> JsonObject:
        d: JsonObject = {"text": self.text, "tool_calls": [t.to_json() for t in self.tool_calls],
                         "stop_reason": self.stop_reason}
        if self.thinking is not None:
            d["thinking"] = self.thinking
        if self.model is not None:
            d["model"] = self.model
        if self.id is not None:
            d["id"] = self.id
        return d


@dataclass(slots=True)
class LlmCall:
    """One LLM API call: what was asked, what came back, and when."""

    kind: ClassVar[str] = "llm_call"
    ts: int  # ended_ns
    provider: str  # anthropic, openai, gemini, unknown
    api: str
    model: str | None  # as requested
    stream: bool
    status: int | None
    method: str
    host: str
    path: str
    request: JsonValue  # the parsed JSON body
    request_headers: dict[str, str]
    response_headers: dict[str, str]
    response: LlmResponse
    usage: dict[str, int]
    started_ns: int
    first_token_ns: int | None
    ended_ns: int
    pid: int
    tid: int
    comm: str
    conn: int
    side: str
    error: JsonObject | None = None
    incomplete_reason: str | None = None
    request_truncated: bool = False
    analysis_error: str | None = None
    protocol: str = "http/1.1"

    @property
    def incomplete(self) -> bool:
        return self.incomplete_reason is not None

    def to_json(self) -> JsonObject:
        d: JsonObject = {
            "type": "llm_call", "ts": self.ts, "provider": self.provider, "api": self.api, "model": self.model,
            "stream": self.stream, "status": self.status, "method": self.method, "host": self.host,
            "path": self.path, "request": self.request, "request_headers": self.request_headers,
            "response_headers": self.response_headers, "response": self.response.to_json(), "usage": self.usage,
            "started_ns": self.started_ns, "first_token_ns": self.first_token_ns, "ended_ns": self.ended_ns,
            "pid": self.pid, "tid": self.tid, "comm": self.comm, "conn": self.conn, "side": self.side,
        }
        if self.protocol != "http/1.1":
            d["protocol"] = self.protocol
        if self.error is not None:
            d["error"] = self.error
        if self.incomplete_reason is not None:
            d["incomplete"] = True
            d["incomplete_reason"] = self.incomplete_reason
        if self.request_truncated:
            d["request_truncated"] = True
        if self.analysis_error is not None:
            d["analysis_error"] = self.analysis_error
        return d


@dataclass(slots=True)
class WebSocketMessage:
    """One message of a WebSocket connection (data frames joined, or one
    control frame)."""

    from_client: bool
    type: str  # text, binary, ping, pong, close
    size: int  # payload bytes, uncompressed
    started_ns: int  # its first frame was read
    ended_ns: int  # its last frame was read
    incomplete: bool = False

    def to_json(self) -> JsonObject:
        d: JsonObject = {"from": "client" if self.from_client else "server", "type": self.type, "size": self.size,
                         "started_ns": self.started_ns, "ended_ns": self.ended_ns}
        if self.incomplete:
            d["incomplete"] = True
        return d


@dataclass(slots=True)
class WebSocketSession:
    """A connection switched to WebSocket that carried no LLM calls: its
    handshake, its messages (the first MAX_LISTED in full) and its end."""

    kind: ClassVar[str] = "websocket"
    MAX_LISTED: ClassVar[int] = 256
    ts: int  # ended_ns
    host: str
    path: str  # of the handshake, with the query string
    status: int  # of the handshake: 101
    subprotocol: str | None
    extensions: str | None  # as the server accepted them (permessage-deflate, ...)
    started_ns: int  # the handshake request
    opened_ns: int  # the 101
    ended_ns: int
    pid: int
    tid: int
    comm: str
    conn: int
    side: str  # "client", or "server" when the traced process answered the handshake
    client_messages: int
    server_messages: int
    client_bytes: int  # payload bytes of the messages, uncompressed
    server_bytes: int
    client_wire_bytes: int  # bytes on the wire after the handshake, frame headers included
    server_wire_bytes: int
    messages: list[WebSocketMessage] = field(default_factory=list)
    messages_omitted: int = 0  # messages beyond MAX_LISTED, counted above but not listed
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: str | None = None  # client, server: who sent the first close frame
    incomplete_reason: str | None = None

    @property
    def incomplete(self) -> bool:
        return self.incomplete_reason is not None

    def to_json(self) -> JsonObject:
        d: JsonObject = {
            "type": "websocket", "ts": self.ts, "host": self.host, "path": self.path, "status": self.status,
            "subprotocol": self.subprotocol, "extensions": self.extensions, "started_ns": self.started_ns,
            "opened_ns": self.opened_ns, "ended_ns": self.ended_ns, "pid": self.pid, "tid": self.tid,
            "comm": self.comm, "conn": self.conn, "side": self.side, "client_messages": self.client_messages,
            "server_messages": self.server_messages, "client_bytes": self.client_bytes,
            "server_bytes": self.server_bytes, "client_wire_bytes": self.client_wire_bytes,
            "server_wire_bytes": self.server_wire_bytes, "messages": [m.to_json() for m in self.messages],
            "messages_omitted": self.messages_omitted, "close_code": self.close_code,
            "close_reason": self.close_reason, "closed_by": self.closed_by,
        }
        if self.incomplete_reason is not None:
            d["incomplete"] = True
            d["incomplete_reason"] = self.incomplete_reason
        return d


# -- what correlation makes of it -----------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcessKey:
    """One program a process ran: its pid and when it started running it
    (the exec, or the fork for a process that never exec'd)."""

    pid: int
    start_ns: int

    def to_json(self) -> JsonObject:
        return {"pid": self.pid, "start_ns": self.start_ns}


@dataclass(frozen=True, slots=True)
class FileKey:
    """One change to a file: by whom, when, what."""

    pid: int
    ts: int
    op: str  # write, unlink, rmdir, rename
    path: str | None

    def to_json(self) -> JsonObject:
        return {"pid": self.pid, "ts": self.ts, "op": self.op, "path": self.path}


@dataclass(frozen=True, slots=True)
class ToolCallRef:
    """A tool call, by the LLM call that asked for it and its place there."""

    llm_pid: int
    llm_started_ns: int
    index: int  # in the response's tool_calls
    id: str | None

    def to_json(self) -> JsonObject:
        return {"llm_call": {"pid": self.llm_pid, "started_ns": self.llm_started_ns}, "index": self.index,
                "id": self.id}


@dataclass(frozen=True, slots=True)
class LlmCallRef:
    """An LLM call, by the process that made it and when it started."""

    pid: int
    started_ns: int

    def to_json(self) -> JsonObject:
        return {"pid": self.pid, "started_ns": self.started_ns}


LINK_ROLES = ("shell", "command", "wrapper")


@dataclass(slots=True)
class Link:
    """Activity a tool call caused, and the evidence that says so.

    `role`: `shell`, the shell that ran the tool's command (its `-c` script
    is the command or embeds it); `command`, what the command itself did;
    `wrapper`, what the agent's wrapper around the command did (its prelude
    and epilogue, a login shell's profile, the files it keeps its state in)."""

    kind: ClassVar[str] = "link"
    ts: int
    tool_call: ToolCallRef
    target: ProcessKey | FileKey
    evidence: dict[str, str | float]
    role: str = "command"

    @property
    def target_kind(self) -> str:
        return "process" if isinstance(self.target, ProcessKey) else "file"

    def to_json(self) -> JsonObject:
        return {"type": "link", "ts": self.ts, "tool_call": self.tool_call.to_json(), "kind": self.target_kind,
                "target": self.target.to_json(), "role": self.role, "evidence": self.evidence}


@dataclass(slots=True)
class Unexplained:
    """Activity of the agent's process tree that no tool call explains."""

    kind: ClassVar[str] = "unexplained"
    ts: int
    target: ProcessKey | FileKey
    reason: str

    @property
    def target_kind(self) -> str:
        return "process" if isinstance(self.target, ProcessKey) else "file"

    def to_json(self) -> JsonObject:
        return {"type": "unexplained", "ts": self.ts, "kind": self.target_kind, "target": self.target.to_json(),
                "reason": self.reason}


@dataclass(slots=True)
class Startup:
    """Activity of the agent's process tree before its first LLM call (git,
    rg, environment probes): start-up, not suspicious."""

    kind: ClassVar[str] = "startup"
    ts: int
    target: ProcessKey | FileKey

    @property
    def target_kind(self) -> str:
        return "process" if isinstance(self.target, ProcessKey) else "file"

    def to_json(self) -> JsonObject:
        return {"type": "startup", "ts": self.ts, "kind": self.target_kind, "target": self.target.to_json()}


@dataclass(slots=True)
class ToolResult:
    """A tool call's result going back to the model, in the request of a
    later LLM call (`tool_result`, `function_call_output`,
    `functionResponse`). `ts` is when that request started: when the agent
    sent the result back."""

    kind: ClassVar[str] = "tool_result"
    ts: int
    tool_call: ToolCallRef
    llm_call: LlmCallRef  # the call whose request carries it
    duration_ns: int  # from the end of the response that asked for the tool to ts
    is_error: bool | None  # as the agent marked it, when the API has a field for it
    size: int  # characters of the result's content
    where: str  # where it is in that request's body, e.g. "messages[3].content[0]"

    def to_json(self) -> JsonObject:
        return {"type": "tool_result", "ts": self.ts, "tool_call": self.tool_call.to_json(),
                "llm_call": self.llm_call.to_json(), "duration_ns": self.duration_ns, "is_error": self.is_error,
                "size": self.size, "where": self.where}


Event = Union[TlsData, Exec, Exit, Fork, Open, FileOp, Connect, HttpExchange, LlmCall, WebSocketSession, Link,
              Unexplained, Startup, ToolResult]
