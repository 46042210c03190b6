"""The HTTP/2 and WebSocket stages over byte streams made by real protocol
libraries (h2 for both ends of an HTTP/2 connection, wsproto for WebSocket
frames): split at every boundary, interleaved, with CONTINUATION frames,
padding, table size updates, resets, GOAWAY, trailers, lost bytes, and
captures that begin mid-connection; and the masking of such captures."""
from __future__ import annotations

import base64
import json
import zlib

import h2.config
import h2.connection
import h2.events
import h2.settings
import hpack
from hyperframe.frame import ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import FrameProtocol

from agentsight.analyzers.redact import Redactor
from agentsight.events import from_json
from llm_fixtures import Capture, of_type, request, run
from llm_mock import Script, anthropic_events, chat_events, chat_response, gemini_response, responses_events, sse

KEY = "sk-proj-h2unittest0123456789abcdefgh"


class H2Pair:
    """A client and a server h2 connection talking; what each writes is
    captured as the traced client's send and recv."""

    def __init__(self, c: Capture | None = None, conn: int = 1) -> None:
        self.c = c or Capture()
        self.conn = conn
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        self.client.initiate_connection()
        self.server.initiate_connection()
        self.sent: list[bytes] = []
        self.received: list[bytes] = []
        self.pump()

    def pump(self) -> None:
        while True:
            out = self.client.data_to_send()
            if out:
                self.sent.append(out)
                self.c.send(out, conn=self.conn)
                self._ack(self.server, self.server.receive_data(out))
            back = self.server.data_to_send()
            if back:
                self.received.append(back)
                self.c.recv(back, conn=self.conn)
                self._ack(self.client, self.client.receive_data(back))
            if not out and not back:
                return

    @staticmethod
    def _ack(conn: h2.connection.H2Connection, events: list) -> None:
        for e in events:
            if isinstance(e, h2.events.DataReceived) and e.flow_controlled_length:
                conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)

    def request(self, path: str, body: dict, headers: list | None = None, end: bool = True,
                authority: str = "api.openai.com") -> int:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, [(":method", "POST"), (":authority", authority), (":scheme", "https"),
                                       (":path", path), ("authorization", f"Bearer {KEY}"),
                                       ("content-type", "application/json")] + (headers or []))
        self.client.send_data(sid, json.dumps(body).encode(), end_stream=end)
        self.pump()
        return sid

    def respond(self, sid: int, frames: list[bytes], ctype: str = "text/event-stream", end: bool = True,
                trailers: list | None = None, pad: int | None = None) -> None:
        self.server.send_headers(sid, [(":status", "200"), ("content-type", ctype)])
        self.pump()
        for f in frames:
            self.server.send_data(sid, f, pad_length=pad)
            self.pump()
        if trailers:
            self.server.send_headers(sid, trailers, end_stream=True)
        elif end:
            self.server.end_stream(sid)
        self.pump()


def chat_body(stream: bool = True, model: str = "gpt-4o") -> dict:
    body = {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def chat_sse(text: str, model: str = "gpt-4o") -> list[bytes]:
    return sse(chat_events(Script(text=text, input_tokens=3, output_tokens=2), model, True))


def one_call(out: list[dict]) -> dict:
    calls = of_type(out, "llm_call")
    assert len(calls) == 1, out
    return calls[0]


def streamed_chat() -> H2Pair:
    p = H2Pair()
    sid = p.request("/v1/chat/completions", chat_body())
    p.respond(sid, chat_sse("split anywhere, still whole"))
    return p


def _events_for(sent: bytes, received: bytes, send_cut: int | None, recv_cut: int | None) -> list[dict]:
    c = Capture()
    for data, cut_at, send in ((sent, send_cut, True), (received, recv_cut, False)):
        pieces = [data] if cut_at is None else [data[:cut_at], data[cut_at:]]
        for piece in pieces:
            (c.send if send else c.recv)(piece)
    return c.events


def _check(out: list[dict], text: str = "split anywhere, still whole") -> None:
    call = one_call(out)
    assert (call["protocol"], call["model"], call["response"]["text"], call.get("incomplete")) == \
        ("h2", "gpt-4o", text, None), call
    assert call["usage"]["input_tokens"] == 3 and call["request_headers"]["authorization"] == "[REDACTED]"


def test_a_streamed_call_split_at_every_byte_of_the_responses():
    p = streamed_chat()
    sent, received = b"".join(p.sent), b"".join(p.received)
    for i in range(1, len(received)):
        out, stats = run(_events_for(sent, received, None, i))
        _check(out)
        assert "skipped.malformed_h2" not in stats.stats


def test_a_streamed_call_split_at_every_byte_of_the_requests():
    p = streamed_chat()
    sent, received = b"".join(p.sent), b"".join(p.received)
    for i in range(1, len(sent)):
        out, _ = run(_events_for(sent, received, i, None))
        _check(out)


def test_one_byte_per_read():
    p = streamed_chat()
    c = Capture()
    for b in b"".join(p.sent):
        c.send(bytes([b]))
    for b in b"".join(p.received):
        c.recv(bytes([b]))
    _check(run(c.events)[0])


def test_interleaved_streams_each_become_their_call():
    p = H2Pair()
    a = p.request("/v1/chat/completions", chat_body(model="gpt-a"))
    b = p.request("/v1/messages", {"model": "claude-b", "max_tokens": 9, "stream": True,
                                   "messages": [{"role": "user", "content": "x"}]}, authority="api.anthropic.com")
    g = p.request("/v1beta/models/gemini-g:generateContent", {"contents": [{"parts": [{"text": "y"}]}]},
                  authority="generativelanguage.googleapis.com")
    frames = {a: chat_sse("alpha text", "gpt-a"),
              b: sse(anthropic_events(Script(text="bravo text", piece=2), "claude-b")),
              g: [json.dumps(gemini_response(Script(text="golf text"), "gemini-g")).encode()]}
    for sid in frames:
        p.server.send_headers(sid, [(":status", "200"), ("content-type", "application/json" if sid == g
                                                         else "text/event-stream")])
    while any(frames.values()):
        for sid, fs in frames.items():  # one frame of each stream in turn
            if fs:
                p.server.send_data(sid, fs.pop(0), end_stream=not fs)
        p.pump()
    out, _ = run(p.c.events)
    calls = {c["model"]: c["response"]["text"] for c in of_type(out, "llm_call")}
    assert calls == {"gpt-a": "alpha text", "claude-b": "bravo text", "gemini-g": "golf text"}
    assert all(c["protocol"] == "h2" and not c.get("incomplete") for c in of_type(out, "llm_call"))


def test_continuation_frames_and_a_large_header_block():
    p = H2Pair()
    big = [(f"x-context-{i}", "v" * 900) for i in range(40)]  # ~37 KB: HEADERS + CONTINUATION frames
    sid = p.request("/v1/chat/completions", chat_body(stream=False), headers=big)
    assert any(b"\x09" == bytes([chunk[3]]) for chunk in _frames(b"".join(p.sent)))
    p.respond(sid, [json.dumps(chat_response(Script(text="big headers ok"), "gpt-4o")).encode()],
              ctype="application/json")
    call = one_call(run(p.c.events)[0])
    assert call["response"]["text"] == "big headers ok" and call["request_headers"]["x-context-39"] == "v" * 900


def _frames(data: bytes) -> list[bytes]:
    """The frame headers in a client's byte stream (after the preface)."""
    pos, out = 24, []
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        out.append(data[pos:pos + 9])
        pos += 9 + n
    return out


def test_padded_and_prioritised_frames():
    """DATA padded by h2; HEADERS padded and with priority, and split with a
    padded CONTINUATION-less block, built frame by frame."""
    c = Capture()
    enc = hpack.Encoder()
    block = enc.encode([(":method", "POST"), (":scheme", "https"), (":authority", "api.openai.com"),
                        (":path", "/v1/chat/completions"), ("content-type", "application/json"),
                        ("authorization", f"Bearer {KEY}")])
    body = json.dumps(chat_body()).encode()
    h = HeadersFrame(1, block[:7], pad_length=13, depends_on=0, stream_weight=20)
    h.flags.add("PADDED")
    h.flags.add("PRIORITY")
    cont = ContinuationFrame(1, block[7:])
    cont.flags.add("END_HEADERS")
    d = DataFrame(1, body, pad_length=200)
    d.flags.add("PADDED")
    d.flags.add("END_STREAM")
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + h.serialize()
           + cont.serialize() + d.serialize())
    senc = hpack.Encoder()
    rh = HeadersFrame(1, senc.encode([(":status", "200"), ("content-type", "text/event-stream")]), pad_length=3)
    rh.flags.add("PADDED")
    rh.flags.add("END_HEADERS")
    data = b""
    frames = chat_sse("padded all over")
    for i, f in enumerate(frames):
        df = DataFrame(1, f, pad_length=i % 7)
        df.flags.add("PADDED")
        if i == len(frames) - 1:
            df.flags.add("END_STREAM")
        data += df.serialize()
    c.recv(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + rh.serialize() + data[:50])
    c.recv(data[50:])
    _check(run(c.events)[0], "padded all over")


def test_dynamic_table_size_updates_and_a_long_connection():
    p = H2Pair()
    texts = []
    for i in range(12):
        if i == 4:  # the server shrinks the client's table: its encoder signals a size update
            p.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 96})
            p.pump()
        if i == 8:
            p.server.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
            p.pump()
        sid = p.request("/v1/chat/completions", chat_body(model=f"gpt-{i}"), headers=[("x-turn", str(i))])
        p.respond(sid, chat_sse(f"answer {i}", f"gpt-{i}"))
        texts.append(f"answer {i}")
    assert any(b[0] & 0xE0 == 0x20 for b in _header_blocks(b"".join(p.sent)))  # a size update went out
    out, _ = run(p.c.events)
    calls = of_type(out, "llm_call")
    assert [c["response"]["text"] for c in calls] == texts
    assert [c["request_headers"]["x-turn"] for c in calls] == [str(i) for i in range(12)]


def _header_blocks(data: bytes) -> list[bytes]:
    pos, out = 24, []
    while pos + 9 <= len(data):
        n = int.from_bytes(data[pos:pos + 3], "big")
        if data[pos + 3] == 1:
            out.append(data[pos + 9:pos + 9 + n])
        pos += 9 + n
    return out


def test_reset_after_done_is_a_whole_call_and_before_is_not():
    p = H2Pair()
    sid = p.request("/v1/chat/completions", chat_body())
    p.respond(sid, chat_sse("done, then reset"), end=False)  # [DONE] sent, no END_STREAM
    p.client.reset_stream(sid, 8)  # CANCEL, as a client that stops reading at [DONE]
    p.pump()
    sid = p.request("/v1/chat/completions", chat_body(model="gpt-cut"))
    p.respond(sid, chat_sse("cut", "gpt-cut")[:3], end=False)
    p.client.reset_stream(sid, 8)
    p.pump()
    out, stats = run(p.c.events)
    whole, cut = of_type(out, "llm_call")
    assert (whole["response"]["text"], whole.get("incomplete")) == ("done, then reset", None)
    assert cut["incomplete_reason"] == "stream_reset" and cut["error"]["type"] == "connection"
    assert stats.stats["h2.reset_streams"] == 2


def test_done_without_end_stream_when_the_connection_ends():
    p = H2Pair()
    sid = p.request("/v1/chat/completions", chat_body())
    p.respond(sid, chat_sse("never ended, yet whole"), end=False)
    p.c.exit()
    call = one_call(run(p.c.events)[0])
    assert call["response"]["text"] == "never ended, yet whole" and not call.get("incomplete")


def test_goaway_ends_the_streams_it_refused():
    p = H2Pair()
    first = p.request("/v1/chat/completions", chat_body(model="gpt-kept"))
    p.request("/v1/chat/completions", chat_body(model="gpt-refused"))
    # the server's GOAWAY, written by hand: h2 would refuse to answer `first` after its own
    p.c.recv(GoAwayFrame(0, last_stream_id=first).serialize())
    p.respond(first, chat_sse("kept", "gpt-kept"))
    out, _ = run(p.c.events)
    calls = {c["model"]: c for c in of_type(out, "llm_call")}
    assert calls["gpt-kept"]["response"]["text"] == "kept" and not calls["gpt-kept"].get("incomplete")
    assert calls["gpt-refused"]["incomplete_reason"] == "goaway"


def test_trailers_on_both_sides():
    p = H2Pair()
    sid = p.request("/v1/chat/completions", chat_body(), end=False)
    p.client.send_headers(sid, [("x-request-checksum", "1")], end_stream=True)
    p.pump()
    p.respond(sid, chat_sse("with trailers"), trailers=[("grpc-status", "0")])
    _check(run(p.c.events)[0], "with trailers")


def test_lost_bytes_inside_data_and_across_frames():
    p = H2Pair()
    sid = p.request("/v1/chat/completions", chat_body())
    p.respond(sid, chat_sse("one two three four five six seven eight"))
    sid = p.request("/v1/chat/completions", chat_body(model="gpt-after"))
    p.respond(sid, chat_sse("after the hole", "gpt-after"))
    events = p.c.events
    # the recv carrying the 4th SSE frame of the first response loses 10 bytes in the middle of its payload
    recvs = [e for e in events if e["dir"] == "recv"]
    victim = recvs[6]
    data = base64.b64decode(victim["data_b64"]) if "data_b64" in victim else victim["data"].encode()
    victim.pop("data", None)
    victim["data_b64"] = base64.b64encode(data[:20]).decode()
    victim["truncated"] = len(data) - 20 - 0
    out, stats = run(events)
    first, after = of_type(out, "llm_call")
    assert first["incomplete_reason"] == "truncated"
    assert after["response"]["text"] == "after the hole" and not after.get("incomplete")


def test_capture_that_starts_mid_connection_is_never_guessed():
    p = H2Pair()
    for i in range(3):  # the table fills up before the capture begins
        sid = p.request("/v1/chat/completions", chat_body(model="gpt-before"), headers=[("x-session", "s1")])
        p.respond(sid, chat_sse(f"before {i}", "gpt-before"))
    seen = len(p.c.events)
    sid = p.request("/v1/chat/completions", chat_body(model="gpt-during"), headers=[("x-session", "s1")])
    p.respond(sid, chat_sse("during", "gpt-during"))
    sid = p.request("/v1/responses", {"model": "gpt-new", "input": "z", "stream": True},
                    headers=[("x-brand-new", "literal")])
    p.respond(sid, sse(responses_events(Script(text="fresh"), "gpt-new")))
    out, stats = run(p.c.events[seen:])
    exchanges = of_type(out, "llm_call") + of_type(out, "http")
    assert exchanges and stats.stats["h2.mid_connection"] >= 1
    for x in exchanges:
        if x.get("incomplete_reason") == "hpack_context_lost":
            assert x["path"] == "" and x.get("model") is None
        else:  # decoded: then exactly what was sent
            assert (x["type"], x["path"]) in (("llm_call", "/v1/chat/completions"), ("llm_call", "/v1/responses"))
            assert x["response"]["text"] in ("during", "fresh")
    assert any(x.get("incomplete_reason") == "hpack_context_lost" for x in exchanges)


def test_mid_connection_responses_first_then_frames():
    """The first read is the middle of a response frame: the connection is
    still recognised by the client's next request, whole frames."""
    p = H2Pair()
    sid = p.request("/v1/chat/completions", chat_body())
    p.respond(sid, chat_sse("x" * 3000))
    cut = len(p.c.events)
    sid = p.request("/v1/chat/completions", chat_body(model="gpt-later"))
    p.respond(sid, chat_sse("later", "gpt-later"))
    events = p.c.events[cut - 2:]
    first = events[0]
    data = base64.b64decode(first["data_b64"]) if "data_b64" in first else first["data"].encode()
    first.pop("data", None)
    first["data_b64"] = base64.b64encode(data[5:]).decode()  # begins inside a frame
    out, stats = run(events)
    assert "skipped.not_http" not in stats.stats and stats.stats["h2.connections"] == 1


def test_masked_capture_keeps_no_key_and_still_replays():
    p = H2Pair()
    for i in range(3):
        sid = p.request(f"/v1beta/models/g:generateContent?key=AIzaSyMaskTest0123456789abcdefghijkl{i}",
                        {"contents": [{"parts": [{"text": "q"}]}]}, authority="generativelanguage.googleapis.com",
                        headers=[("cookie", f"session=secret-cookie-{i}"), ("x-api-key", KEY)])
        p.respond(sid, [json.dumps(gemini_response(Script(text=f"masked {i}"), "g")).encode()],
                  ctype="application/json")
    redactor = Redactor()
    masked = [redactor.view(from_json(e)).to_json() for e in p.c.events]
    out, _ = run(masked, redact=False)
    flat = json.dumps(out)
    for secret in (KEY, "secret-cookie", "AIzaSyMaskTest"):
        assert secret not in flat
    assert [c["response"]["text"] for c in of_type(out, "llm_call")] == ["masked 0", "masked 1", "masked 2"]
    assert all(c["path"].startswith("/v1beta/models/g:generateContent?key=") for c in of_type(out, "llm_call"))
    # everything else on the wire is as it was
    assert [e["len"] for e in masked] == [e["len"] for e in p.c.events]


# -- WebSocket --------------------------------------------------------------------------

def _ws_capture(deflate: bool) -> tuple[Capture, FrameProtocol, FrameProtocol]:
    c = Capture()
    ext_headers = {"Sec-WebSocket-Extensions": "permessage-deflate"} if deflate else {}
    c.send(request("GET", "/v1/responses", "api.openai.com",
                   headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Authorization": f"Bearer {KEY}",
                            **ext_headers}))
    accept = b"Sec-WebSocket-Extensions: permessage-deflate\r\n" if deflate else b""
    c.recv(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" + accept + b"\r\n")

    def proto(client: bool) -> FrameProtocol:
        exts = []
        if deflate:
            e = PerMessageDeflate()
            e.finalize("permessage-deflate")
            exts.append(e)
        return FrameProtocol(client=client, extensions=exts)
    return c, proto(True), proto(False)


def test_responses_over_websocket_compressed_and_split_across_reads():
    c, client, server = _ws_capture(deflate=True)
    for turn, text in enumerate(("first over ws", "second " * 200)):
        msg = json.dumps({"type": "response.create", "model": "gpt-ws", "input": f"turn {turn}"})
        frame = bytes(client.send_data(msg, fin=True))
        c.send(frame[:3])  # a compressed, masked message in three reads
        c.send(frame[3:10])
        c.send(frame[10:])
        events = responses_events(Script(text=text, input_tokens=turn + 1, output_tokens=2), "gpt-ws")
        wire = b"".join(bytes(server.send_data(json.dumps(d), fin=True)) for _, d in events)
        for i in range(0, len(wire), 37):  # the server's frames cut anywhere
            c.recv(wire[i:i + 37])
    c.send(bytes(client.close(1000, "bye")))
    c.recv(bytes(server.close(1000, "bye")))
    out, stats = run(c.events)
    calls = of_type(out, "llm_call")
    assert [(x["api"], x["model"], x["response"]["text"], x["usage"]["input_tokens"]) for x in calls] == [
        ("responses", "gpt-ws", "first over ws", 1), ("responses", "gpt-ws", "second " * 200, 2)]
    assert all((x["protocol"], x["status"], x.get("incomplete")) == ("websocket", 101, None) for x in calls)
    assert calls[0]["request_headers"]["authorization"] == "[REDACTED]"
    assert of_type(out, "websocket") == [] and "skipped.malformed_websocket" not in stats.stats


def test_other_websocket_traffic_is_one_record_with_fragments_and_control_frames():
    c, client, server = _ws_capture(deflate=True)
    c.send(bytes(client.send_data("frag", fin=False)) + bytes(client.ping(b"p"))
           + bytes(client.send_data("mented", fin=True)))
    c.recv(bytes(server.pong(b"p")) + bytes(server.send_data(b"\x00\x01binary", fin=True)))
    c.send(bytes(client.send_data("z" * 70000, fin=True)))
    c.recv(bytes(server.close(1001, "going away")))
    c.send(bytes(client.close(1001, "")))
    out, _ = run(c.events)
    (ws,) = of_type(out, "websocket")
    assert [(m["from"], m["type"], m["size"]) for m in ws["messages"]] == [
        ("client", "ping", 1), ("client", "text", 10), ("server", "pong", 1), ("server", "binary", 8),
        ("client", "text", 70000), ("server", "close", 12), ("client", "close", 2)]
    assert (ws["client_messages"], ws["server_messages"], ws["client_bytes"]) == (2, 1, 70010)
    assert (ws["closed_by"], ws["close_code"], ws["close_reason"], ws.get("incomplete")) == \
        ("server", 1001, "going away", None)
    assert ws["client_wire_bytes"] < 2000  # 70000 z's, deflated


def test_websocket_without_compression_and_a_loss():
    c, client, server = _ws_capture(deflate=False)
    c.send(bytes(client.send_data(json.dumps({"type": "response.create", "model": "gpt-x", "input": "i"}),
                                  fin=True)))
    events = responses_events(Script(text="lost on the way"), "gpt-x")
    wire = b"".join(bytes(server.send_data(json.dumps(d), fin=True)) for _, d in events)
    c.recv(wire[:200], truncated=len(wire) - 200)
    out, stats = run(c.events)
    call = one_call(out)
    assert call["incomplete_reason"] == "end_of_capture" and call["model"] == "gpt-x"
    assert stats.stats["bytes.lost_in_http"] == len(wire) - 200


def test_deflate_window_and_no_context_takeover():
    """Each direction inflates with its own rules: a server that resets its
    context per message, a client with a small window."""
    c, _, _ = _ws_capture(deflate=False)
    c.events[-1]["data"] = c.events[-1]["data"].replace(
        "\r\n\r\n", "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; "
        "client_max_window_bits=9\r\n\r\n")
    for i in range(3):
        comp = zlib.compressobj(9, zlib.DEFLATED, -9)
        payload = comp.compress(b"client says %d " % i * 50) + comp.flush(zlib.Z_SYNC_FLUSH)
        c.send(_masked_frame(payload[:-4], rsv1=True))
        comp = zlib.compressobj(9, zlib.DEFLATED, -15)  # a new context every message
        payload = comp.compress(b"server says %d " % i * 50) + comp.flush(zlib.Z_SYNC_FLUSH)
        c.recv(bytes([0xC1, len(payload) - 4]) + payload[:-4])
    out, stats = run(c.events)
    (ws,) = of_type(out, "websocket")
    assert [m["size"] for m in ws["messages"]] == [len(b"client says 0 ") * 50, len(b"server says 0 ") * 50] * 3
    assert "skipped.malformed_websocket" not in stats.stats


def _masked_frame(payload: bytes, rsv1: bool = False) -> bytes:
    mask = b"\x11\x22\x33\x44"
    head = bytes([0x81 | (0x40 if rsv1 else 0)])
    n = len(payload)
    head += bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
