"""The HTTP/1.1 stage (llhttp) against an h11 oracle (h11_oracle.py): the
same captures, split at every point, cut short, with bytes lost, must give
the same exchanges."""
from __future__ import annotations

import itertools
import json

import pytest

from agentsight.analyzers import Analysis
from agentsight.analyzers.http1 import Http1Parser
from h11_oracle import H11Stage
from llm_fixtures import Capture, cut, of_type, request, response, run, sse_response

HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


def outputs(events: list[dict], oracle: bool = False) -> list[dict]:
    a = Analysis(redact=True)
    if oracle:
        i = next(i for i, s in enumerate(a._stages) if isinstance(s, Http1Parser))
        a._stages[i] = H11Stage(a._stats)
        a._rest = tuple(a._stages[1:])
    out = []
    for e in events:
        out += a.feed(dict(e))
    out += a.close()
    return [o.to_json() for o in out]


ENDS = ("malformed_http", "connection_closed", "process_exit", "end_of_capture", "gap", "truncated")


def _same(ours: dict | None, oracle: dict | None) -> bool:
    """h11 sees some errors (a bad trailer line) only once the whole block is
    there, llhttp at the first bad byte: an exchange cut short by malformed
    HTTP may end a read earlier, or before the stream does."""
    if ours is None or oracle is None:
        return ours is oracle
    if ours.get("incomplete_reason") == "malformed_http" and oracle.get("incomplete_reason") in ENDS:
        skip = ("ts", "ended_ns", "incomplete_reason", "error")
        return {k: v for k, v in ours.items() if k not in skip} == {k: v for k, v in oracle.items() if k not in skip}
    return ours == oracle


def assert_same(events: list[dict]) -> list[dict]:
    out = outputs(events)
    want = outputs(events, oracle=True)
    assert len(out) == len(want) and all(_same(a, b) for a, b in zip(out, want)), (out, want)
    return out


def chunked_exchange(pieces: list[bytes]) -> list[dict]:
    c = Capture()
    c.send(request("GET", "/x", "example.com") + request("GET", "/next", "example.com"))
    c.recv(HEAD)
    for p in pieces:
        c.recv(p)
    return c.events


NEXT = response(200, b"next")

BODIES = [
    b"5\r\nhello\r\n0\r\n\r\n",
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n" + NEXT,
    b"00A\r\n0123456789\r\n0\r\n\r\n",
    b"5 \t\r\nhello\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\n\n" + NEXT,
    b"0\r\n\r\n" + NEXT,
    b"1\r\n\r\r\n1\r\n\n\r\n0\r\n\r\n",  # CR and LF as chunk data
    # trailers
    b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nY: 2\r\n\r\n" + NEXT,
    b"3\r\nabc\r\n0\r\nX: 1\n\n" + NEXT,
    b"3\r\nabc\r\n0\r\n\rX: 1\r\n\r\n",
    b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
    # malformed
    b"zz\r\nhello\r\n",
    b"5\r\nhelloXY0\r\n\r\n",
    b"5\r\nhello\rX",
    b"5\r\nhello\n\r\n0\r\n\r\n",
    b"-1\r\n",
    b"5\r\nhello\r\n\r\n",
    b"5\nhello\r\n0\r\n\r\n",
    b"3\r\nabc\r\n0\r\n",  # incomplete: the end never comes
]


@pytest.mark.parametrize("body", BODIES)
def test_chunked_bodies_framed_as_h11_does_at_every_split_point(body):
    assert_same(chunked_exchange([body]))
    for i in range(1, len(body)):
        assert_same(chunked_exchange([body[:i], body[i:]]))


@pytest.mark.parametrize("body", BODIES)
def test_chunked_bodies_framed_as_h11_does_at_every_pair_of_split_points(body):
    body = body.removesuffix(NEXT)  # the next message: split once above
    for i, j in itertools.combinations(range(1, len(body)), 2):
        assert_same(chunked_exchange([body[:i], body[i:j], body[j:]]))


@pytest.mark.parametrize("body, size, reason", [
    # llhttp reads leading zeros h11 refuses (more than 20 digits)
    (b"0000000000000000000005\r\nhello\r\n0\r\n\r\n", 5, None),
    # a bare LF ends a chunk-size line (a leniency peers have too); h11 refuses it
    (b"5;a\nb\r\nhello\r\n0\r\n\r\n", 5, "malformed_http"),
    # llhttp refuses blanks after a chunk extension and a bare CR in one; h11 takes both
    (b"3\r\nabc\r\n0;x=y \r\n\r\n", 3, "malformed_http"),
    (b"3;a\rb\r\nabc\r\n0\r\n\r\n", 0, "malformed_http"),
])
def test_where_llhttp_and_h11_differ(body, size, reason):
    out, _ = run(chunked_exchange([body]))
    first = of_type(out, "http")[0]
    assert (first["response_size"], first.get("incomplete_reason")) == (size, reason)


def test_chunks_one_byte_per_read_and_straddling_reads():
    data = b"".join(b"%x\r\n%s\r\n" % (n, bytes([65 + n % 26]) * n) for n in (1, 300, 17, 4096))
    data += b"0\r\n\r\n" + response(200, b"next")
    def framing(out):
        return [(h["status"], h["response_size"], h.get("incomplete_reason")) for h in of_type(out, "http")]

    want = framing(assert_same(chunked_exchange([data])))
    assert want == [(200, 1 + 300 + 17 + 4096, None), (200, 4, None)]
    assert framing(assert_same(chunked_exchange([bytes([b]) for b in data]))) == want
    for n in (2, 3, 7, 100, 299, 301, 1000):
        assert framing(assert_same(chunked_exchange(cut(data, range(n, len(data), n))))) == want, n


# -- whole exchanges --------------------------------------------------------------------------

def llm_body(stream: bool = True) -> dict:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}


def sse_frames(text: str = "hello there, world") -> list[bytes]:
    evs = [("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "model": "claude-sonnet-4-5", "usage": {"input_tokens": 3}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    for w in text.split(" "):
        evs.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                            "delta": {"type": "text_delta", "text": w + " "}}))
    evs.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                  "usage": {"output_tokens": 5}}))
    evs.append(("message_stop", {"type": "message_stop"}))
    return [f"event: {n}\ndata: {json.dumps(d)}\n\n".encode() for n, d in evs]


LLM_REQ = request("POST", "/v1/messages", "api.anthropic.com", body=llm_body())
GET = request("GET", "/x", "example.com")
HEAD_REQ = request("HEAD", "/x", "example.com")
SSE_RESP = sse_response(sse_frames())
JSON_RESP = response(200, {"id": "msg_1", "type": "message", "model": "claude-sonnet-4-5",
                           "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                           "usage": {"input_tokens": 3, "output_tokens": 1}})
TRAILER_RESP = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                b"Trailer: X-Sum\r\n\r\n5\r\nhello\r\n0\r\nX-Sum: 5\r\n\r\n")

# (request stream, response stream) pairs: every framing case, each followed by
# another exchange on the same connection
SCENARIOS = {
    "sse_then_get": (LLM_REQ + GET, SSE_RESP + response(200, b"next")),
    "length_then_chunked": (LLM_REQ + GET, JSON_RESP + response(200, chunks=[b"ab", b"c"])),
    "head_with_length": (HEAD_REQ + GET, response(200, b"", headers={"Content-Length": "5"},
                                                  length=False) + response(200, b"next")),
    "204_304": (GET + GET + GET, response(204, b"", length=False)
                + response(304, b"", headers={"Content-Length": "9"}, length=False)
                + response(200, b"last")),
    "100_continue": (request("POST", "/u", "example.com", body=b"x" * 20,
                             headers={"Expect": "100-continue"}) + GET,
                     b"HTTP/1.1 100 Continue\r\n\r\n" + response(200, chunks=[b"ok"])
                     + response(200, b"next")),
    "response_connection_close": (GET + GET, response(200, b"bye", headers={"Connection": "close"})
                                  + response(200, b"ignored")),
    "request_connection_close": (request("GET", "/x", "example.com",
                                         headers={"Connection": "close"}) + GET,
                                 response(200, chunks=[b"bye"]) + response(200, b"x")),
    "http10_length": (GET + GET, b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nabc"
                      + response(200, b"ignored")),
    "close_delimited": (GET, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"),
    "trailers_then_next": (GET + GET, TRAILER_RESP + response(200, b"next")),
    "bad_trailer": (GET + GET, TRAILER_RESP.replace(b"X-Sum: 5", b"bad line") + response(200, b"n")),
    "malformed_chunk_then_resync": (GET + GET, response(200, chunks=[b"abc"]).replace(b"3\r\n", b"q\r\n")
                                    + response(200, b"later")),
    "bad_chunk_footer": (GET + GET, response(200, chunks=[b"abc"]).replace(b"abc\r\n", b"abcXY")
                         + response(200, b"later")),
    "upgrade_denied": (request("GET", "/ws", "example.com",
                               headers={"Upgrade": "websocket", "Connection": "Upgrade"}) + GET,
                       response(200, chunks=[b"no"]) + response(200, b"next")),
    "upgrade_101": (request("GET", "/ws", "example.com",
                            headers={"Upgrade": "websocket", "Connection": "Upgrade"}),
                    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\n\r\n\x81\x05hello")),
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01"),
    "chunked_request": (request("POST", "/v1/messages", "api.anthropic.com", body=llm_body(),
                                chunked=True) + GET, SSE_RESP + response(200, b"next")),
    "request_body_then_pipelined": (request("POST", "/up", "example.com", body=b"0123456789") + GET
                                    + HEAD_REQ,
                                    response(201, b"", reason="Created") + response(200, b"ab")
                                    + response(200, b"", headers={"Content-Length": "7"},
                                               length=False)),
    "upgrade_request_with_body": (request("POST", "/ws", "example.com", body=b"hello",
                                          headers={"Upgrade": "h2c", "Connection": "Upgrade"})
                                  + GET, response(200, b"no") + response(200, b"next")),
    "connect_with_body": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                          b"Content-Length: 2\r\n\r\nhi" + GET,
                          response(407, b"auth") + response(200, b"next")),
    "request_close_with_body": (request("POST", "/up", "example.com", body=b"abc",
                                        headers={"Connection": "close"}) + GET,
                                response(200, b"ok") + response(200, b"x")),
    "http10_request": (b"POST /up HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc",
                       b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
}


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_framing_equals_h11_at_every_response_split(name):
    req, resp = SCENARIOS[name]
    for i in range(1, len(resp)):
        c = Capture()
        c.send(req)
        c.recv(resp[:i])
        c.recv(resp[i:])
        assert_same(c.events)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_framing_equals_h11_one_byte_per_read(name):
    req, resp = SCENARIOS[name]
    c = Capture()
    for b in req:
        c.send(bytes([b]))
    for b in resp:
        c.recv(bytes([b]))
    assert_same(c.events)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_framing_equals_h11_at_every_request_split(name):
    req, resp = SCENARIOS[name]
    for i in range(1, len(req), 3):
        c = Capture()
        c.send(req[:i])
        c.send(req[i:])
        c.recv(resp)
        assert_same(c.events)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
@pytest.mark.parametrize("end", ["close", "exit", "capture"])
def test_framing_equals_h11_when_the_stream_stops_anywhere(name, end):
    req, resp = SCENARIOS[name]
    for i in range(1, len(resp)):
        c = Capture()
        c.send(req)
        c.recv(resp[:i])
        if end == "exit":
            c.exit()
        elif end == "close":
            c.ts += 1000
            c.events.append({"type": "ssl", "ts": c.ts, "pid": c.pid, "tid": c.pid,
                             "comm": c.comm, "uid": 0, "fn": "SSL_free", "dir": "close",
                             "conn": 1, "len": 0, "data": ""})
        assert_same(c.events)


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_framing_equals_h11_with_lost_bytes(name):
    req, resp = SCENARIOS[name]
    for i in range(1, len(resp), 2):
        for kw in ({"gap": 3}, {"truncated": 4}, {"gap": 70000}):
            c = Capture()
            c.send(req)
            c.recv(resp[:i])
            c.recv(resp[i:], **kw)
            assert_same(c.events)
            c = Capture()
            c.send(req[:i], **kw)
            c.send(req[i:])
            c.recv(resp)
            assert_same(c.events)


def test_pipelined_messages_in_one_read_framed_as_h11_does():
    reqs = [LLM_REQ, GET, HEAD_REQ, GET, GET]
    resps = [SSE_RESP, response(200, b"a"), response(200, b"", headers={"Content-Length": "3"}, length=False),
             response(204, b"", length=False), TRAILER_RESP]
    c = Capture()
    c.send(b"".join(reqs))
    c.recv(b"".join(resps))
    out = assert_same(c.events)
    assert [(o.get("method"), o.get("status"), o.get("response_size")) for o in out] == [
        ("POST", 200, None), ("GET", 200, 1), ("HEAD", 200, 0), ("GET", 204, 0), ("GET", 200, 5)]
    assert of_type(out, "llm_call")[0]["response"]["text"] == "hello there, world "


def test_streamed_call_keeps_per_read_timestamps():
    frames = sse_frames("a b c d")
    resp = sse_response(frames)
    c = Capture()
    c.send(LLM_REQ)
    head_end = resp.index(b"\r\n\r\n") + 4
    c.recv(resp[:head_end])
    pos = head_end
    reads = []
    for f in frames:  # one chunk per read, as clients get them
        n = len(b"%x\r\n%s\r\n" % (len(f), f))
        reads.append(c.recv(resp[pos:pos + n]))
        pos += n
    last = c.recv(resp[pos:])
    out, p = run(c.events)
    call = of_type(out, "llm_call")[0]
    # the first content_block_delta is the third frame
    assert call["first_token_ns"] == reads[2]["ts"]
    assert call["ended_ns"] == last["ts"] and call["started_ns"] == c.events[0]["ts"]
    assert call["response"]["text"] == "a b c d "
    assert "incomplete" not in call and p.stats.get("skipped.malformed_http", 0) == 0


def test_content_length_body_straddling_reads_then_keep_alive():
    body = json.dumps({"x": "y" * 5000}).encode()
    resp = response(200, body) + response(200, chunks=[b"tail"])
    c = Capture()
    c.send(GET + GET)
    for piece in cut(resp, range(997, len(resp), 997)):
        c.recv(piece)
    out, p = run(c.events)
    hs = of_type(out, "http")
    assert [(h["status"], h["response_size"]) for h in hs] == [(200, len(body)), (200, 4)]
    assert p.stats.get("skipped.malformed_http", 0) == 0
    assert all("incomplete" not in h for h in hs)


def test_random_captures_framed_as_h11_does():
    """1500 random conversations of odd requests and responses, split, cut
    and lossy (test_analyzers_http.py builds them)."""
    import random

    from test_analyzers_http import _random_capture

    odd = 0
    for seed in range(1500):
        c = _random_capture(random.Random(seed))
        out = assert_same(c.events)
        odd += sum(o.get("method") in ("HEAD", "CONNECT") for o in out)
    assert odd > 300  # the less common paths were taken
