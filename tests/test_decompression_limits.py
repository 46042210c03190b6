"""Decompression is bounded: no decoder inflates past its limit, even in one
call on one small input, and what was cut is said and counted."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import pytest

from agentsight.analyzers import encoding
from agentsight.analyzers.budget import BodyBudget
from agentsight.analyzers.encoding import BodyDecoder, DecodeError, decode_all
from bombs import BOMBS, MiB
from support import REPO

LIMIT = 16 * MiB
# What one decoder may hold while it inflates: its output, up to the limit,
# and as much again for one moment while the library's output steps are
# joined into the bytes it returns; plus one step (128 KiB) and small change.
SLACK = 2 * MiB
BOMB_SIZE = {"gzip": 256 * MiB, "deflate": 256 * MiB, "zstd": 512 * MiB, "br": 1024 * MiB}


@pytest.fixture(scope="module")
def bombs():
    return {k: f(BOMB_SIZE[k]) for k, f in BOMBS.items()}


@pytest.mark.parametrize("enc", sorted(BOMBS))
def test_one_call_on_one_small_input_never_inflates_past_the_limit(bombs, enc):
    bomb = bombs[enc]
    assert len(bomb) <= 300 << 10  # a few SSL records at most
    tracemalloc.start()
    try:
        d = BodyDecoder(enc, LIMIT)
        with pytest.raises(DecodeError) as info:
            d.feed(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * LIMIT + SLACK, f"{enc}: {peak / MiB:.0f} MiB held to decode {len(bomb)} bytes"
    cut = info.value
    assert isinstance(cut, encoding.DecompressionLimit)
    assert cut.output == bytes(LIMIT)  # what fits is kept, exactly up to the limit
    assert cut.limit == LIMIT and cut.encoding == enc
    assert "16 MiB" in str(cut) and enc in str(cut)
    assert d.feed(b"more") == b"" and d.cut_bytes == len(bomb) + 4


@pytest.mark.parametrize("enc", sorted(BOMBS))
def test_bomb_fed_in_small_reads_stops_at_the_limit(bombs, enc):
    bomb = bombs[enc]
    stats: dict[str, int] = {}
    d = BodyDecoder(enc, LIMIT, stats=stats)
    got = 0
    cut = None
    for i in range(0, len(bomb), 1024):
        try:
            got += len(d.feed(bomb[i:i + 1024]))
        except encoding.DecompressionLimit as e:
            assert cut is None, "the limit is reported once"
            cut = e
            got += len(e.output)
    assert cut is not None and got == LIMIT
    assert stats["skipped.decompression_limit"] == 1
    assert 0 < stats["skipped.decompression_limit_bytes"] <= len(bomb)


def test_decode_all_is_bounded_too(bombs):
    with pytest.raises(encoding.DecompressionLimit):
        decode_all(bombs["zstd"], "zstd", LIMIT)


@pytest.mark.parametrize("names", ["gzip, br", "br, zstd", "deflate, gzip"])
def test_a_chain_of_encodings_is_bounded_at_every_stage(bombs, names):
    inner, outer = [n.strip() for n in names.split(",")]
    # the outer coding wraps a bomb of the inner one: both stages must be held back
    import brotli
    import gzip
    import zlib

    import zstandard
    wrap = {"gzip": gzip.compress, "br": lambda b: brotli.compress(b, quality=5), "deflate": zlib.compress,
            "zstd": lambda b: zstandard.ZstdCompressor().compress(b)}[outer]
    body = wrap(bombs[inner])
    tracemalloc.start()
    try:
        with pytest.raises(encoding.DecompressionLimit) as info:
            decode_all(body, names, LIMIT)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * LIMIT + SLACK + len(body) * 3
    assert info.value.output == bytes(LIMIT)


def test_normal_bodies_decode_whole_right_below_the_limit():
    import gzip
    data = bytes(range(256)) * (LIMIT // 256)
    assert decode_all(gzip.compress(data), "gzip", LIMIT) == data
    with pytest.raises(encoding.DecompressionLimit) as info:
        decode_all(gzip.compress(data + b"!"), "gzip", LIMIT)
    assert info.value.output == data


def test_a_shared_budget_caps_bodies_together_and_takes_releases_back(bombs):
    budget = BodyBudget(24 * MiB)
    stats: dict[str, int] = {}
    first = BodyDecoder("zstd", LIMIT, budget=budget, stats=stats)
    with pytest.raises(encoding.DecompressionLimit) as one:
        first.feed(bombs["zstd"])
    assert len(one.value.output) == LIMIT and budget.used == LIMIT
    second = BodyDecoder("zstd", LIMIT, budget=budget, stats=stats)
    with pytest.raises(encoding.DecompressionLimit) as two:
        second.feed(bombs["zstd"])
    # the second body gets what the budget had left, not its own limit
    assert len(two.value.output) == 8 * MiB and budget.used == 24 * MiB
    assert "budget" in str(two.value) and "24 MiB" in str(two.value)
    first.release()
    assert budget.used == 8 * MiB
    third = BodyDecoder("zstd", LIMIT, budget=budget)
    assert len(third.feed(encoding_zstd(b"x" * 1000))) == 1000
    second.release()
    third.release()
    assert budget.used == 0 and budget.peak == 24 * MiB
    assert stats["skipped.decompression_limit"] == 2
    # a whole body at once fits in what the budget has left, and holds nothing after
    assert budget.hold().reserve(20 * MiB)
    with pytest.raises(encoding.DecompressionLimit) as four:
        decode_all(bombs["zstd"], "zstd", LIMIT, budget=budget)
    assert len(four.value.output) == 4 * MiB and budget.used == 20 * MiB


def encoding_zstd(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


def test_budget_reservations_are_all_or_nothing():
    b = BodyBudget(100)
    h = b.hold()
    assert h.reserve(60) and not h.reserve(41) and h.reserve(40)
    assert b.used == 100 and b.refused == 1
    h.release()
    assert b.used == 0 and h.held == 0
    with pytest.raises(ValueError):
        BodyBudget(-1)


CHILD = r"""
import json, sys, time
sys.path.insert(0, "tests")
from bombs import BOMBS
from llm_fixtures import Capture, request, response, run, of_type
enc, size, where, read = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
bomb = BOMBS[enc](size)
body = {"model": "claude-x", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
c = Capture()
if where == "request":
    c.send(request(body=bomb, headers={"Content-Encoding": enc}))
    c.recv(response(200, {"type": "message", "content": [{"type": "text", "text": "ok"}]}))
else:
    c.send(request(body=body))
    resp = response(200, bomb, headers={"Content-Encoding": enc})
    c.recv_pieces(resp, range(read, len(resp), read) if read else ())
def peak_mib():  # this process's own peak RSS (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
base = peak_mib()
t0 = time.perf_counter()
out, p = run(c.events)
took = time.perf_counter() - t0
calls = of_type(out, "llm_call")
print(json.dumps({"peak_mib": peak_mib(), "base_mib": base, "seconds": took, "calls": calls and [
                      {"error": c.get("error"), "request": c["request"]} for c in calls],
                  "stats": p.stats}))
"""


def measure_bomb(enc: str, size: int, where: str = "response", read: int = 16384) -> dict:
    """Peak RSS and time of a pipeline fed one exchange carrying a bomb, in
    reads of `read` bytes (0: the whole body in one event)."""
    r = subprocess.run([sys.executable, "-c", CHILD, enc, str(size), where, str(read)], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


# The analyzers keep at most 64 MiB of one decoded response; a process that
# reads one such bomb must stay far below what it inflates to.
PEAK_RSS_MIB = 320


@pytest.mark.parametrize("enc,size,read", [("br", 1024 * MiB, 16384), ("zstd", 512 * MiB, 16384),
                                           ("gzip", 2048 * MiB, 0)])
def test_a_bomb_response_through_the_pipeline_is_cut_and_reported(enc, size, read):
    m = measure_bomb(enc, size, read=read)
    assert m["peak_mib"] < PEAK_RSS_MIB, m
    assert m["seconds"] < 5, m
    (call,) = m["calls"]
    assert "cut at 64 MiB" in call["error"]["message"], call
    assert m["stats"]["skipped.decompression_limit"] == 1, m["stats"]


def test_a_bomb_request_body_is_cut_and_the_call_still_reported():
    m = measure_bomb("zstd", 512 * MiB, "request")
    assert m["peak_mib"] < PEAK_RSS_MIB, m
    assert len(m["calls"]) == 1 and m["calls"][0]["request"] is None
    assert m["stats"]["skipped.decompression_limit"] == 1, m["stats"]


@pytest.mark.parametrize("enc", ["gzip", "deflate", "br", "zstd"])
def test_legitimate_bodies_decode_exactly_in_any_read_size(enc):
    import random
    import zlib

    import brotli
    import zstandard
    rnd = random.Random(enc)
    words = [b"tool", b"call", b"agent", b"file", b"\xe2\x9c\x93", b"{", b"}", b"\n"]
    data = b" ".join(rnd.choice(words) for _ in range(300_000)) + bytes(rnd.getrandbits(8) for _ in range(50_000))
    comp = {"gzip": lambda d: zlib.compress(d, 6, 31),
            "deflate": zlib.compress, "br": lambda d: brotli.compress(d, quality=5),
            "zstd": lambda d: zstandard.ZstdCompressor().compress(d)}[enc](data)
    for read in (7, 64, 1000, 16384, len(comp)):
        d = BodyDecoder(enc, len(data))  # exactly fits: the limit is not reached
        out = [d.feed(comp[i:i + read]) for i in range(0, len(comp), read)]
        out.append(d.flush())
        assert b"".join(out) == data, (enc, read)


def test_bodies_held_at_once_share_one_budget():
    """Request bodies of calls in flight on many connections add up to the
    pipeline's body budget, not beyond: the one that does not fit is cut
    and counted, and what the calls held is given back when they end."""
    from agentsight.analyzers import Analysis
    from llm_fixtures import Capture, request, response

    body = {"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "x" * 600_000}]}
    c = Capture()
    whole = request("POST", "/v1/messages", "api.anthropic.com", body=body)
    for start in range(0, len(whole), 100_000):  # the three bodies arrive side by side
        for conn in (1, 2, 3):
            c.send(whole[start:start + 100_000], conn=conn)
    reply = {"id": "m", "type": "message", "model": "claude-x", "content": [{"type": "text", "text": "ok"}],
             "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}}
    for conn in (1, 2, 3):
        c.recv(response(200, reply), conn=conn)
    a = Analysis(body_budget=1_500_000)
    held = []
    out = []
    for e in c.events:
        out += a.feed(e)
        held.append(a.budget.used)
    calls = [o for o in out if o.kind == "llm_call"]
    assert len(calls) == 3
    assert max(held) <= 1_500_000 and a.budget.used == 0
    assert a.stats["skipped.body_budget"] >= 1
    assert sum(c.request is None or c.request_truncated for c in calls) >= 1
