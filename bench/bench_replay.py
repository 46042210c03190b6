#!/usr/bin/env python3
"""Replay benchmark of the analysis.

Generates a synthetic raw JSONL capture (docs/events.md): several processes,
each with a few TLS connections carrying many keep-alive LLM calls (Anthropic
and OpenAI, streamed and not, large agent-style requests), some plain HTTP,
a non-HTTP connection, and process events; then times, separately, parsing
the JSON lines, decoding them into typed events (``from_json``, the edge of
``replay``), and ``agentsight.analyzers.Analysis`` over the typed events, and
prints MB/s of captured plaintext for the analysis and for all three.
``--protocol h2`` carries the same calls over HTTP/2 (HPACK-encoded heads,
DATA frames of at most 16 KiB, one SSE event per frame and per read, as
servers write them).

    python bench/bench_replay.py --calls 2000 --json /tmp/bench.json
    python bench/bench_replay.py --calls 2000 --protocol h2
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import sys
import tempfile
import time
from typing import Any, Iterator

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson  # noqa: E402

from agentsight.analyzers import Analysis  # noqa: E402
from agentsight.events import LlmCall, from_json  # noqa: E402

READ = 16384  # an SSL record: the most one SSL_read returns
WORDS = ("the agent reads the file and then decides which tool to call next because "
         "context windows are large and tool outputs are long ").split()


def words(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def sse(events: list[tuple[str | None, Any]]) -> list[bytes]:
    out = []
    for name, data in events:
        d = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append(((f"event: {name}\n" if name else "") + f"data: {d}\n\n").encode())
    return out


def chunked_head(ctype: str) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nTransfer-Encoding: chunked\r\n"
            "request-id: req_bench\r\n\r\n").encode()


def length_head(n: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n"
            "\r\n").encode()


def request(host: str, path: str, body: dict[str, Any], key: str) -> bytes:
    b = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"User-Agent: bench/1.0\r\nContent-Length: {len(b)}\r\n\r\n").encode() + b


def history(rnd: random.Random) -> list[dict[str, Any]]:
    # agent-style context: a few turns with long tool outputs (~10-80 KB)
    msgs = [{"role": "user", "content": words(rnd, 40)}]
    for _ in range(rnd.randrange(2, 10)):
        msgs.append({"role": "assistant", "content": words(rnd, 30)})
        msgs.append({"role": "user", "content": words(rnd, rnd.randrange(200, 1500))})
    return msgs


def anthropic_call(rnd: random.Random, stream: bool) -> tuple[bytes, list[bytes]]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 4096, "stream": stream,
            "messages": history(rnd)}
    req = request("api.anthropic.com", "/v1/messages", body, "sk-ant-api03-" + "x" * 40)
    text = words(rnd, rnd.randrange(20, 300))
    if not stream:
        rb = json.dumps({"id": "msg_1", "type": "message", "role": "assistant",
                         "model": "claude-sonnet-4-5",
                         "content": [{"type": "text", "text": text}],
                         "stop_reason": "end_turn",
                         "usage": {"input_tokens": 1000, "output_tokens": 200}}).encode()
        resp = length_head(len(rb)) + rb
        return req, [resp[i:i + READ] for i in range(0, len(resp), READ)]
    ev: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
            "content": [], "usage": {"input_tokens": 1000, "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}})]
    ws = text.split(" ")
    for i in range(0, len(ws), 3):
        ev.append(("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "text_delta", "text": " ".join(ws[i:i + 3]) + " "}}))
    ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
    ev.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                 "usage": {"output_tokens": 200}}))
    ev.append(("message_stop", {"type": "message_stop"}))
    reads = [chunked_head("text/event-stream")]
    reads += [b"%x\r\n%s\r\n" % (len(f), f) for f in sse(ev)]  # one SSE event per read
    reads.append(b"0\r\n\r\n")
    return req, reads


def openai_call(rnd: random.Random, stream: bool) -> tuple[bytes, list[bytes]]:
    body = {"model": "gpt-4o", "stream": stream, "messages": history(rnd)}
    if stream:
        body["stream_options"] = {"include_usage": True}
    req = request("api.openai.com", "/v1/chat/completions", body, "sk-proj-" + "y" * 40)
    text = words(rnd, rnd.randrange(20, 300))
    if not stream:
        rb = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o",
                         "choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": text},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 1000, "completion_tokens": 200,
                                   "total_tokens": 1200}}).encode()
        resp = length_head(len(rb)) + rb
        return req, [resp[i:i + READ] for i in range(0, len(resp), READ)]
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
            "usage": None}
    ev: list[tuple[str | None, Any]] = []
    ws = text.split(" ")
    for i in range(0, len(ws), 2):
        ev.append((None, dict(base, choices=[{"index": 0, "delta": {
            "content": " ".join(ws[i:i + 2]) + " "}, "finish_reason": None}])))
    ev.append((None, dict(base, choices=[{"index": 0, "delta": {}, "finish_reason": "stop"}])))
    ev.append((None, dict(base, choices=[], usage={"prompt_tokens": 1000,
                                                   "completion_tokens": 200,
                                                   "total_tokens": 1200})))
    ev.append((None, "[DONE]"))
    reads = [chunked_head("text/event-stream")]
    reads += [b"%x\r\n%s\r\n" % (len(f), f) for f in sse(ev)]
    reads.append(b"0\r\n\r\n")
    return req, reads


def plain_call(rnd: random.Random) -> tuple[bytes, list[bytes]]:
    req = (b"GET /simple/package/ HTTP/1.1\r\nHost: pypi.org\r\nAccept: */*\r\n\r\n")
    body = os.urandom(rnd.randrange(1000, 200_000))
    resp = length_head(len(body)) + body
    return req, [resp[i:i + READ] for i in range(0, len(resp), READ)]


class H2Conn:
    """One HTTP/2 connection of the generated capture: its HPACK encoders
    and stream ids; HTTP/1.1 messages of the generator re-framed as h2."""

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def __init__(self) -> None:
        import hpack

        self.req_enc, self.resp_enc = hpack.Encoder(), hpack.Encoder()
        self.next_id = 1
        self.started = False

    def frames(self, req: bytes, reads: list[bytes]) -> tuple[list[bytes], list[bytes]]:
        from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame

        sid = self.next_id
        self.next_id += 2
        head, _, body = req.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        fields = [tuple(line.split(": ", 1)) for line in lines[1:]]
        host = next(v for k, v in fields if k.lower() == "host")
        hdrs = [(":method", method), (":scheme", "https"), (":authority", host), (":path", path)] + [
            (k.lower(), v) for k, v in fields if k.lower() not in ("host", "content-length")]
        h = HeadersFrame(sid, self.req_enc.encode(hdrs))
        h.flags.add("END_HEADERS")
        if not body:
            h.flags.add("END_STREAM")
        sends = [h.serialize()]
        for i in range(0, len(body), READ):
            d = DataFrame(sid, body[i:i + READ])
            if i + READ >= len(body):
                d.flags.add("END_STREAM")
            sends.append(d.serialize())
        if not self.started:
            self.started = True
            sends[0] = self.PREFACE + SettingsFrame(0).serialize() + sends[0]
        first, rest = reads[0], reads[1:]
        rhead, _, rbody = first.partition(b"\r\n\r\n")
        rlines = rhead.decode().split("\r\n")
        rfields = [tuple(line.split(": ", 1)) for line in rlines[1:]]
        chunked = any(k.lower() == "transfer-encoding" for k, _ in rfields)
        rh = HeadersFrame(sid, self.resp_enc.encode(
            [(":status", rlines[0].split(" ")[1])] + [(k.lower(), v) for k, v in rfields
                                                      if k.lower() != "transfer-encoding"]))
        rh.flags.add("END_HEADERS")
        if chunked:  # one event per chunk, the terminating chunk as END_STREAM
            pieces = [r.split(b"\r\n", 1)[1][:-2] for r in rest if not r.startswith(b"0\r\n")]
        else:
            whole = rbody + b"".join(rest)
            pieces = [whole[i:i + READ] for i in range(0, len(whole), READ)]
        recvs = [rh.serialize()]
        for i, piece in enumerate(pieces):
            d = DataFrame(sid, piece)
            if i == len(pieces) - 1:
                d.flags.add("END_STREAM")
            recvs.append(d.serialize())
        if not self.started or sid == 1:
            recvs[0] = SettingsFrame(0).serialize() + recvs[0]
        return sends, recvs


def generate(n_calls: int, seed: int, protocol: str = "http/1.1") -> Iterator[dict[str, Any]]:
    rnd = random.Random(seed)
    ts = 1_700_000_000_000_000_000
    procs = [(1000 + i, f"agent{i}") for i in range(4)]
    h2conns: dict[int, H2Conn] = {}

    def ev(t: str, pid: int, comm: str, **kw: Any) -> dict[str, Any]:
        nonlocal ts
        ts += rnd.randrange(1000, 50_000)
        return dict({"type": t, "ts": ts, "pid": pid, "tid": pid, "comm": comm, "uid": 1000},
                    **kw)

    def ssl(pid: int, comm: str, conn: int, d: str, data: bytes) -> dict[str, Any]:
        e = ev("ssl", pid, comm, fn="SSL_write" if d == "send" else "SSL_read", dir=d,
               conn=conn, len=len(data), truncated=0, gap=0, latency_ns=1000, ret=len(data))
        try:
            e["data"] = data.decode("utf-8")
        except UnicodeDecodeError:
            e["data_b64"] = base64.b64encode(data).decode()
        return e

    for pid, comm in procs:
        yield ev("exec", pid, comm, filename="/usr/bin/python3", argv=["python3", "agent.py"],
                 argv_truncated=False, ppid=1)
        # a non-HTTP TLS connection (a database)
        yield ssl(pid, comm, 900_000 + pid, "send", b"\x00\x00\x00\x08\x04\xd2\x16/")
        yield ssl(pid, comm, 900_000 + pid, "recv", b"S")
    for i in range(n_calls):
        pid, comm = procs[i % len(procs)]
        conn = pid * 10 + rnd.randrange(3)
        kind = rnd.random()
        if kind < 0.35:
            req, reads = anthropic_call(rnd, stream=rnd.random() < 0.7)
        elif kind < 0.80:
            req, reads = openai_call(rnd, stream=rnd.random() < 0.7)
        else:
            req, reads = plain_call(rnd)
        if protocol == "h2":
            sends, reads = h2conns.setdefault(conn, H2Conn()).frames(req, reads)
        else:
            sends = [req[j:j + READ] for j in range(0, len(req), READ)]
        for piece in sends:
            yield ssl(pid, comm, conn, "send", piece)
        for r in reads:
            yield ssl(pid, comm, conn, "recv", r)
        for _ in range(rnd.randrange(0, 4)):
            yield ev("open", pid, comm, path=f"/work/src/file{rnd.randrange(100)}.py", flags=0,
                     ret=3)
        if rnd.random() < 0.05:
            yield ev("fork", pid, comm, child_pid=pid + 50_000)
    for pid, comm in procs:
        yield ev("exit", pid, comm, exit_code=0, signal=None, core_dumped=False,
                 duration_ns=10**9)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="HTTP exchanges to generate")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--capture", help="keep the generated JSONL here (default: a temp file)")
    ap.add_argument("--json", help="write the result as JSON to this file")
    ap.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    ap.add_argument("--protocol", choices=("http/1.1", "h2"), default="http/1.1",
                    help="how the calls are carried (default: http/1.1)")
    args = ap.parse_args(argv)

    path = args.capture or os.path.join(tempfile.mkdtemp(prefix="agentsight_bench_"),
                                        "capture.jsonl")
    with open(path, "wb") as f:
        for e in generate(args.calls, args.seed, args.protocol):
            f.write(orjson.dumps(e) + b"\n")
    size = os.path.getsize(path)

    t0 = time.perf_counter()
    with open(path, "rb") as f:
        events = [orjson.loads(line) for line in f]
    parse_s = time.perf_counter() - t0
    plaintext = 0
    for e in events:
        if e["type"] == "ssl":
            plaintext += len(e["data"].encode()) if "data" in e else len(
                base64.b64decode(e["data_b64"]))
    t0 = time.perf_counter()
    typed = [from_json(e) for e in events]
    decode_s = time.perf_counter() - t0

    best = None
    for _ in range(max(1, args.repeat)):
        p = Analysis()
        out = 0
        calls = 0
        t0 = time.perf_counter()
        feed = p.feed
        for e in typed:
            r = feed(e)
            if r:
                out += len(r)
                for o in r:
                    if type(o) is LlmCall:
                        calls += 1
        tail = p.close()
        el = time.perf_counter() - t0
        out += len(tail)
        if best is None or el < best[0]:
            best = (el, out, calls, p.stats)
    el, out, calls, stats = best  # type: ignore[misc]

    # small events only (process events and tiny TLS reads of a non-HTTP connection)
    small: list[dict[str, Any]] = []
    for i in range(100_000):
        if i % 2:
            small.append({"type": "open", "ts": i, "pid": 7, "tid": 7, "comm": "agent",
                          "uid": 0, "path": "/work/src/x.py", "flags": 0, "ret": 3})
        else:
            small.append({"type": "ssl", "ts": i, "pid": 7, "tid": 7, "comm": "agent",
                          "uid": 0, "fn": "SSL_read", "dir": "recv", "conn": 5, "len": 8,
                          "data_b64": "AAAACATSFi8=", "truncated": 0, "gap": 0,
                          "latency_ns": 1, "ret": 8})
    small_typed = [from_json(e) for e in small]
    p = Analysis()
    t0 = time.perf_counter()
    for e in small_typed:
        p.feed(e)
    small_el = time.perf_counter() - t0
    result = {
        "events": len(events), "plaintext_bytes": plaintext, "capture_bytes": size,
        "analysis_seconds": round(el, 4), "mb_per_s": round(plaintext / el / 1e6, 1),
        "events_per_s": round(len(events) / el), "json_parse_seconds": round(parse_s, 4),
        "decode_seconds": round(decode_s, 4),
        "replay_mb_per_s": round(plaintext / (el + parse_s + decode_s) / 1e6, 1),
        "small_events_per_s": round(len(small) / small_el),
        "output_events": out, "llm_calls": calls, "python": sys.version.split()[0], "protocol": args.protocol,
        "stats": stats,
    }
    print(f"{len(events)} events, {plaintext / 1e6:.1f} MB plaintext, {calls} llm_call records")
    print(f"analysis: {el:.3f} s  ->  {result['mb_per_s']} MB/s, {result['events_per_s']} events/s")
    print(f"JSON lines parsed in {parse_s:.3f} s, decoded into events in {decode_s:.3f} s: "
          f"replay as a whole {result['replay_mb_per_s']} MB/s")
    print(f"small events only: {result['small_events_per_s']} events/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    if not args.capture:
        os.unlink(path)
        os.rmdir(os.path.dirname(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
