"""Stream reassembly and HTTP/1.1 parsing, over byte streams built to be hard."""
from __future__ import annotations

import gzip
import json
import os
import random
import zlib

import brotli
import orjson
import pytest
import zstandard

from agentsight.analyzers.encoding import BodyDecoder
from agentsight.analyzers.reassembly import classify_prefix
from agentsight.events import from_json
from llm_fixtures import JsonAnalysis, Capture, cut, every, of_type, request, response, run

HOST = "example.com"


def get(path: str = "/x", host: str = HOST, **kw) -> bytes:
    return request("GET", path, host, **kw)


def one_http(out):
    hs = of_type(out, "http")
    assert len(hs) == 1, out
    return hs[0]


# -- every split point ----------------------------------------------------------------------
SMALL_RESP = response(200, b"hello world", headers={"X-A": "1"})


@pytest.mark.parametrize("split", range(1, len(SMALL_RESP)))
def test_response_split_at_every_byte(split):
    c = Capture()
    c.send(get())
    c.recv(SMALL_RESP[:split])
    c.recv(SMALL_RESP[split:])
    out, p = run(c.events)
    h = one_http(out)
    assert (h["status"], h["response_size"], h["method"], h["path"]) == (200, 11, "GET", "/x")
    assert "incomplete" not in h
    assert p.stats.get("skipped.malformed_http", 0) == 0


def test_request_and_response_one_byte_per_event():
    c = Capture()
    req = request("POST", "/upload", HOST, body=b"0123456789")
    resp = response(201, chunks=[b"ab", b"cdef", b"g"], reason="Created")
    for b in req:
        c.send(bytes([b]))
    for b in resp:
        c.recv(bytes([b]))
    h = one_http(run(c.events)[0])
    assert (h["status"], h["request_size"], h["response_size"]) == (201, 10, 7)
    assert h["started_ns"] == c.events[0]["ts"]
    assert h["ended_ns"] == c.events[-1]["ts"]


def test_chunk_sizes_straddling_reads():
    pieces = [os.urandom(n) for n in (1, 15, 16, 17, 255, 256, 4095, 4096, 4097, 70000)]
    resp = response(200, chunks=pieces, headers={"Content-Type": "application/octet-stream"})
    for step in (1, 3, 7, 4096, 16384):
        if step == 1:
            cuts = every(1, 400)  # byte by byte through the head and first chunks
        else:
            cuts = every(step, len(resp))
        c = Capture()
        c.send(get())
        c.recv_pieces(resp, cuts)
        h = one_http(run(c.events)[0])
        assert h["response_size"] == sum(map(len, pieces)), step


# -- keep-alive, pipelining ------------------------------------------------------------------
def test_keep_alive_many_exchanges_and_pipelining_in_one_write():
    c = Capture()
    # three pipelined requests in one write, responses arriving in odd pieces
    c.send(get("/a") + request("POST", "/b", HOST, body=b"xyz") + get("/c"))
    resps = (response(200, b"A" * 10) + response(404, b"nope", reason="Not Found")
             + response(200, chunks=[b"C" * 3, b"C" * 4]))
    c.recv_pieces(resps, [5, 50, 51, 90, 120, 121, 122])
    # then a plain keep-alive exchange
    c.send(get("/d"))
    c.recv(response(200, b"d"))
    out, p = run(c.events)
    hs = of_type(out, "http")
    assert [(h["path"], h["status"], h["response_size"]) for h in hs] == [
        ("/a", 200, 10), ("/b", 404, 4), ("/c", 200, 7), ("/d", 200, 1)]
    assert hs[1]["request_size"] == 3
    assert p.stats["http.exchanges"] == 4


def test_several_connections_interleaved():
    c = Capture()
    for conn in (1, 2, 3):
        c.send(get(f"/{conn}"), conn=conn)
    for conn in (3, 1, 2):
        c.recv(response(200, b"x" * conn), conn=conn)
    hs = of_type(run(c.events)[0], "http")
    assert sorted((h["conn"], h["path"], h["response_size"]) for h in hs) == [
        (1, "/1", 1), (2, "/2", 2), (3, "/3", 3)]


# -- special responses -----------------------------------------------------------------------
def test_expect_100_continue():
    c = Capture()
    body = b'{"big": "body"}'
    head = request("POST", "/up", HOST, body=body, headers={"Expect": "100-continue"})
    c.send(head[: -len(body)])  # headers only: the client waits
    c.recv(b"HTTP/1.1 100 Continue\r\n\r\n")
    c.send(body)
    c.recv(response(200, b"done"))
    h = one_http(run(c.events)[0])
    assert (h["status"], h["request_size"], h["response_size"]) == (200, len(body), 4)


def test_head_response_has_no_body_even_with_content_length():
    c = Capture()
    c.send(request("HEAD", "/file", HOST))
    c.recv(b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n")
    c.send(get("/next"))
    c.recv(response(200, b"next!"))
    hs = of_type(run(c.events)[0], "http")
    assert [(h["method"], h["status"], h["response_size"]) for h in hs] == [
        ("HEAD", 200, 0), ("GET", 200, 5)]
    assert not any(h.get("incomplete") for h in hs)


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_have_no_body(status):
    c = Capture()
    c.send(get("/a"))
    c.recv(f"HTTP/1.1 {status} X\r\nETag: \"1\"\r\n\r\n".encode() + response(200, b"zz"))
    c.send(get("/b"))  # the response above was already in the same read
    hs = of_type(run(c.events)[0], "http")
    assert [(h["path"], h["status"], h["response_size"]) for h in hs] == [
        ("/a", status, 0), ("/b", 200, 2)]


def test_informational_103_then_final():
    c = Capture()
    c.send(get())
    c.recv(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n" + response(200, b"ok"))
    assert one_http(run(c.events)[0])["status"] == 200


def test_read_until_close_body_completes_at_end_of_capture():
    c = Capture()
    c.send(get())
    c.recv(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
    h = one_http(run(c.events)[0])
    assert h["response_size"] == 9 and "incomplete" not in h


def test_connection_close_then_no_more_parsing():
    c = Capture()
    c.send(get(headers={"Connection": "close"}))
    c.recv(response(200, b"bye", headers={"Connection": "close"}) + b"garbage after close")
    out, p = run(c.events)
    assert one_http(out)["response_size"] == 3


@pytest.mark.parametrize("version, headers, closes", [
    ("1.1", {"Connection": "close"}, True),
    ("1.1", {"Connection": "upgrade, Close"}, True),
    ("1.0", {}, True),
    ("1.0", {"Connection": "Keep-Alive"}, False),
    ("1.1", {}, False),
])
def test_the_client_saying_it_closes_ends_the_responses(version, headers, closes):
    """Only the request says whether the connection ends after its
    response: bytes after that response are not the next one's."""
    c = Capture()
    c.send(get("/a", headers=headers).replace(b"HTTP/1.1", b"HTTP/" + version.encode(), 1))
    c.recv(response(200, b"one"))
    later = response(200, b"two")
    c.recv(later)
    out, p = run(c.events)
    assert one_http(out)["response_size"] == 3
    if closes:
        assert p.stats["skipped.bytes"] == len(later) and "skipped.unanswered_responses" not in p.stats
    else:  # a response that no request asked for (yet)
        assert p.stats["skipped.unanswered_responses"] == 1


def test_websocket_upgrade_hands_the_connection_over():
    c = Capture()
    c.send(get("/ws", headers={"Upgrade": "websocket", "Connection": "Upgrade"}))
    c.recv(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
           b"\x81\x05hello")
    c.send(b"\x81\x85abcd\x00\x00\x00\x00\x00")
    out, p = run(c.events)
    assert of_type(out, "http") == []
    (ws,) = of_type(out, "websocket")
    assert (ws["status"], ws["path"], ws["client_messages"], ws["server_messages"]) == (101, "/ws", 1, 1)
    assert [(m["from"], m["type"], m["size"]) for m in ws["messages"]] == [("server", "text", 5), ("client", "text", 5)]
    assert "skipped.upgrade" not in p.stats and p.stats.get("skipped.malformed_http", 0) == 0


def test_other_upgrades_stay_an_http_exchange():
    c = Capture()
    c.send(get("/", headers={"Upgrade": "h2c", "Connection": "Upgrade, HTTP2-Settings"}))
    c.recv(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n\x00\x00\x00\x04\x00")
    out, p = run(c.events)
    assert one_http(out)["status"] == 101 and of_type(out, "websocket") == []
    assert p.stats["skipped.upgrade"] == 1 and p.stats["skipped.bytes"] == 5


# -- content encodings, split arbitrarily ---------------------------------------------------------
PAYLOAD = json.dumps({"id": "msg", "type": "message", "model": "claude-x",
                      "content": [{"type": "text", "text": "compressed ✓ " * 200}],
                      "stop_reason": "end_turn",
                      "usage": {"input_tokens": 5, "output_tokens": 400}}).encode()


def _compress(enc: str, data: bytes) -> bytes:
    return {"gzip": gzip.compress, "deflate": zlib.compress,
            "raw-deflate": lambda d: zlib.compress(d)[2:-4], "br": brotli.compress,
            "zstd": lambda d: zstandard.ZstdCompressor().compress(d)}[enc](data)


@pytest.mark.parametrize("enc", ["gzip", "deflate", "raw-deflate", "br", "zstd"])
def test_decoder_incremental_at_every_split(enc):
    comp = _compress(enc, PAYLOAD)
    name = "deflate" if enc == "raw-deflate" else enc
    rnd = random.Random(7)
    for i in range(0, len(comp) + 1, max(1, len(comp) // 60)):
        j = rnd.randrange(i, len(comp) + 1)
        d = BodyDecoder(name)
        got = d.feed(comp[:i]) + d.feed(comp[i:j]) + d.feed(comp[j:]) + d.flush()
        assert got == PAYLOAD, (enc, i, j)


def test_zstd_decodes_incrementally_one_byte_at_a_time():
    # a streaming server flushes a zstd block per piece of output
    cobj = zstandard.ZstdCompressor().compressobj()
    parts = [PAYLOAD[i:i + 500] for i in range(0, len(PAYLOAD), 500)]
    comp = b""
    for part in parts:
        comp += cobj.compress(part) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    comp += cobj.flush()
    d = BodyDecoder("zstd")
    out = b""
    first_part_at = None
    for k in range(len(comp)):
        out += d.feed(comp[k:k + 1])
        if first_part_at is None and len(out) >= 500:
            first_part_at = k
    assert out + d.flush() == PAYLOAD
    assert first_part_at is not None and first_part_at < len(comp) // 2


@pytest.mark.parametrize("enc", ["gzip", "zstd", "br", "deflate"])
def test_compressed_llm_response_through_pipeline(enc):
    comp = _compress(enc, PAYLOAD)
    body = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
    rnd = random.Random(enc)
    for _trial in range(8):
        resp = response(200, chunks=cut(comp, [rnd.randrange(len(comp)) for _ in range(5)]),
                         headers={"Content-Encoding": enc})
        c = Capture()
        c.send(request(body=body))
        c.recv_pieces(resp, sorted(rnd.randrange(len(resp)) for _ in range(9)))
        calls = of_type(run(c.events)[0], "llm_call")
        assert len(calls) == 1
        assert calls[0]["response"]["text"] == "compressed ✓ " * 200
        assert calls[0]["usage"] == {"input_tokens": 5, "output_tokens": 400}


def test_gzip_request_body_is_decoded():
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "zipped"}]}
    c = Capture()
    c.send(request("POST", "/v1/chat/completions", "api.openai.com",
                   body=gzip.compress(json.dumps(body).encode()),
                   headers={"Content-Encoding": "gzip"}))
    c.recv(response(200, {"choices": [{"index": 0, "message": {"role": "assistant",
                                                                "content": "ok"},
                                       "finish_reason": "stop"}]}))
    call = of_type(run(c.events)[0], "llm_call")[0]
    assert call["request"]["messages"][0]["content"] == "zipped"


def test_chunked_request_body():
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "c"}]}).encode()
    c = Capture()
    c.send(request("POST", "/v1/chat/completions", "api.openai.com", body=body, chunked=True))
    c.recv(response(200, {"choices": []}))
    call = of_type(run(c.events)[0], "llm_call")[0]
    assert call["request"]["model"] == "m"


# -- roles ------------------------------------------------------------------------------------------
def test_server_side_capture_swaps_roles():
    c = Capture(comm="litellm")
    c.recv(request("POST", "/v1/chat/completions", "proxy.local",
                   body={"model": "m", "messages": [{"role": "user", "content": "q"}]}))
    c.send(response(200, {"model": "m", "choices": [{"index": 0, "message": {
        "role": "assistant", "content": "served"}, "finish_reason": "stop"}]}))
    call = of_type(run(c.events)[0], "llm_call")[0]
    assert call["side"] == "server"
    assert call["response"]["text"] == "served"
    assert (call["provider"], call["api"]) == ("unknown", "chat.completions")


def test_classify_prefix():
    assert classify_prefix(b"PO") is None
    assert classify_prefix(b"POST /") == "request"
    assert classify_prefix(b"HTT") is None
    assert classify_prefix(b"HTTP/1.1 200") == "response"
    assert classify_prefix(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == "http2"
    assert classify_prefix(b"PRI * HT") is None
    assert classify_prefix(b"\x00\x00\x00\x08\x04\xd2\x16/") == "other"
    assert classify_prefix(b"hello world") == "other"


# -- not HTTP -------------------------------------------------------------------------------------
def test_database_protocol_and_random_bytes_are_counted_not_raised():
    c = Capture()
    # PostgreSQL startup message over TLS
    c.send(b"\x00\x00\x00\x4f\x00\x03\x00\x00user\x00app\x00database\x00db\x00\x00", conn=1)
    c.recv(b"R\x00\x00\x00\x08\x00\x00\x00\x00", conn=1)
    rnd = random.Random(1)
    for conn in range(2, 40):
        for _ in range(3):
            c.send(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))), conn=conn)
            c.recv(bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))), conn=conn)
    # a real exchange in the middle of it all still works
    c.send(get(), conn=99)
    c.recv(response(200, b"fine"), conn=99)
    out, p = run(c.events)
    assert len(of_type(out, "http")) == 1
    assert p.stats["skipped.not_http"] + p.stats.get("skipped.malformed_http", 0) >= 38
    assert p.stats["skipped.not_http"] >= 30


def test_http2_preface_goes_to_the_http2_stage():
    c = Capture()
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04\x00\x00\x00\x00\x00" + b"\x00" * 18)
    c.recv(b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
    out, p = run(c.events)
    assert out == [] and p.stats["h2.connections"] == 1 and "skipped.not_http" not in p.stats


def test_malformed_http_then_resync_on_next_request():
    c = Capture()
    c.send(b"GET /bad HTTP/1.1\r\nHost: x\r\nBroken header line without colon\r\n\r\n")
    c.recv(response(400, b"bad"))
    c.send(get("/good"))
    c.recv(response(200, b"good"))
    out, p = run(c.events)
    assert p.stats["skipped.malformed_http"] >= 1
    assert [h["path"] for h in of_type(out, "http")][-1:] == ["/good"]


def test_answers_to_unparsed_requests_are_dropped_not_held_or_misattributed():
    c = Capture()
    c.send(get("/a"))
    c.recv(response(200, b"a"))
    c.send(b"GET /bad HTTP/1.1\r\nHost: x\r\nBroken header line without colon\r\n\r\n")
    for _ in range(300):
        c.recv(response(400, b"b" * 1000))
    c.send(get("/c"))
    c.recv(response(201, b"c"))
    out, p = run(c.events)
    assert [(h["path"], h["status"], h["response_size"]) for h in of_type(out, "http")] == [
        ("/a", 200, 1), ("/c", 201, 1)]
    assert p.stats["skipped.unanswered_responses"] == 300
    assert p.stats["skipped.bytes"] == 300 * len(response(400, b"b" * 1000))


def test_response_bytes_nobody_asked_for_are_not_held_without_limit():
    c = Capture()
    c.send(get("/a"))
    c.recv(response(200, b"a"))
    for _ in range(5):  # no request: a peer sending on its own, 1.5 MB of it
        c.recv(b"x" * 300_000)
    c.send(get("/b"))
    c.recv(response(200, b"b"))
    out, p = run(c.events)
    assert [(h["path"], h["status"]) for h in of_type(out, "http")] == [("/a", 200), ("/b", 200)]
    assert p.stats["skipped.bytes"] >= 1_000_000


def test_garbage_response_is_counted_and_call_reported_incomplete():
    c = Capture()
    c.send(get("/a"))
    c.recv(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")
    out, p = run(c.events)
    h = one_http(out)
    assert h["incomplete"] is True and h["incomplete_reason"] == "malformed_http"
    assert p.stats["skipped.malformed_http"] == 1


# -- incomplete calls -----------------------------------------------------------------------------
def test_process_exit_mid_response_reports_incomplete():
    c = Capture()
    c.send(get("/slow"))
    c.recv(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    c.exit()
    p = JsonAnalysis()
    outs = [p.feed(e) for e in c.events]
    # the http event comes out when the exit is fed, before the exit itself
    assert [o["type"] for o in outs[-1]] == ["http", "exit"]
    h = outs[-1][0]
    assert h["incomplete"] is True and h["incomplete_reason"] == "process_exit"
    assert h["response_size"] == 7 and h["error"]["type"] == "connection"
    assert p.close() == []


def test_exit_reported_by_another_thread_still_ends_the_process_connections():
    # The collector sends one exit per process, from whichever thread left last.
    c = Capture()
    c.send(get())
    c.recv(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
    ev = c.exit()
    ev["tid"] = c.pid + 1
    h = one_http(run(c.events)[0])
    assert h["incomplete"] is True and h["incomplete_reason"] == "process_exit"


def test_end_of_capture_mid_request():
    c = Capture()
    c.send(request("POST", "/up", HOST, body=b"x" * 100)[:-50])
    out, p = run(c.events)
    h = one_http(out)
    assert h["incomplete_reason"] == "end_of_capture" and h["status"] is None


def test_truncated_body_keeps_framing_and_marks_incomplete():
    body = b"a" * 5000
    c = Capture()
    c.send(get("/big"))
    resp = response(200, body)
    head_len = len(resp) - len(body)
    c.recv(resp[: head_len + 1000], truncated=3000)  # 3000 bytes not captured
    c.recv(resp[head_len + 4000:])
    c.send(get("/next"))
    c.recv(response(200, b"ok"))
    hs = of_type(run(c.events)[0], "http")
    assert [(h["path"], h["response_size"]) for h in hs] == [("/big", 5000), ("/next", 2)]
    assert hs[0]["incomplete_reason"] == "truncated"
    assert "incomplete" not in hs[1]


def test_gap_in_chunked_body_marks_incomplete_and_next_exchange_parses():
    c = Capture()
    c.send(get("/a"))
    resp = response(200, chunks=[b"x" * 100, b"y" * 100])
    c.recv(resp[:60])
    c.recv(resp[80:], gap=20)  # 20 bytes of the first chunk lost
    c.send(get("/b"))
    c.recv(response(200, b"b"))
    hs = of_type(run(c.events)[0], "http")
    assert [h["path"] for h in hs] == ["/a", "/b"]
    assert hs[0]["incomplete_reason"] == "gap" and "incomplete" not in hs[1]


def test_gap_in_headers_breaks_then_resyncs():
    c = Capture()
    c.send(get("/a"))
    resp = response(200, b"x" * 10)
    c.recv(resp[:5])
    c.recv(resp[9:], gap=4)  # "1.1 " lost from the status line
    c.send(get("/b"))
    c.recv(response(200, b"ok"))
    out, p = run(c.events)
    hs = of_type(out, "http")
    assert hs[0]["path"] == "/a" and hs[0]["incomplete"]
    assert hs[-1]["path"] == "/b" and hs[-1]["response_size"] == 2 and "incomplete" not in hs[-1]


# -- robustness of feed ----------------------------------------------------------------------------
WEIRD = [
    None, 1, "ssl", [], {}, {"type": None}, {"type": "ssl"}, {"type": "nope", "ts": 1},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 1, "dir": "send"},
    {"type": "ssl", "ts": 1, "pid": "1", "conn": 1, "dir": "send", "data": "GET"},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 1, "dir": "sideways", "data": "x"},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 1, "dir": "send", "data_b64": "!!!not base64"},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 1, "dir": "send", "data": 5},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 1, "dir": "send", "data": "\udcff"},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 1, "dir": "recv", "data": "", "gap": "x"},
    {"type": "ssl", "ts": 1, "pid": 1, "conn": 2, "dir": "handshake", "len": 0, "ret": 1},
    {"type": "exit", "pid": None}, {"type": "exit"}, {"type": "exec", "argv": None},
    {"type": "ssl", "ts": 2, "pid": 1, "conn": 3, "dir": "send", "data": "GET / HTTP/1.1\r\n",
     "truncated": -5, "gap": 10**12},
    {"type": "ssl", "ts": 3, "pid": 1, "conn": 3, "dir": "recv", "data": "HTTP/1.1 200 OK\r\n",
     "gap": 10**9},
]


def test_feed_never_raises_on_any_input():
    p = JsonAnalysis()
    for ev in WEIRD:
        assert isinstance(p.feed(ev), list)
    rnd = random.Random(3)
    keys = ["type", "ts", "pid", "tid", "conn", "dir", "data", "data_b64", "gap", "truncated"]
    vals = [None, 0, -1, 2**70, "ssl", "send", "recv", "exit", "", "GET / HTTP/1.1\r\n\r\n",
            "HTTP/1.1 200 OK\r\n\r\n", [], {}, 1.5, True, "AAAA"]
    for _ in range(3000):
        ev = {k: rnd.choice(vals) for k in rnd.sample(keys, rnd.randrange(len(keys)))}
        assert isinstance(p.feed(ev), list)
    assert isinstance(p.close(), list)
    st = p.stats
    assert st["skipped.malformed_event"] > 0 and st.get("errors.internal", 0) == 0
    assert p.feed({"type": "ssl"}) == []  # after close


def test_process_events_pass_through_unchanged_and_outputs_serialise():
    c = Capture()
    exec_ev = {"type": "exec", "ts": 1, "pid": 7, "tid": 7, "comm": "sh", "uid": 0, "ppid": 1,
               "filename": "/bin/sh", "argv": ["sh"], "argv_truncated": False, "cwd": "/tmp"}
    fork_ev = {"type": "fork", "ts": 2, "pid": 7, "tid": 7, "comm": "sh", "uid": 0,
               "child_pid": 8}
    open_ev = {"type": "open", "ts": 3, "pid": 7, "tid": 7, "comm": "sh", "uid": 0,
               "path": "/etc/ssl/cert.pem", "resolved": "/etc/ssl/cert.pem", "flags": 0, "ret": 3}
    p = JsonAnalysis()
    for ev in (exec_ev, fork_ev, open_ev):
        assert p.feed(dict(ev)) == [ev]
    raw = from_json(dict(exec_ev))
    assert p.analysis.feed(raw)[0] is raw  # the event itself, not a copy
    c.send(get())
    c.recv(response(200, b"ok"))
    out = [o for e in c.events for o in p.feed(e)] + p.close()
    for o in out:
        assert isinstance(o["type"], str) and isinstance(o["ts"], int)
        orjson.dumps(o)


def test_internal_error_in_one_connection_does_not_break_others(monkeypatch):
    from agentsight.analyzers import http1
    from agentsight.analyzers.base import Stats
    from agentsight.analyzers.reassembly import StreamReassembler

    real = http1._ResponseReader.feed

    def boom(self, ev):
        if self.c.conn == 1:
            raise RuntimeError("bug")
        return real(self, ev)

    monkeypatch.setattr(http1._ResponseReader, "feed", boom)
    c = Capture()
    for conn in (1, 2):
        c.send(get(f"/{conn}"), conn=conn)
    for conn in (1, 2):
        c.recv(response(200, b"ok"), conn=conn)
    c.recv(response(200, b"more"), conn=1)
    out, p = run(c.events)
    hs = of_type(out, "http")
    assert {h["path"]: h.get("incomplete_reason") for h in hs} == {
        "/1": "internal_error", "/2": None}
    assert p.stats["errors.http"] == 1


def test_process_exit_before_any_response():
    c = Capture()
    c.send(get("/a"))
    c.send(get("/b"))  # pipelined, neither answered
    c.exit()
    out, p = run(c.events)
    hs = of_type(out, "http")
    assert [(h["path"], h["status"], h["incomplete_reason"]) for h in hs] == [
        ("/a", None, "process_exit"), ("/b", None, "process_exit")]
    assert out[-1]["type"] == "exit"


def test_idle_connection_state_is_bounded(monkeypatch):
    from agentsight.analyzers import http1, reassembly

    monkeypatch.setattr(http1, "MAX_CONNS", 16)
    monkeypatch.setattr(reassembly, "MAX_CONNS", 32)
    c = Capture()
    for conn in range(100):
        c.send(get(f"/{conn}"), conn=conn)
        c.recv(response(200, b"ok"), conn=conn)
    # an idle, evicted connection used again still parses
    c.send(get("/again"), conn=99)
    c.recv(response(200, b"ok"), conn=99)
    p = JsonAnalysis()
    out = [o for e in c.events for o in p.feed(e)]
    assert len(of_type(out, "http")) == 101
    stages = p.analysis._stages
    assert len(stages[1]._conns) <= 16 and len(stages[0]._conns) <= 32
    assert p.stats["http.evicted"] > 0


def test_connections_with_requests_in_flight_are_evicted_in_linear_time(monkeypatch):
    """100k connections that each wait for a response: every new one beyond
    the cap ends the least recently used one, at a constant cost."""
    from agentsight.analyzers import http1

    monkeypatch.setattr(http1, "MAX_CONNS", 64)
    p = JsonAnalysis()
    req = get("/w")
    ops = 0
    real = http1.Http1Parser._drop

    def counted(self, key, reason, ts):
        nonlocal ops
        ops += 1
        return real(self, key, reason, ts)

    monkeypatch.setattr(http1.Http1Parser, "_drop", counted)
    c = Capture()
    out = []
    for conn in range(20_000):
        out += p.feed(c.send(req, conn=conn))
    ended = of_type(out, "http")
    assert len(ended) == 20_000 - 64 and {h["incomplete_reason"] for h in ended} == {"evicted"}
    assert ops == 20_000 - 64  # one eviction per connection beyond the cap, no walks
    assert p.stats["http.evicted"] == 20_000 - 64


PROCESS_EVENTS = [  # as the collectors write them (docs/events.md)
    {"type": "exec", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "ppid": 1, "filename": "/bin/x",
     "argv": ["x", "-y"], "argv_truncated": False, "cwd": "/"},
    {"type": "exit", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "exit_code": 0, "signal": None,
     "core_dumped": False, "duration_ns": 5, "ppid": 1},
    {"type": "fork", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "child_pid": 10},
    {"type": "open", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "path": "f", "resolved": "/f",
     "flags": 577, "ret": 3},
    {"type": "unlink", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "path": "f", "resolved": "/f",
     "flags": 0, "ret": 0},
    {"type": "rmdir", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "path": "d", "resolved": "/d",
     "flags": 0, "ret": -39},
    {"type": "rename", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "path": "a", "resolved": "/a",
     "new_path": "b", "new_resolved": "/b", "flags": 0, "ret": 0},
    {"type": "connect", "ts": 1, "pid": 9, "tid": 9, "comm": "x", "uid": 0, "family": "ipv4",
     "addr": "127.0.0.1", "port": 443, "ret": -115},
]


def test_every_process_event_type_passes_through_in_its_json_form():
    p = JsonAnalysis()
    for ev in PROCESS_EVENTS:
        assert p.feed(dict(ev)) == [ev], ev["type"]
    assert not p.stats.get("skipped.malformed_event")


# -- random conversations (test_analyzers_http1.py compares them with h11) ------------------
PLAIN_REQUESTS = [
    request("POST", "/v1", HOST, body=b"hello"), get("/a"), get("/q?x=1"),
    request("DELETE", "/x", HOST, body=b"abc"),
]
# Valid HTTP that takes the less common paths: any two parsers must frame it alike.
ODD_REQUESTS = [
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", b"GET /x HTTP/1.0\r\n\r\n",
    b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
]
# Not valid HTTP: parsers may differ, but none may raise, hang or misattribute.
BAD_REQUESTS = [
    b"GET / HTTP/1.1\r\n\r\n", b"GET / HTTP/1.1\nHost: a\n\n", b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 2\r\n\r\nhi",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nhi",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: a\r\n  b\r\n\r\n", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
]
PLAIN_RESPONSES = [
    response(200, b"abc"), response(200, chunks=[b"ok", b"more"]), response(404, b"nope", reason="Not Found"),
]
ODD_RESPONSES = [
    b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", b"HTTP/1.0 200 OK\r\n\r\nbye",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n1;ext=1\r\na\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length:  7 \r\nX-A:   b  \r\n\r\n1234567",
    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nrest",
    b"HTTP/1.1 101 Switching\r\nUpgrade: x\r\n\r\n",
]
BAD_RESPONSES = [
    b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\na",
    b"HTTP/1.1 200 OK\r\nContent-Length: 000000000000000000000001\r\n\r\na",
    b"HTTP/1.1 600 X\r\nContent-Length: 1\r\n\r\na", b"HTTP/1.1 200 OK\r\nX: a\x01b\r\nContent-Length: 1\r\n\r\na",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"\x00\x00HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
]


# Requests and answers that belong together: valid conversations. The last
# ones end the connection's HTTP, so a conversation has one at most, last.
VALID_EXCHANGES = [(q, r) for q in PLAIN_REQUESTS for r in PLAIN_RESPONSES] + [
    (ODD_REQUESTS[0], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),  # HEAD
    (ODD_REQUESTS[2], ODD_RESPONSES[4]),  # chunked request, trailers in the response
    (ODD_REQUESTS[4], ODD_RESPONSES[0] + PLAIN_RESPONSES[1]),  # 100-continue
    (ODD_REQUESTS[5], PLAIN_RESPONSES[2]),  # Upgrade refused
    (ODD_REQUESTS[6], b"HTTP/1.1 407 Auth\r\nContent-Length: 1\r\n\r\nx"),  # CONNECT refused
] + [(PLAIN_REQUESTS[1], r) for r in ODD_RESPONSES[1:3] + ODD_RESPONSES[4:6] + ODD_RESPONSES[7:9]]
LAST_EXCHANGES = [
    (ODD_REQUESTS[1], ODD_RESPONSES[3]),  # HTTP/1.0, the body delimited by the close
    (ODD_REQUESTS[3], PLAIN_RESPONSES[0]),  # Connection: close
    (PLAIN_REQUESTS[1], ODD_RESPONSES[6]),  # Connection: close from the server
    (PLAIN_REQUESTS[1], ODD_RESPONSES[9]),  # a body delimited by the close
    (ODD_REQUESTS[5], ODD_RESPONSES[10]),  # Upgrade, 101
    (ODD_REQUESTS[6], b"HTTP/1.1 200 Connection established\r\n\r\n"),  # CONNECT
]


def _random_capture(rnd: random.Random, bad: bool = False) -> Capture:
    """One to five random exchanges, each message cut into pieces at random;
    with `bad`, any request with any response, valid HTTP or not."""
    c = Capture()
    n = rnd.randint(1, 5)
    for i in range(n):
        if bad:
            pair = (rnd.choice(PLAIN_REQUESTS + ODD_REQUESTS + BAD_REQUESTS),
                    rnd.choice(PLAIN_RESPONSES + ODD_RESPONSES + BAD_RESPONSES))
        elif i == n - 1 and rnd.random() < 0.3:
            pair = rnd.choice(LAST_EXCHANGES)
        else:
            pair = rnd.choice(VALID_EXCHANGES)
        for send, data in zip((True, False), pair):
            cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.choice((0, 0, 1, 2)))))
            for piece in cut(data, cuts):
                (c.send if send else c.recv)(piece)
    if rnd.random() < 0.3:
        c.exit()
    return c


def test_random_bad_conversations_never_raise_and_end_every_exchange():
    for seed in range(1500):
        c = _random_capture(random.Random(seed), bad=True)
        out, p = run(c.events)
        assert p.stats.get("errors.internal", 0) == 0 and p.stats.get("errors.http", 0) == 0, seed
        for o in of_type(out, "http"):
            assert o["status"] is not None or o.get("incomplete"), (seed, o)


def test_many_pipelined_chunked_requests_in_one_read():
    c = Capture()
    c.send(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" * 5000)
    c.recv(response(200, b"x") * 5000)
    out, p = run(c.events)
    assert len(of_type(out, "http")) == 5000
    assert p.stats["http.requests"] == 5000
    assert "errors.http" not in p.stats


def test_large_head_one_byte_per_read_is_parsed():
    head = get("/big", headers={"X-Big": "v" * 100_000})
    c = Capture()
    for i in range(len(head)):
        c.send(head[i:i + 1])
    c.recv(response(200, b"ok"))
    h = one_http(run(c.events)[0])
    assert (h["path"], h["status"], h["response_size"]) == ("/big", 200, 2)
