"""A local LLM mock that speaks HTTP/2 over TLS (chosen by ALPN, HTTP/1.1
for clients that do not offer h2) and WebSocket, served by hypercorn in a
thread of the test process.

    with H2Mock() as mock:
        mock.queue = [Script(text="..."), ...]   # answers, one per call, then mock.script
        mock.base_url, mock.ca_file, mock.ws_url
        mock.requests    # [(http_version, method, path, headers, parsed JSON body)]

The same endpoints and payloads as llm_mock.LLMMock (OpenAI Chat
Completions and Responses, Anthropic Messages, Gemini, streamed or not),
plus the Responses API's WebSocket mode at ``/v1/responses``: each
``response.create`` message is answered with the events of the streamed
form, one text message each. Binds 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs

from hypercorn.asyncio import serve
from hypercorn.config import Config

from llm_mock import (Script, anthropic_events, anthropic_response, chat_events, chat_response, encode_body,
                      error_body, gemini_chunks, gemini_response, make_cert, responses_events, responses_response,
                      sse)


class _Config(Config):
    def create_ssl_context(self) -> Any:
        context = super().create_ssl_context()
        # No TLS 1.3 session tickets after the handshake: the websockets sync client
        # reads in one thread while it writes its upgrade request in another, and an
        # SSL object handling a ticket in SSL_read can then lose that write (the
        # handshake hangs, 1 in ~20 connects, with or without a capture running).
        if context is not None:
            context.num_tickets = 0
        return context


class H2Mock:
    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.queue: list[Script] = []
        self.requests: list[tuple[str, str, str, dict[str, str], Any]] = []
        self.ws_messages: list[Any] = []
        self._lock = threading.Lock()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.ca_file = ""
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/v1/responses"

    def next_script(self) -> Script:
        with self._lock:
            return replace(self.queue.pop(0) if self.queue else self.script)

    # -- the app ------------------------------------------------------------------------
    async def app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send)
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            req = None
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self.requests.append((scope["http_version"], scope["method"], scope["path"], headers, req))
        s = self.next_script()
        if not isinstance(req, dict):
            return await self._json(send, 400, {"error": {"message": "invalid JSON body"}})
        model = req.get("model") or "mock-model"
        path = scope["path"]
        query = parse_qs(scope["query_string"].decode())
        if path.endswith("/messages"):
            if s.status >= 400:
                return await self._json(send, s.status, error_body("anthropic", s))
            if req.get("stream"):
                return await self._stream(send, sse(anthropic_events(s, model)), s)
            return await self._json(send, 200, anthropic_response(s, model), s.encoding)
        if path.endswith("/chat/completions"):
            if s.status >= 400:
                return await self._json(send, s.status, error_body("openai", s))
            if req.get("stream"):
                inc = bool((req.get("stream_options") or {}).get("include_usage"))
                return await self._stream(send, sse(chat_events(s, model, inc)), s)
            return await self._json(send, 200, chat_response(s, model), s.encoding)
        if path.endswith("/responses"):
            if s.status >= 400:
                return await self._json(send, s.status, error_body("openai", s))
            if req.get("stream"):
                return await self._stream(send, sse(responses_events(s, model)), s)
            return await self._json(send, 200, responses_response(s, model), s.encoding)
        if "/models/" in path and ":" in path:
            gmodel = path.rsplit("/models/", 1)[1].split(":", 1)[0]
            verb = path.rsplit(":", 1)[1]
            if s.status >= 400:
                return await self._json(send, s.status, error_body("gemini", s))
            if verb == "generateContent":
                return await self._json(send, 200, gemini_response(s, gmodel), s.encoding)
            if verb == "streamGenerateContent":
                chunks = gemini_chunks(s, gmodel)
                if query.get("alt") == ["sse"]:
                    return await self._stream(send, sse([(None, c) for c in chunks], crlf=True), s)
                return await self._json(send, 200, chunks, s.encoding)
        return await self._json(send, 404, {"error": {"message": f"no route for {path}"}})

    async def _json(self, send: Any, status: int, obj: Any, encoding: str | None = None) -> None:
        data = encode_body(json.dumps(obj).encode(), encoding)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"request-id", b"req_mock")]
        if encoding:
            headers.append((b"content-encoding", encoding.encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def _stream(self, send: Any, frames: list[bytes], s: Script) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream; charset=utf-8"),
                                (b"cache-control", b"no-cache")]})
        for f in frames:
            await send({"type": "http.response.body", "body": f, "more_body": True})
            if s.stream_delay:
                await asyncio.sleep(s.stream_delay)
        await send({"type": "http.response.body", "body": b""})

    async def _websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        msg = await receive()
        if msg["type"] != "websocket.connect":
            return
        if not scope["path"].endswith("/responses"):
            await send({"type": "websocket.close", "code": 1008})
            return
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            text = msg.get("text")
            try:
                event = json.loads(text) if text is not None else None
            except ValueError:
                event = None
            with self._lock:
                self.ws_messages.append(event)
            if not isinstance(event, dict) or event.get("type") != "response.create":
                # anything else is echoed back, as a plain WebSocket server would
                await send({"type": "websocket.send", "text": text} if text is not None else
                           {"type": "websocket.send", "bytes": msg.get("bytes") or b""})
                continue
            s = self.next_script()
            model = event.get("model") or "mock-model"
            if s.status >= 400:
                await send({"type": "websocket.send", "text": json.dumps(
                    {"type": "error", "status": s.status, **error_body("openai", s)})})
                continue
            for _name, data in responses_events(s, model):
                await send({"type": "websocket.send", "text": json.dumps(data, separators=(",", ":"))})
                if s.stream_delay:
                    await asyncio.sleep(s.stream_delay)

    # -- running ------------------------------------------------------------------------
    def start(self) -> "H2Mock":
        self._tmp = tempfile.TemporaryDirectory(prefix="h2_mock_")
        self.ca_file, cert, key = make_cert(self._tmp.name)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.port = sock.getsockname()[1]
        config = _Config()
        # hypercorn owns the socket from here on (and closes it): ours must not close its fd later
        config.bind = [f"fd://{sock.detach()}"]
        config.certfile, config.keyfile = cert, key
        config.accesslog = config.errorlog = None
        config.keep_alive_timeout = 3600  # a connection lives as long as its test: never closed as idle
        self._thread = threading.Thread(target=self._run, args=(config,), name="h2-mock", daemon=True)
        self._thread.start()
        if not self._ready.wait(20) or self._error is not None:
            raise RuntimeError(f"the h2 mock did not start: {self._error!r}")
        return self

    def _run(self, config: Config) -> None:
        loop = self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        loop.call_soon(self._ready.set)
        try:
            loop.run_until_complete(serve(self.app, config, shutdown_trigger=self._stop.wait))  # type: ignore[arg-type]
        except BaseException as exc:  # reported by start() or stop()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self._loop = self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "H2Mock":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
