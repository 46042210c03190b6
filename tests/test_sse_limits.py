"""Server-sent events: linear in the input whatever the read size, one
event's size capped, the stream going on past a cut event."""
from __future__ import annotations

import json
import random
import re
import time

import pytest

from agentsight.analyzers.base import Stats
from agentsight.analyzers.sse import MAX_EVENT, SSEParser
from llm_fixtures import Capture, of_type, request, run, sse_response

MB = 1_000_000


def reference(stream: bytes) -> list[tuple[str | None, str]]:
    """The events of a whole stream, by the rules SSEParser implements."""
    out = []
    event, datas = None, None
    # NUL (bytes the capture lost) is a line feed, so NUL after CR is a CRLF
    for line in re.split(rb"\r\n|\r|\n", stream.replace(b"\0", b"\n") + b"\n"):
        if not line:
            if datas is not None:
                out.append((event, b"\n".join(datas).decode("utf-8", "replace")))
            event, datas = None, None
        elif line.startswith(b"data:") or line == b"data":
            v = line[5:]
            v = v[1:] if v.startswith(b" ") else v
            datas = (datas or []) + [v]
        elif line.startswith(b"event:"):
            v = line[6:]
            event = (v[1:] if v.startswith(b" ") else v).decode("utf-8", "replace")
    if datas is not None:
        out.append((event, b"\n".join(datas).decode("utf-8", "replace")))
    return out


def parse(pieces, stats=None) -> list[tuple[str | None, str]]:
    p = SSEParser(stats) if stats is not None else SSEParser()
    out = []
    for piece in pieces:
        out.extend(p.feed(piece))
    return out + p.close()


def pieces_of(data: bytes, size: int) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


def random_stream(rnd: random.Random) -> bytes:
    ends = [b"\n", b"\r\n", b"\r"]
    parts = []
    for _ in range(rnd.randrange(1, 30)):
        end = rnd.choice(ends)
        if rnd.random() < 0.4:
            parts.append(b"event: " + rnd.choice([b"delta", b"stop", b"\xe2\x9c\x93", b""]) + end)
        for _ in range(rnd.randrange(0, 4)):
            parts.append(rnd.choice([b"data: ", b"data:", b"data:  "]) +
                         bytes(rnd.choice(b"ab {}\":\xc3\xa9") for _ in range(rnd.randrange(0, 60))) + end)
        if rnd.random() < 0.2:
            parts.append(rnd.choice([b": keep-alive", b"id: 7", b"retry: 10", b"data"]) + end)
        if rnd.random() < 0.05:
            parts.append(b"\0")  # a hole the capture lost
        parts.append(end)
    return b"".join(parts)


def test_random_streams_split_anywhere_parse_as_a_whole():
    rnd = random.Random(13)
    for _ in range(400):
        s = random_stream(rnd)
        want = reference(s)
        cuts = sorted(rnd.randrange(len(s) + 1) for _ in range(rnd.randrange(0, 12)))
        pieces = [s[a:b] for a, b in zip([0] + cuts, cuts + [len(s)])]
        assert parse(pieces) == want, (s, cuts)
        assert parse([bytes([b]) for b in s]) == want, s


def test_every_short_stream_of_line_ends_and_fields_split_anywhere():
    import itertools
    atoms = [b"data: a", b"\r", b"\n", b"\0", b"event: e", b"x", b"data"]
    for n in range(1, 5):
        for combo in itertools.product(atoms, repeat=n):
            s = b"".join(combo)
            want = reference(s)
            assert parse([bytes([b]) for b in s]) == want, s
            for i in range(len(s) + 1):
                assert parse([s[:i], s[i:]]) == want, (s, i)


def timed(data: bytes, read: int) -> tuple[float, list]:
    pieces = pieces_of(data, read)
    t0 = time.perf_counter()
    out = parse(pieces)
    return time.perf_counter() - t0, out


@pytest.mark.parametrize("read", [1024, 4096])
def test_a_10_mb_line_parses_in_linear_time(read):
    payload = json.dumps({"type": "content_block_delta", "delta": {"text": "x" * (10 * MB)}})
    data = b"event: delta\ndata: " + payload.encode() + b"\n\n" + b"data: next\n\n"
    took, out = timed(data, read)
    assert out == [("delta", payload), (None, "next")]
    # Linear: small reads cost their number of calls, not the line's length
    # again at each read (quadratic: 14 s for 1 KB reads, 3 s for 4 KB ones).
    in_large_reads = min(timed(data, 1 << 16)[0] for _ in range(2))
    assert took < 2.0, f"{took:.2f} s for 10 MB in {read}-byte reads"
    assert took < 5 * in_large_reads + 0.05, (took, in_large_reads)


def test_many_short_lines_are_linear_too():
    data = b"".join(b"data: %d\n" % i for i in range(200_000)) + b"\n"
    took, out = timed(data, 1024)
    assert len(out) == 1 and out[0][1].count("\n") == 199_999
    assert took < 2.0


def test_an_event_over_the_cap_is_cut_counted_and_the_stream_goes_on():
    stats = Stats()
    big = b"y" * (MAX_EVENT + 1000)
    data = (b"data: first\n\n" + b"event: huge\ndata: " + big + b"\ndata: tail\n\n" +
            b"event: after\ndata: last\n\n")
    for read in (4096, 1 << 20, len(data)):
        stats.clear()
        out = parse(pieces_of(data, read), stats)
        assert out == [(None, "first"), ("after", "last")], read
        assert stats["skipped.sse_event_too_large"] == 1
        assert stats["skipped.sse_event_bytes"] >= len(big)


def test_an_event_of_many_lines_over_the_cap_is_cut():
    stats = Stats()
    line = b"data: " + b"z" * 1000 + b"\n"
    n = MAX_EVENT // 1000 + 10
    data = line * n + b"\n" + b"data: ok\n\n"
    out = parse(pieces_of(data, 16384), stats)
    assert out == [(None, "ok")]
    assert stats["skipped.sse_event_too_large"] == 1


def test_an_event_just_under_the_cap_is_kept_whole():
    v = b"w" * (MAX_EVENT - 100)
    out = parse(pieces_of(b"data: " + v + b"\n\n", 1 << 16), Stats())
    assert out == [(None, v.decode())]


def test_a_cut_event_in_a_real_stream_leaves_the_rest_of_the_call():
    body = {"model": "claude-x", "max_tokens": 10, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}

    def ev(obj):
        return b"event: %s\ndata: %s\n\n" % (obj["type"].encode(), json.dumps(obj).encode())
    frames = [ev({"type": "message_start", "message": {"id": "m", "model": "claude-x", "usage": {}}}),
              ev({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
              ev({"type": "content_block_delta", "index": 0,
                  "delta": {"type": "text_delta", "text": "x" * (MAX_EVENT + 10)}}),
              ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "kept"}}),
              ev({"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 3}}),
              ev({"type": "message_stop"})]
    c = Capture()
    c.send(request(body=body))
    resp = sse_response(frames)
    c.recv_pieces(resp, range(16384, len(resp), 16384))
    out, p = run(c.events)
    (call,) = of_type(out, "llm_call")
    assert call["response"]["text"] == "kept" and call["response"]["stop_reason"] == "end_turn"
    assert p.stats["skipped.sse_event_too_large"] == 1


def test_a_cut_ending_right_at_a_line_end_keeps_the_next_event():
    stats = Stats()
    line = b"data: " + b"q" * (1 << 20) + b"\n"
    n = MAX_EVENT // len(line) + 2
    for read in (len(line), len(line) - 1, 4096):
        stats.clear()
        data = line * n + b"\n" + b"data: after\n\n"
        out = parse(pieces_of(data, read), stats)
        assert out == [(None, "after")], read
        assert stats["skipped.sse_event_too_large"] == 1
        assert stats["skipped.sse_event_bytes"] >= (n - 1) * (len(line) - 6)
