"""A local HTTPS mock of the Anthropic, OpenAI and Gemini APIs.

    with LLMMock() as mock:
        client = openai.OpenAI(base_url=mock.base_url + "/v1", api_key="sk-test",
                               http_client=httpx.Client(verify=mock.ssl_context()))
        mock.script.text = "exact answer"      # what the next calls answer
        ...
        mock.requests          # [(method, path, headers, parsed JSON body)]
        mock.raw_events()      # what the server read and wrote, as raw `ssl`
                               # events (docs/events.md), seen from the server side

Binds 127.0.0.1 only, port 0, one thread per connection, HTTP/1.1 keep-alive,
Nagle off.  The certificate (a throw-away CA and a server certificate for
127.0.0.1 and localhost) is generated with ``cryptography`` in a temp dir.

Endpoints:
    POST /v1/messages                                  Anthropic Messages
    POST /v1/chat/completions                          OpenAI Chat Completions
    POST /v1/responses                                 OpenAI Responses
    POST /v1beta/models/{model}:generateContent        Gemini
    POST /v1beta/models/{model}:streamGenerateContent  Gemini (?alt=sse: SSE, else a JSON array)

The ``*_response`` / ``*_events`` functions build the same payloads without a
server, for tests that feed byte streams to the Pipeline directly.
"""
from __future__ import annotations

import base64
import datetime
import gzip
import io
import json
import os
import socket
import ssl
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator
from urllib.parse import parse_qs, urlsplit

__all__ = ["Script", "LLMMock", "anthropic_response", "anthropic_events", "chat_response",
           "chat_events", "responses_response", "responses_events", "gemini_response",
           "gemini_chunks", "sse"]


@dataclass
class Script:
    """What the mock answers. Change fields between calls; tests assert on them."""

    text: str = "Hello from the mock LLM."
    tool_name: str | None = None          # set to return one tool call
    tool_args: dict[str, Any] = field(default_factory=dict)
    tool_id: str | None = None            # default: toolu_mock_1 / call_mock_1
    input_tokens: int = 12
    output_tokens: int = 7
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    model: str | None = None              # default: the model the request asked for
    piece: int = 3                        # characters per streamed text delta
    status: int = 200                     # >= 400: an error response in the API's format
    error_message: str = "mock error"
    encoding: str | None = None           # gzip, deflate, br or zstd (non-streamed bodies)
    stream_delay: float = 0.0             # seconds between streamed events


def _pieces(s: str, n: int) -> list[str]:
    n = max(1, n)
    return [s[i:i + n] for i in range(0, len(s), n)]


def sse(events: list[tuple[str | None, Any]], crlf: bool = False) -> list[bytes]:
    """Serialise (event name, JSON data or str) pairs as SSE frames."""
    nl = "\r\n" if crlf else "\n"
    out = []
    for name, data in events:
        d = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        s = (f"event: {name}{nl}" if name else "") + f"data: {d}{nl}{nl}"
        out.append(s.encode())
    return out


# -- Anthropic -----------------------------------------------------------------
def _anthropic_usage(s: Script, output: int) -> dict[str, Any]:
    return {"input_tokens": s.input_tokens, "output_tokens": output,
            "cache_creation_input_tokens": s.cache_creation_tokens,
            "cache_read_input_tokens": s.cache_read_tokens}


def anthropic_response(s: Script, model: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if s.text:
        content.append({"type": "text", "text": s.text})
    if s.tool_name:
        content.append({"type": "tool_use", "id": s.tool_id or "toolu_mock_1",
                        "name": s.tool_name, "input": s.tool_args})
    return {"id": "msg_mock_1", "type": "message", "role": "assistant",
            "model": s.model or model, "content": content,
            "stop_reason": "tool_use" if s.tool_name else "end_turn", "stop_sequence": None,
            "usage": _anthropic_usage(s, s.output_tokens)}


def anthropic_events(s: Script, model: str) -> list[tuple[str | None, Any]]:
    ev: list[tuple[str | None, Any]] = []
    msg = anthropic_response(s, model)
    start = dict(msg, content=[], stop_reason=None, usage=_anthropic_usage(s, 1))
    ev.append(("message_start", {"type": "message_start", "message": start}))
    idx = 0
    if s.text:
        ev.append(("content_block_start", {"type": "content_block_start", "index": 0,
                                           "content_block": {"type": "text", "text": ""}}))
        ev.append(("ping", {"type": "ping"}))
        for p in _pieces(s.text, s.piece):
            ev.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": p}}))
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        idx = 1
    if s.tool_name:
        ev.append(("content_block_start", {
            "type": "content_block_start", "index": idx,
            "content_block": {"type": "tool_use", "id": s.tool_id or "toolu_mock_1",
                              "name": s.tool_name, "input": {}}}))
        for p in _pieces(json.dumps(s.tool_args), 5):
            ev.append(("content_block_delta", {
                "type": "content_block_delta", "index": idx,
                "delta": {"type": "input_json_delta", "partial_json": p}}))
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": idx}))
    ev.append(("message_delta", {"type": "message_delta",
                                 "delta": {"stop_reason": msg["stop_reason"], "stop_sequence": None},
                                 "usage": {"output_tokens": s.output_tokens}}))
    ev.append(("message_stop", {"type": "message_stop"}))
    return ev


# -- OpenAI Chat Completions ----------------------------------------------------------
def _chat_usage(s: Script) -> dict[str, Any]:
    return {"prompt_tokens": s.input_tokens, "completion_tokens": s.output_tokens,
            "total_tokens": s.input_tokens + s.output_tokens,
            "prompt_tokens_details": {"cached_tokens": s.cache_read_tokens, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                          "accepted_prediction_tokens": 0,
                                          "rejected_prediction_tokens": 0}}


def chat_response(s: Script, model: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": s.text or None, "refusal": None}
    if s.tool_name:
        msg["tool_calls"] = [{"id": s.tool_id or "call_mock_1", "type": "function",
                              "function": {"name": s.tool_name,
                                           "arguments": json.dumps(s.tool_args)}}]
    return {"id": "chatcmpl-mock1", "object": "chat.completion", "created": 1700000000,
            "model": s.model or model, "system_fingerprint": "fp_mock",
            "choices": [{"index": 0, "message": msg, "logprobs": None,
                         "finish_reason": "tool_calls" if s.tool_name else "stop"}],
            "usage": _chat_usage(s)}


def chat_events(s: Script, model: str, include_usage: bool) -> list[tuple[str | None, Any]]:
    base = {"id": "chatcmpl-mock1", "object": "chat.completion.chunk", "created": 1700000000,
            "model": s.model or model, "system_fingerprint": "fp_mock"}
    if include_usage:
        base["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return dict(base, choices=[{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": finish}])

    ev: list[tuple[str | None, Any]] = [(None, chunk({"role": "assistant", "content": ""}))]
    for p in _pieces(s.text, s.piece) if s.text else ():
        ev.append((None, chunk({"content": p})))
    if s.tool_name:
        ev.append((None, chunk({"tool_calls": [{
            "index": 0, "id": s.tool_id or "call_mock_1", "type": "function",
            "function": {"name": s.tool_name, "arguments": ""}}]})))
        for p in _pieces(json.dumps(s.tool_args), 4):
            ev.append((None, chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]})))
    ev.append((None, chunk({}, "tool_calls" if s.tool_name else "stop")))
    if include_usage:
        ev.append((None, dict(base, choices=[], usage=_chat_usage(s))))
    ev.append((None, "[DONE]"))
    return ev


# -- OpenAI Responses -----------------------------------------------------------------
def _responses_items(s: Script) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if s.text:
        items.append({"type": "message", "id": "msg_mock_1", "status": "completed",
                      "role": "assistant",
                      "content": [{"type": "output_text", "text": s.text, "annotations": [],
                                   "logprobs": []}]})
    if s.tool_name:
        items.append({"type": "function_call", "id": "fc_mock_1",
                      "call_id": s.tool_id or "call_mock_1", "name": s.tool_name,
                      "arguments": json.dumps(s.tool_args), "status": "completed"})
    return items


def responses_response(s: Script, model: str, status: str = "completed",
                       output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    done = status == "completed"
    return {
        "id": "resp_mock_1", "object": "response", "created_at": 1700000000, "status": status,
        "background": False, "error": None, "incomplete_details": None, "instructions": None,
        "max_output_tokens": None, "model": s.model or model,
        "output": _responses_items(s) if output is None else output,
        "parallel_tool_calls": True, "previous_response_id": None, "reasoning": {"effort": None,
                                                                                 "summary": None},
        "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
        "usage": {"input_tokens": s.input_tokens,
                  "input_tokens_details": {"cached_tokens": s.cache_read_tokens},
                  "output_tokens": s.output_tokens,
                  "output_tokens_details": {"reasoning_tokens": 0},
                  "total_tokens": s.input_tokens + s.output_tokens} if done else None,
        "user": None, "metadata": {},
    }


def responses_events(s: Script, model: str) -> list[tuple[str | None, Any]]:
    ev: list[tuple[str | None, Any]] = []

    def add(t: str, **kw: Any) -> None:
        ev.append((t, dict({"type": t, "sequence_number": len(ev)}, **kw)))

    add("response.created", response=responses_response(s, model, "in_progress", []))
    add("response.in_progress", response=responses_response(s, model, "in_progress", []))
    oi = 0
    if s.text:
        item = {"type": "message", "id": "msg_mock_1", "status": "in_progress",
                "role": "assistant", "content": []}
        add("response.output_item.added", output_index=oi, item=item)
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        add("response.content_part.added", item_id="msg_mock_1", output_index=oi,
            content_index=0, part=part)
        for p in _pieces(s.text, s.piece):
            add("response.output_text.delta", item_id="msg_mock_1", output_index=oi,
                content_index=0, delta=p, logprobs=[])
        add("response.output_text.done", item_id="msg_mock_1", output_index=oi,
            content_index=0, text=s.text, logprobs=[])
        add("response.content_part.done", item_id="msg_mock_1", output_index=oi,
            content_index=0, part=dict(part, text=s.text))
        add("response.output_item.done", output_index=oi, item=_responses_items(s)[0])
        oi += 1
    if s.tool_name:
        args = json.dumps(s.tool_args)
        item = {"type": "function_call", "id": "fc_mock_1", "call_id": s.tool_id or "call_mock_1",
                "name": s.tool_name, "arguments": "", "status": "in_progress"}
        add("response.output_item.added", output_index=oi, item=item)
        for p in _pieces(args, 4):
            add("response.function_call_arguments.delta", item_id="fc_mock_1",
                output_index=oi, delta=p)
        add("response.function_call_arguments.done", item_id="fc_mock_1", output_index=oi,
            arguments=args)
        add("response.output_item.done", output_index=oi,
            item=dict(item, arguments=args, status="completed"))
    add("response.completed", response=responses_response(s, model))
    return ev


# -- Gemini -----------------------------------------------------------------------------
def _gemini_usage(s: Script, output: int) -> dict[str, Any]:
    u: dict[str, Any] = {"promptTokenCount": s.input_tokens, "candidatesTokenCount": output,
                         "totalTokenCount": s.input_tokens + output}
    if s.cache_read_tokens:
        u["cachedContentTokenCount"] = s.cache_read_tokens
    return u


def gemini_response(s: Script, model: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    if s.text:
        parts.append({"text": s.text})
    if s.tool_name:
        parts.append({"functionCall": {"name": s.tool_name, "args": s.tool_args}})
    return {"candidates": [{"content": {"parts": parts, "role": "model"},
                            "finishReason": "STOP", "index": 0}],
            "usageMetadata": _gemini_usage(s, s.output_tokens),
            "modelVersion": s.model or model, "responseId": "mock-gemini-1"}


def gemini_chunks(s: Script, model: str) -> list[dict[str, Any]]:
    out = []
    pieces = _pieces(s.text, s.piece) if s.text else []
    for i, p in enumerate(pieces):
        out.append({"candidates": [{"content": {"parts": [{"text": p}], "role": "model"},
                                    "index": 0}],
                    "usageMetadata": _gemini_usage(s, min(i + 1, s.output_tokens)),
                    "modelVersion": s.model or model, "responseId": "mock-gemini-1"})
    last_parts = ([{"functionCall": {"name": s.tool_name, "args": s.tool_args}}]
                  if s.tool_name else [{"text": ""}])
    out.append({"candidates": [{"content": {"parts": last_parts, "role": "model"},
                                "finishReason": "STOP", "index": 0}],
                "usageMetadata": _gemini_usage(s, s.output_tokens),
                "modelVersion": s.model or model, "responseId": "mock-gemini-1"})
    return out


def error_body(api: str, s: Script) -> dict[str, Any]:
    if api == "anthropic":
        return {"type": "error", "error": {"type": "rate_limit_error", "message": s.error_message}}
    if api == "gemini":
        return {"error": {"code": s.status, "message": s.error_message,
                          "status": "RESOURCE_EXHAUSTED"}}
    return {"error": {"message": s.error_message, "type": "rate_limit_exceeded",
                      "param": None, "code": "rate_limit_exceeded"}}


def encode_body(data: bytes, encoding: str | None) -> bytes:
    if not encoding:
        return data
    if encoding == "gzip":
        return gzip.compress(data)
    if encoding == "deflate":
        return zlib.compress(data)
    if encoding == "br":
        import brotli
        return brotli.compress(data)
    if encoding == "zstd":
        import zstandard
        return zstandard.ZstdCompressor().compress(data)
    raise ValueError(encoding)


# -- TLS ----------------------------------------------------------------------------------
def make_cert(directory: str) -> tuple[str, str, str]:
    """(ca_file, cert_file, key_file): a throw-away CA and a server cert for 127.0.0.1."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentsight test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                         critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_file = os.path.join(directory, "ca.pem")
    cert_file = os.path.join(directory, "server.pem")
    key_file = os.path.join(directory, "server.key")
    with open(ca_file, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(cert_file, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_file, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return ca_file, cert_file, key_file


# -- recording of the server's plaintext as raw `ssl` events ----------------------------------
class _Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self.next_conn = 1

    def conn_id(self) -> int:
        with self.lock:
            c = self.next_conn
            self.next_conn += 1
            return c

    def add(self, conn: int, d: str, data: bytes) -> None:
        ev: dict[str, Any] = {
            "type": "ssl", "ts": time.time_ns(), "pid": os.getpid(),
            "tid": threading.get_native_id(), "comm": "llm_mock", "uid": os.getuid(),
            "fn": "SSL_read" if d == "recv" else "SSL_write", "dir": d, "conn": 1_000_000 + conn,
            "len": len(data), "truncated": 0, "gap": 0, "latency_ns": 0, "ret": len(data),
        }
        try:
            ev["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            ev["data_b64"] = base64.b64encode(data).decode()
        with self.lock:
            self.events.append(ev)


class _RecordingReader(io.RawIOBase):
    def __init__(self, sock: socket.socket, rec: _Recorder, conn: int) -> None:
        self._sock, self._rec, self._conn = sock, rec, conn

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        n = self._sock.recv_into(b)
        if n:
            self._rec.add(self._conn, "recv", bytes(memoryview(b)[:n]))
        return n


class _RecordingWriter(io.RawIOBase):
    def __init__(self, sock: socket.socket, rec: _Recorder, conn: int) -> None:
        self._sock, self._rec, self._conn = sock, rec, conn

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        # recorded before it is sent, so a client that got the bytes finds them recorded
        self._rec.add(self._conn, "send", data)
        self._sock.sendall(data)
        return len(data)


# -- the server ---------------------------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 30
    server: "_Server"

    def setup(self) -> None:
        super().setup()
        rec = self.server.mock._recorder
        conn = rec.conn_id()
        self.rfile = io.BufferedReader(_RecordingReader(self.connection, rec, conn))
        self.wfile = _RecordingWriter(self.connection, rec, conn)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        url = urlsplit(self.path)
        mock = self.server.mock
        with mock._lock:
            mock.requests.append((self.command, self.path, dict(self.headers.items()), body))
            s = replace(mock.next_script())
        if not isinstance(body, dict):
            return self._json(400, {"error": {"message": "invalid JSON body"}})
        model = body.get("model") or "mock-model"
        path = url.path
        if path.endswith("/messages"):
            if s.status >= 400:
                return self._json(s.status, error_body("anthropic", s))
            if body.get("stream"):
                return self._stream(sse(anthropic_events(s, model)), s)
            return self._json(200, anthropic_response(s, model), s.encoding)
        if path.endswith("/chat/completions"):
            if s.status >= 400:
                return self._json(s.status, error_body("openai", s))
            if body.get("stream"):
                inc = bool((body.get("stream_options") or {}).get("include_usage"))
                return self._stream(sse(chat_events(s, model, inc)), s)
            return self._json(200, chat_response(s, model), s.encoding)
        if path.endswith("/responses"):
            if s.status >= 400:
                return self._json(s.status, error_body("openai", s))
            if body.get("stream"):
                return self._stream(sse(responses_events(s, model)), s)
            return self._json(200, responses_response(s, model), s.encoding)
        if "/models/" in path and ":" in path:
            gmodel = path.rsplit("/models/", 1)[1].split(":", 1)[0]
            verb = path.rsplit(":", 1)[1]
            if s.status >= 400:
                return self._json(s.status, error_body("gemini", s))
            if verb == "generateContent":
                return self._json(200, gemini_response(s, gmodel), s.encoding)
            if verb == "streamGenerateContent":
                chunks = gemini_chunks(s, gmodel)
                if parse_qs(url.query).get("alt") == ["sse"]:
                    return self._stream(sse([(None, c) for c in chunks], crlf=True), s)
                return self._json(200, chunks, s.encoding)
        return self._json(404, {"error": {"message": f"no route for {path}"}})

    def _json(self, status: int, obj: Any, encoding: str | None = None) -> None:
        data = encode_body(json.dumps(obj).encode(), encoding)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if encoding:
            self.send_header("Content-Encoding", encoding)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_mock")
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, frames: list[bytes], s: Script) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for f in frames:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(f), f))
            if s.stream_delay:
                time.sleep(s.stream_delay)
        self.wfile.write(b"0\r\n\r\n")

    # http.server writes headers through wfile: buffer them into one write
    def end_headers(self) -> None:
        self._headers_buffer.append(b"\r\n")
        data = b"".join(self._headers_buffer)
        self._headers_buffer = []
        self.wfile.write(data)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    mock: "LLMMock"


class LLMMock:
    """Context manager running the mock on https://127.0.0.1:<port>."""

    def __init__(self, script: Script | None = None) -> None:
        self.script = script or Script()
        # Answers for the next requests, one each, before `script` applies again.
        self.queue: list[Script] = []
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self._lock = threading.Lock()
        self._recorder = _Recorder()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.ca_file = ""
        self.port = 0

    def next_script(self) -> Script:
        """The answer to the request being handled (called with _lock held)."""
        return self.queue.pop(0) if self.queue else self.script

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the mock's CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    def raw_events(self) -> list[dict[str, Any]]:
        with self._recorder.lock:
            return list(self._recorder.events)

    def start(self) -> "LLMMock":
        self._tmp = tempfile.TemporaryDirectory(prefix="llm_mock_")
        self.ca_file, cert, key = make_cert(self._tmp.name)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        srv = _Server(("127.0.0.1", 0), _Handler)
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
        srv.mock = self
        self._server = srv
        self.port = srv.server_address[1]
        self._thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="llm-mock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "LLMMock":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def iter_requests(self) -> Iterator[tuple[str, str, dict[str, str], Any]]:
        with self._lock:
            return iter(list(self.requests))
