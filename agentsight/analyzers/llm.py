"""Stage 4: HTTP exchanges -> `HttpExchange` and `LlmCall` events;
WebSocket messages -> `LlmCall` and `WebSocketSession` events.

The request decides (host, path, body shape) whether an exchange is an LLM
call.  Only LLM calls have their response body decoded (Content-Encoding) and
merged (JSON or server-sent events); other exchanges are summarised as one
``http`` event without keeping their bodies.

A connection switched to WebSocket (`StreamSwitched`) replaces its
handshake exchange. Where an adapter knows the session's path (the
Responses API's WebSocket mode), each client message that asks for a
response starts a call, and the server's messages are fed to the same
merger as the SSE form's events until it is complete: one ``llm_call``
each. Any other session is one ``websocket`` event when it ends.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Mapping

from ..events import HttpExchange, LlmCall, LlmResponse, ToolCall, WebSocketMessage, WebSocketSession
from . import providers
from .base import HttpBody, HttpEnd, HttpRequest, HttpResponse, Stats, StreamSwitched, WsEnd, WsMessage, json_loads
from .budget import BodyBudget, BodyHold
from .encoding import BodyDecoder, DecodeError, DecompressionLimit, decode_all
from .http1 import header_value, headers_dict
from .sse import SSEParser
from .websocket import is_websocket

MAX_RESPONSE_BODY = 64 << 20
MAX_TARGETS = 4096  # (method, target, Host) classified, remembered
MAX_TARGET_KEPT = 512  # longer targets are classified every time

# the incomplete reasons that mean the connection failed, not the capture
_CONN_FAILURES = {"process_exit": "process exited before the response was complete",
                  "connection_closed": "connection closed before the response was complete",
                  "stream_reset": "the HTTP/2 stream was reset before the response was complete",
                  "goaway": "the server went away (HTTP/2 GOAWAY) before processing the request"}
# Ends that lose nothing once the stream's own end marker has arrived.
_ENDS = frozenset(_CONN_FAILURES) | {"end_of_capture"}


def split_target(target: str, host: str | None) -> tuple[str, str, str]:
    """(host, path, query) of a request target (origin or absolute form)."""
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        h, target = (rest, "/") if slash < 0 else (rest[:slash], rest[slash:])
        host = host or h
    q = target.find("?")
    path, query = (target, "") if q < 0 else (target[:q], target[q + 1:])
    h = (host or "").strip().lower()
    if h.startswith("["):  # [v6]:port
        end = h.find("]")
        hostname = h[: end + 1]
    else:
        hostname = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    return hostname, path, query


class _Http:
    """A non-LLM exchange: only what the ``http`` event needs."""

    __slots__ = ("req", "host", "path", "status")
    llm = False

    def __init__(self, req: HttpRequest, host: str, path: str) -> None:
        self.req = req
        self.host = host
        self.path = path
        self.status: int | None = None


class _Call:
    __slots__ = ("req", "host", "path", "provider", "api", "adapter", "model", "stream",
                 "request", "status", "resp_headers", "decoder", "sse", "body", "body_size",
                 "merger", "first_token_ns", "failed", "sse_mode", "analysis_error", "hold")
    llm = True

    def __init__(self, req: HttpRequest, host: str, path: str, provider: str, api: str,
                 adapter: providers.Adapter, request: Any, query: str) -> None:
        self.req = req
        self.host = host
        self.path = path
        self.provider = provider
        self.api = api
        self.adapter = adapter
        self.model = adapter.model(api, path, request)
        self.stream = adapter.is_stream(api, path, query, request)
        self.request = request
        self.status: int | None = None
        self.resp_headers: list[tuple[bytes, bytes]] = []
        self.decoder: BodyDecoder | None = None
        self.sse: SSEParser | None = None
        self.sse_mode = False
        self.body: list[bytes] = []
        self.body_size = 0
        self.merger = adapter.new_merger(api, request)
        self.first_token_ns: int | None = None
        self.failed: str | None = None
        self.analysis_error: str | None = None  # what failed in analysing it, if anything
        self.hold: BodyHold | None = None  # an undecoded JSON body's share of the body budget

    def release(self) -> None:
        """The call is over: its bodies leave the budget."""
        if self.decoder is not None:
            self.decoder.release()
        if self.hold is not None:
            self.hold.release()
        self.body = []


# Exceptions whose messages name types and positions, never values taken
# from the traffic (as ValueError's and KeyError's can: a key, a token).
_SAFE_MESSAGES = (TypeError, AttributeError, IndexError, RecursionError)


def _what_failed(x: _Call, exc: BaseException) -> str:
    """``"anthropic merger: TypeError in AnthropicMerger.finish (anthropic.py:97): ..."``"""
    tb = exc.__traceback__
    where, frame = "llm analyzer", None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_locals.get("self") is x.merger:
            where = f"{x.adapter.name} merger"
        tb = tb.tb_next
    text = f"{where}: {type(exc).__name__}"
    if frame is not None:
        code = frame.f_code
        owner = frame.f_locals.get("self")
        name = f"{type(owner).__name__}.{code.co_name}" if owner is not None else code.co_name
        text += f" in {name} ({code.co_filename.rsplit('/', 1)[-1]}:{frame.f_lineno})"
    if isinstance(exc, _SAFE_MESSAGES):
        text += f": {exc}"
    return text[:500]


class _WsCall:
    __slots__ = ("provider", "api", "request", "model", "merger", "started", "first_token_ns")

    def __init__(self, provider: str, api: str, adapter: providers.Adapter, path: str, request: Any,
                 started: int) -> None:
        self.provider = provider
        self.api = api
        self.request = request
        self.model = adapter.model(api, path, request)
        self.merger = adapter.new_merger(api, request)
        self.started = started
        self.first_token_ns: int | None = None


class _WsSession:
    """A WebSocket connection: its LLM calls, or what its record needs."""

    __slots__ = ("req", "resp", "host", "path", "apis", "owner", "calls", "llm_calls", "counts", "messages",
                 "omitted", "close_code", "close_reason", "closed_by")

    def __init__(self, ev: StreamSwitched, host: str, path: str,
                 apis: list[tuple[providers.Adapter, str]], owner: providers.Adapter | None) -> None:
        self.req = ev.request
        self.resp = ev.response
        self.host = host
        self.path = path
        self.apis = apis  # what the session may speak
        self.owner = owner
        self.calls: deque[_WsCall] = deque()  # asked for, not answered yet
        self.llm_calls = 0
        self.counts = [0, 0, 0, 0]  # client messages, server messages, client bytes, server bytes
        self.messages: list[WebSocketMessage] = []
        self.omitted = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.closed_by: str | None = None

    def count(self, ev: WsMessage) -> None:
        if ev.opcode == "text" or ev.opcode == "binary":
            i = 0 if ev.from_client else 1
            self.counts[i] += 1
            self.counts[i + 2] += ev.size
        elif ev.opcode == "close" and self.closed_by is None:
            self.closed_by = "client" if ev.from_client else "server"
            self.close_code, self.close_reason = ev.close_code, ev.close_reason
        if len(self.messages) < WebSocketSession.MAX_LISTED:
            self.messages.append(WebSocketMessage(ev.from_client, ev.opcode, ev.size, ev.first_ts, ev.ts,
                                                  ev.incomplete is not None))
        else:
            self.omitted += 1


class LlmAnalyzer:
    def __init__(self, stats: Stats, provider_hosts: Mapping[str, str] | None = None,
                 budget: BodyBudget | None = None) -> None:
        self.stats = stats
        self.budget = budget if budget is not None else BodyBudget()
        self._x: dict[int, _Http | _Call] = {}
        self._ws: dict[int, _WsSession] = {}
        # host (optionally host:port) -> provider name, for self-hosted or mock endpoints
        self._host_map = {k.lower(): v for k, v in (provider_hosts or {}).items()}
        self._owned: dict[str, providers.Adapter] = {}
        self._targets: dict[tuple[str, str, str | None], tuple[str, str, str, list[tuple[providers.Adapter, str]]]] = {}

    # -- dispatch ------------------------------------------------------------
    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is HttpBody:
            x = self._x.get(ev.xid)  # type: ignore[attr-defined]
            if x is not None and x.llm:
                try:
                    self._body(x, ev)  # type: ignore[arg-type]
                except Exception as exc:
                    self._analysis_failed(x, exc)  # type: ignore[arg-type]
            return []
        if t is HttpRequest:
            try:
                self._x[ev.xid] = self._classify(ev)  # type: ignore[attr-defined, arg-type]
            except Exception:
                self.stats["errors.llm"] += 1
                self._x[ev.xid] = _Http(ev, "", "")  # type: ignore[attr-defined, arg-type]
            ev.body = b""  # type: ignore[attr-defined]  # parsed now, or not wanted: not held until the response ends
            return []
        if t is HttpResponse:
            x = self._x.get(ev.xid)  # type: ignore[attr-defined]
            if x is not None:
                x.status = ev.status  # type: ignore[attr-defined]
                if x.llm:
                    try:
                        self._response(x, ev)  # type: ignore[arg-type]
                    except Exception as exc:
                        self._analysis_failed(x, exc)  # type: ignore[arg-type]
            return []
        if t is HttpEnd:
            x = self._x.pop(ev.xid, None)  # type: ignore[attr-defined]
            if x is None:
                return []
            try:
                out = self._call_event(x, ev) if x.llm else self._http_event(x, ev)  # type: ignore[arg-type]
            except Exception as exc:
                if not x.llm:
                    self.stats["errors.llm"] += 1
                    return []
                self._analysis_failed(x, exc)  # type: ignore[arg-type]
                return [self._partial_call(x, ev)]  # type: ignore[arg-type]
            finally:
                if x.llm:
                    x.release()  # type: ignore[union-attr]
            if x.llm and x.analysis_error:  # type: ignore[union-attr]
                out.analysis_error = x.analysis_error  # type: ignore[union-attr]
                self.stats["llm.analysis_errors"] += 1
            return [out]
        if t is WsMessage or t is StreamSwitched or t is WsEnd:
            try:
                if t is WsMessage:
                    return self._ws_message(ev)  # type: ignore[arg-type]
                if t is StreamSwitched:
                    return self._switched(ev)  # type: ignore[arg-type]
                return self._ws_end(ev)  # type: ignore[arg-type]
            except Exception:
                self.stats["errors.llm"] += 1
                return []
        return [ev]

    # -- when the analysis of a call fails --------------------------------------
    def _analysis_failed(self, x: _Call, exc: Exception) -> None:
        """Stops analysing the call's body, and remembers what failed first."""
        self.stats["errors.llm"] += 1
        x.failed = "analyzer_error"
        if x.analysis_error is None:
            x.analysis_error = _what_failed(x, exc)

    def _partial_call(self, x: _Call, end: HttpEnd) -> LlmCall:
        """The llm_call of an exchange whose analysis failed at its end: built
        again from what the merger had gathered, or, should that fail too,
        from the request alone; ``analysis_error`` says what failed."""
        self.stats["llm.analysis_errors"] += 1
        x.merger = providers.SalvagedMerger(x.merger)
        x.decoder = None
        x.sse = None
        x.body = []
        try:
            call = self._call_event(x, end)
            call.analysis_error = x.analysis_error
            return call
        except Exception as exc:
            self.stats["errors.llm"] += 1
            req = x.req
            ended = end.ts if end.ts is not None else req.end_ts
            return LlmCall(
                ts=ended, provider=x.provider, api=x.api, model=x.model, stream=x.stream,
                status=x.status, method=req.method, host=x.host, path=req.target, request=x.request,
                request_headers={}, response_headers={},
                response=LlmResponse(), usage={},
                started_ns=req.ts, first_token_ns=x.first_token_ns, ended_ns=ended, pid=req.pid,
                tid=req.tid, comm=req.comm, conn=req.conn, side=req.side,
                incomplete_reason="internal_error", protocol=req.protocol,
                analysis_error=f"{x.analysis_error}; then building the call: {_what_failed(x, exc)}")

    def close(self) -> list[object]:
        # HTTP ends every exchange it started; anything left is a request
        # whose end we never saw
        out = []
        for xid in list(self._x):
            out.extend(self.feed(HttpEnd(xid, None, None, "end_of_capture", False, 0)))
        for xid, s in list(self._ws.items()):
            out.extend(self.feed(WsEnd(xid, s.req.key, s.resp.ts, "end_of_capture", 0, 0)))
        return out

    # -- request ---------------------------------------------------------------
    def _classify(self, req: HttpRequest) -> _Http | _Call:
        headers = req.headers
        host_hdr = header_value(headers, b"host")
        key = (req.method, req.target, host_hdr)
        seen = self._targets.get(key)
        if seen is None:
            # Most exchanges repeat a handful of targets: what their method,
            # target and Host say is worked out once.
            host, path, query = split_target(req.target, host_hdr)
            matches = [(a, api) for a in providers.ADAPTERS if (api := a.match_path(req.method, path)) is not None]
            seen = (host, path, query, matches)
            if len(req.target) <= MAX_TARGET_KEPT:
                if len(self._targets) >= MAX_TARGETS:
                    self._targets.clear()
                self._targets[key] = seen
        host, path, query, matches = seen
        if not matches:
            return _Http(req, host, path)
        owner = self._owner(host, host_hdr)
        if owner is not None:
            matches = [(a, api) for a, api in matches if a is owner]
            if not matches:
                return _Http(req, host, path)
        body = self._request_json(req)
        if owner is None:
            matches = [(a, api) for a, api in matches if a.match_body(api, body)]
            if not matches:
                return _Http(req, host, path)
        a, api = matches[0]
        self.stats["llm.calls"] += 1
        return _Call(req, host, path, a.name if owner is not None else "unknown", api, a,
                     body, query)

    def _owner(self, host: str, host_hdr: str | None) -> providers.Adapter | None:
        if self._host_map:
            name = self._host_map.get((host_hdr or "").lower()) or self._host_map.get(host)
            if name:
                return providers.get(name)
        a = self._owned.get(host)
        if a is None and host not in self._owned:
            a = next((a for a in providers.ADAPTERS if a.owns_host(host)), None)
            self._owned[host] = a  # type: ignore[assignment]
        return a

    def _request_json(self, req: HttpRequest) -> Any:
        body = req.body
        if not body:
            return None
        enc = header_value(req.headers, b"content-encoding")
        if enc:
            try:
                body = decode_all(body, enc, MAX_RESPONSE_BODY, stats=self.stats)
            except DecompressionLimit:  # counted by the decoder
                return None
            except DecodeError:
                self.stats["skipped.bad_encoding"] += 1
                return None
        try:
            return json_loads(body)
        except ValueError:
            return None

    # -- response ---------------------------------------------------------------
    def _response(self, x: _Call, ev: HttpResponse) -> None:
        x.resp_headers = ev.headers
        ctype = (header_value(x.resp_headers, b"content-type") or "").lower()
        x.sse_mode = "text/event-stream" in ctype and x.status is not None and x.status < 300
        if x.sse_mode:
            x.sse = SSEParser(self.stats)
        try:
            x.decoder = BodyDecoder(header_value(x.resp_headers, b"content-encoding"),
                                    MAX_RESPONSE_BODY, budget=self.budget, stats=self.stats)
        except DecodeError:
            self.stats["skipped.bad_encoding"] += 1
            x.failed = "unsupported content-encoding"

    def _body(self, x: _Call, ev: HttpBody) -> None:
        if x.failed or x.decoder is None:
            return
        data = ev.data
        if x.decoder.active:
            try:
                data = x.decoder.feed(data)
            except DecompressionLimit as e:  # counted by the decoder
                x.failed = str(e)
                if x.sse is None:  # the JSON body is cut short: nothing to parse
                    x.body = []
                    return
                data = e.output  # the events up to the cut still count
            except DecodeError:
                self.stats["skipped.bad_encoding"] += 1
                x.failed = "bad content-encoding"
                return
            if not data:
                return
        if x.sse is not None:
            events = x.sse.feed(data)
            if events:
                self._sse(x, events, ev.ts)
        else:
            if x.first_token_ns is None and x.stream:
                x.first_token_ns = ev.ts  # a streamed JSON array
            x.body_size += len(data)
            if x.body_size > MAX_RESPONSE_BODY:
                return
            if not x.decoder.active:  # decoded bytes are in the budget already
                if x.hold is None:
                    x.hold = self.budget.hold()
                if not x.hold.reserve(len(data)):
                    self.stats["skipped.body_budget"] += 1
                    x.failed = "the response body did not fit in the memory kept for bodies"
                    x.body = []
                    x.hold.release()
                    return
            x.body.append(data)

    def _sse(self, x: _Call, events: list[tuple[str | None, str]], ts: int) -> None:
        feed = x.merger.feed_sse
        for name, data in events:
            if feed(name, data) and x.first_token_ns is None:
                x.first_token_ns = ts

    # -- end ----------------------------------------------------------------------
    def _finish_body(self, x: _Call, ts: int | None) -> None:
        if x.decoder is not None and not x.failed:
            try:
                tail = x.decoder.flush()
            except DecodeError:
                tail = b""
                x.failed = "bad content-encoding"
            if x.sse is not None:
                self._sse(x, x.sse.feed(tail) + x.sse.close() if tail else x.sse.close(), ts or 0)
            elif tail:
                x.body.append(tail)
        if x.sse is None and x.body:
            raw = b"".join(x.body)
            x.body = []
            try:
                obj = json_loads(raw)
            except ValueError:
                obj = None
                if x.status is not None and x.status >= 400:
                    obj = raw[:1000].decode("utf-8", "replace")
            if x.status is not None and x.status >= 400:
                x.merger.feed_error(obj, x.status)
            elif obj is not None:
                x.merger.feed_json(obj)
        elif x.status is not None and x.status >= 400 and x.merger.error is None:
            x.merger.feed_error(None, x.status)
        x.merger.finish()

    def _call_event(self, x: _Call, end: HttpEnd) -> LlmCall:
        req = x.req
        ended = end.ts if end.ts is not None else req.end_ts
        self._finish_body(x, ended)
        m = x.merger
        resp = m.result()
        incomplete = end.incomplete or req.incomplete
        if incomplete in _ENDS and m.complete and not req.incomplete:
            incomplete = None
        error = m.error
        if error is None and incomplete in _CONN_FAILURES:
            error = {"type": "connection", "message": _CONN_FAILURES[incomplete]}
        if x.failed and error is None:
            error = {"type": "analyzer", "message": x.failed}
        if incomplete:
            self.stats["llm.incomplete"] += 1
        model = x.model if x.model is not None else resp.get("model")
        return LlmCall(
            ts=ended, provider=x.provider, api=x.api, model=model, stream=x.stream, status=x.status,
            method=req.method, host=x.host, path=req.target, request=x.request,
            request_headers=headers_dict(req.headers), response_headers=headers_dict(x.resp_headers),
            response=_response(resp), usage=m.usage, started_ns=req.ts, first_token_ns=x.first_token_ns,
            ended_ns=ended, pid=req.pid, tid=req.tid, comm=req.comm, conn=req.conn, side=req.side, error=error,
            incomplete_reason=incomplete, request_truncated=req.body_capped, protocol=req.protocol)

    def _http_event(self, x: _Http, end: HttpEnd) -> HttpExchange:
        req = x.req
        ended = end.ts if end.ts is not None else req.end_ts
        incomplete = end.incomplete or req.incomplete
        return HttpExchange(
            ts=ended, method=req.method, host=x.host, path=req.target, status=x.status,
            request_size=req.body_size, response_size=end.resp_size, started_ns=req.ts, ended_ns=ended,
            pid=req.pid, tid=req.tid, comm=req.comm, conn=req.conn, side=req.side, incomplete_reason=incomplete,
            error={"type": "connection", "message": _CONN_FAILURES[incomplete]}
            if incomplete in _CONN_FAILURES else None, protocol=req.protocol)


    # -- WebSocket -------------------------------------------------------------------
    def _switched(self, ev: StreamSwitched) -> list[object]:
        x = self._x.pop(ev.xid, None)  # the handshake: the session stands for it now
        req = ev.request
        host_hdr = header_value(req.headers, b"host")
        host, path, _ = split_target(req.target, host_hdr)
        if not is_websocket(ev.response.headers):
            # another protocol, not read: its handshake is what can be told
            http = x if isinstance(x, _Http) else _Http(req, host, path)
            http.status = ev.response.status
            return [self._http_event(http, HttpEnd(ev.xid, ev.key, ev.ts, None, True, 0))]
        apis = [(a, api) for a in providers.ADAPTERS if (api := a.match_websocket(path)) is not None]
        owner = self._owner(host, host_hdr) if apis else None
        if owner is not None:
            apis = [(a, api) for a, api in apis if a is owner]
        self._ws[ev.xid] = _WsSession(ev, host, path, apis, owner)
        self.stats["ws.sessions"] += 1
        return []

    def _ws_message(self, ev: WsMessage) -> list[object]:
        s = self._ws.get(ev.xid)
        if s is None:
            return []
        s.count(ev)
        if not s.apis or ev.opcode != "text" or not ev.data:
            return []
        if ev.from_client:
            try:
                msg = json_loads(ev.data)
            except ValueError:
                return []
            for a, api in s.apis:
                if a.starts_call(api, msg) and (s.owner is a or a.match_body(api, msg)):
                    self.stats["llm.calls"] += 1
                    s.calls.append(_WsCall(a.name if s.owner is not None else "unknown", api, a, s.path, msg,
                                           ev.first_ts))
                    break
            return []
        if not s.calls:
            return []
        call = s.calls[0]
        m = call.merger
        if m.feed_sse(None, ev.data) and call.first_token_ns is None:  # type: ignore[arg-type]
            call.first_token_ns = ev.first_ts
        if m.complete or m.error is not None:
            s.calls.popleft()
            return [self._ws_call_event(s, call, ev.ts, None)]
        return []

    def _ws_call_event(self, s: _WsSession, call: _WsCall, ended: int, incomplete: str | None) -> LlmCall:
        s.llm_calls += 1
        m = call.merger
        m.finish()
        resp = m.result()
        if incomplete in _ENDS and m.complete:
            incomplete = None
        error = m.error
        if error is None and incomplete in _CONN_FAILURES:
            error = {"type": "connection", "message": _CONN_FAILURES[incomplete]}
        if incomplete:
            self.stats["llm.incomplete"] += 1
        req = s.req
        return LlmCall(
            ts=ended, provider=call.provider, api=call.api, model=call.model if call.model is not None
            else resp.get("model"), stream=True, status=s.resp.status, method=req.method, host=s.host,
            path=req.target, request=call.request, request_headers=headers_dict(req.headers),
            response_headers=headers_dict(s.resp.headers), response=_response(resp), usage=m.usage,
            started_ns=call.started, first_token_ns=call.first_token_ns, ended_ns=ended, pid=req.pid, tid=req.tid,
            comm=req.comm, conn=req.conn, side=req.side, error=error, incomplete_reason=incomplete,
            protocol="websocket")

    def _ws_end(self, ev: WsEnd) -> list[object]:
        s = self._ws.pop(ev.xid, None)
        if s is None:
            return []
        out: list[object] = [self._ws_call_event(s, call, ev.ts, ev.reason) for call in s.calls]
        if s.llm_calls:
            return out
        req, resp = s.req, s.resp
        c = s.counts
        out.append(WebSocketSession(
            ts=ev.ts, host=s.host, path=req.target, status=resp.status,
            subprotocol=header_value(resp.headers, b"sec-websocket-protocol"),
            extensions=header_value(resp.headers, b"sec-websocket-extensions"), started_ns=req.ts,
            opened_ns=resp.ts, ended_ns=ev.ts, pid=req.pid, tid=req.tid, comm=req.comm, conn=req.conn,
            side=req.side, client_messages=c[0], server_messages=c[1], client_bytes=c[2], server_bytes=c[3],
            client_wire_bytes=ev.client_wire_bytes, server_wire_bytes=ev.server_wire_bytes, messages=s.messages,
            messages_omitted=s.omitted, close_code=s.close_code, close_reason=s.close_reason,
            closed_by=s.closed_by, incomplete_reason=None if s.closed_by is not None else ev.reason))
        return out


def _response(r: dict[str, Any]) -> LlmResponse:
    """A merger's result as the event's response."""
    return LlmResponse(
        text=r["text"], tool_calls=[ToolCall(t.get("id"), t.get("name"), t.get("arguments")) for t in r["tool_calls"]],
        stop_reason=r["stop_reason"], thinking=r.get("thinking"), model=r.get("model"), id=r.get("id"))
