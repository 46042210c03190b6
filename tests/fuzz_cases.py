"""Cases for fuzzing the analyzers: provider exchanges of every API, bodies
whose fields have the wrong type, byte-mutated captures of real clients.

Every case ends up as raw capture events (dicts, docs/events.md) given to
:func:`analyze`, the one place that knows how events reach the analyzers.
"""
from __future__ import annotations

import copy
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from llm_fixtures import Capture, JsonAnalysis, request, response, sse_response
from llm_mock import (Script, anthropic_events, anthropic_response, chat_events, chat_response,
                      encode_body, gemini_chunks, gemini_response, responses_events,
                      responses_response, sse)


def analyze(events: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Raw capture events through the analyzers: (output events, stats)."""
    p = JsonAnalysis(redact=True)
    out: list[dict[str, Any]] = []
    for e in events:
        out.extend(p.feed(e))
    out.extend(p.close())
    return out, p.stats


@dataclass
class Exchange:
    """One HTTP exchange as bytes; ``llm``: the request is an LLM API call."""

    api: str
    request: bytes
    response: bytes
    llm: bool = True
    note: str = ""


@dataclass
class Body:
    """A provider exchange before serialisation, so its values can be confused.

    ``frames`` is a list of (SSE event name, JSON data) for streams, else
    None and ``json`` is the whole response body.
    """

    api: str
    host: str
    path: str
    request: Any
    json: Any = None
    frames: list[tuple[str | None, Any]] | None = None
    crlf: bool = False
    headers: dict[str, str] = field(default_factory=dict)


HOSTS = {"anthropic": "api.anthropic.com", "openai": "api.openai.com",
         "gemini": "generativelanguage.googleapis.com"}
APIS = ("anthropic", "anthropic/stream", "chat", "chat/stream", "responses", "responses/stream",
        "completions", "embeddings", "gemini", "gemini/stream", "gemini/array")

_WORDS = ["tool", "call", "the", "file", "agent", "é", "✓", "{", "\"", "\\n", "Paris", "rm -rf"]


def _script(rnd: random.Random) -> Script:
    return Script(text=" ".join(rnd.choice(_WORDS) for _ in range(rnd.randrange(0, 30))),
                  tool_name=rnd.choice([None, "get_weather", "bash"]),
                  tool_args=rnd.choice([{}, {"city": "Lima"}, {"cmd": "ls -la", "n": [1, 2]}]),
                  input_tokens=rnd.randrange(0, 5000), output_tokens=rnd.randrange(0, 900),
                  cache_read_tokens=rnd.choice([0, 0, 128]), piece=rnd.randrange(1, 9))


def provider_body(api: str, rnd: random.Random) -> Body:
    """A well-formed exchange of one API, as its provider sends it."""
    s = _script(rnd)
    msgs = [{"role": "user", "content": "hi"}]
    if api.startswith("anthropic"):
        stream = api.endswith("/stream")
        req = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": stream, "messages": msgs}
        b = Body(api, HOSTS["anthropic"], "/v1/messages", req)
        if stream:
            b.frames = anthropic_events(s, "claude-sonnet-4-5")
        else:
            b.json = anthropic_response(s, "claude-sonnet-4-5")
        return b
    if api.startswith("chat") or api == "completions":
        stream = api.endswith("/stream")
        req: dict[str, Any] = {"model": "gpt-4o", "stream": stream, "messages": msgs}
        if api == "completions":
            b = Body(api, HOSTS["openai"], "/v1/completions", {"model": "gpt-3.5-turbo-instruct",
                                                                "prompt": "hi"})
            b.json = {"id": "cmpl-1", "object": "text_completion", "model": "gpt-3.5-turbo-instruct",
                      "choices": [{"text": s.text, "index": 0, "finish_reason": "stop"}],
                      "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
            return b
        b = Body(api, HOSTS["openai"], "/v1/chat/completions", req)
        if stream:
            req["stream_options"] = {"include_usage": True}
            b.frames = chat_events(s, "gpt-4o", True)
        else:
            b.json = chat_response(s, "gpt-4o")
        return b
    if api.startswith("responses"):
        stream = api.endswith("/stream")
        b = Body(api, HOSTS["openai"], "/v1/responses", {"model": "gpt-5", "input": "hi",
                                                         "stream": stream})
        if stream:
            b.frames = responses_events(s, "gpt-5")
        else:
            b.json = responses_response(s, "gpt-5")
            if rnd.random() < 0.5:  # a reasoning summary too
                b.json["output"].insert(0, {"type": "reasoning", "id": "rs_1", "summary": [
                    {"type": "summary_text", "text": "thinking about " + s.text[:20]}]})
        return b
    if api == "embeddings":
        b = Body(api, HOSTS["openai"], "/v1/embeddings", {"model": "text-embedding-3-small",
                                                          "input": "hi"})
        b.json = {"object": "list", "model": "text-embedding-3-small",
                  "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
                  "usage": {"prompt_tokens": 2, "total_tokens": 2}}
        return b
    if api.startswith("gemini"):
        req = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
        if api == "gemini":
            b = Body(api, HOSTS["gemini"], "/v1beta/models/gemini-2.5-flash:generateContent", req)
            b.json = gemini_response(s, "gemini-2.5-flash")
        elif api == "gemini/stream":
            b = Body(api, HOSTS["gemini"],
                     "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse", req, crlf=True)
            b.frames = [(None, c) for c in gemini_chunks(s, "gemini-2.5-pro")]
        else:
            b = Body(api, HOSTS["gemini"], "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
                     req)
            b.json = gemini_chunks(s, "gemini-2.5-pro")
        return b
    raise ValueError(api)


# -- type confusion ------------------------------------------------------------------------------
def _confuser(rnd: random.Random, old: Any, pool: list[Any]) -> Any:
    kinds: list[Callable[[], Any]] = [
        lambda: str(old) if not isinstance(old, (dict, list)) else json.dumps(old)[:50],
        lambda: rnd.choice([0, 1, -1, 7, 2 ** 63 - 1, -2 ** 63]),
        lambda: rnd.choice([1.5, -0.0, 1e300]),
        lambda: rnd.choice([True, False]),
        lambda: None,
        lambda: rnd.choice(["", "x", "0", "\x1b[2J\x07", "\u202e", "null", "[]", "{}"]),
        lambda: rnd.choice([[], [old], [1, "a", None], [[]]]),
        lambda: rnd.choice([{}, {"type": old}, {"0": old}, {"text": [old]}]),
        lambda: copy.deepcopy(rnd.choice(pool)) if pool else None,  # another field's value
    ]
    return rnd.choice(kinds)()


def _slots(obj: Any, out: list[tuple[Any, Any]], pool: list[Any], depth: int = 0) -> None:
    """Every (container, key) that holds a value, and the values themselves."""
    if depth > 12:
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append((obj, k))
            pool.append(v)
            _slots(v, out, pool, depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.append((obj, i))
            pool.append(v)
            _slots(v, out, pool, depth + 1)


def confuse(obj: Any, rnd: random.Random, changes: int) -> Any:
    """A copy of a JSON value with ``changes`` values swapped for ones of other types."""
    obj = copy.deepcopy(obj)
    for _ in range(changes):
        slots: list[tuple[Any, Any]] = []
        pool: list[Any] = []
        _slots(obj, slots, pool)
        if not slots or rnd.random() < 0.03:
            return _confuser(rnd, obj, pool)  # the whole body
        container, key = rnd.choice(slots)
        if rnd.random() < 0.1 and isinstance(container, dict):
            del container[key]
        else:
            container[key] = _confuser(rnd, container[key], pool)
    return obj


def confused_body(api: str, rnd: random.Random) -> Body:
    """A provider exchange with some values of the wrong type (in its frames,
    its response, and sometimes its request)."""
    b = provider_body(api, rnd)
    if b.frames is not None:
        frames = [list(f) for f in b.frames]
        for _ in range(rnd.randrange(1, 6)):
            f = rnd.choice(frames)
            if isinstance(f[1], str):  # [DONE]
                continue
            f[1] = confuse(f[1], rnd, rnd.randrange(1, 3))
        b.frames = [(n, d) for n, d in frames]
    else:
        b.json = confuse(b.json, rnd, rnd.randrange(1, 6))
    if rnd.random() < 0.2:
        b.request = confuse(b.request, rnd, 1)
    return b


def exchange_of(b: Body, rnd: random.Random, encoding: str | None = None) -> Exchange:
    req = request("POST", b.path, b.host, body=json.dumps(b.request).encode(),
                  headers={"Authorization": "Bearer sk-fuzz-0123456789abcdefghij"})
    if b.frames is not None:
        frames = sse(b.frames, crlf=b.crlf)
        if rnd.random() < 0.3:  # several events per chunk
            frames = [b"".join(frames[i:i + 3]) for i in range(0, len(frames), 3)]
        resp = sse_response(frames, headers=b.headers)
    else:
        data = json.dumps(b.json).encode()
        headers = dict(b.headers)
        if encoding:
            data = encode_body(data, encoding)
            headers["Content-Encoding"] = encoding
        if rnd.random() < 0.5:
            resp = response(200, data, headers=headers)
        else:
            resp = response(200, headers=headers, chunks=_split(data, rnd, 4))
    return Exchange(b.api, req, resp)


def _split(data: bytes, rnd: random.Random, n: int) -> list[bytes]:
    if len(data) < 2:
        return [data]
    cuts = sorted({rnd.randrange(1, len(data)) for _ in range(rnd.randrange(0, n))})
    return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def capture_of(exchanges: list[Exchange], rnd: random.Random, conns: int = 1,
               exit_at_end: bool = False) -> list[dict[str, Any]]:
    """Raw `ssl` events of one process: the exchanges in order over ``conns``
    keep-alive connections, each direction cut into reads at random."""
    c = Capture(pid=rnd.randrange(100, 60000))
    for i, x in enumerate(exchanges):
        conn = 1 + i % conns
        # now and then one byte at a time: the slowest and the most demanding
        read = 1 if rnd.random() < 0.02 else rnd.choice([7, 100, 1000, 16384, 1 << 20])
        for piece in _split(x.request, rnd, 3):
            c.send(piece, conn)
        resp = x.response
        for j in range(0, len(resp), read):
            c.recv(resp[j:j + read], conn)
    if exit_at_end:
        c.exit()
    return c.events


# -- byte mutations ------------------------------------------------------------------------------
def mutate_bytes(data: bytes, rnd: random.Random, start: int = 0) -> bytes:
    """``data`` with a few random edits at or after ``start``: bit flips,
    overwrites, insertions, deletions, duplicated or truncated spans."""
    b = bytearray(data)
    for _ in range(rnd.randrange(1, 5)):
        if len(b) <= start:
            break
        i = rnd.randrange(start, len(b))
        op = rnd.randrange(7)
        if op == 0:
            b[i] ^= 1 << rnd.randrange(8)
        elif op == 1:
            b[i] = rnd.choice(b"\0\r\n:{}[]\",0a\xff\x80 ")
        elif op == 2:
            b[i:i] = rnd.choice([b"\r\n", b"\n\n", b"data: ", b"\0" * 5, b"{\"index\":\"0\"}",
                                 bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 40)))])
        elif op == 3:
            del b[i:i + rnd.randrange(1, 64)]
        elif op == 4:
            j = min(len(b), i + rnd.randrange(1, 200))
            b[j:j] = b[i:j]
        elif op == 5:
            del b[i:]
        else:
            j = min(len(b), i + rnd.randrange(1, 16))
            b[i:j] = bytes(rnd.getrandbits(8) for _ in range(j - i))
    return bytes(b)


def body_start(resp: bytes) -> int:
    """Where the body of an HTTP response (as bytes) begins."""
    i = resp.find(b"\r\n\r\n")
    return len(resp) if i < 0 else i + 4


# -- real clients --------------------------------------------------------------------------------
def record_real_clients() -> list[list[dict[str, Any]]]:
    """Raw capture events of the official SDKs (and httpx for Gemini) talking
    to the local mock, one list per call: real clients' headers, framing and
    reads, every API streamed and not."""
    import anthropic
    import httpx2
    import openai

    from llm_mock import LLMMock

    captures = []
    with LLMMock() as mock:
        http = httpx2.Client(verify=mock.ssl_context())
        oai = openai.OpenAI(base_url=mock.base_url + "/v1", api_key="sk-fuzz-0123456789abcdef",
                            max_retries=0, http_client=http)
        ant = anthropic.Anthropic(base_url=mock.base_url, api_key="sk-ant-fuzz-0123456789",
                                  max_retries=0, http_client=http)
        msgs = [{"role": "user", "content": "hi"}]
        scripts = [Script(text="Plain answer."),
                   Script(text="With a tool.", tool_name="bash", tool_args={"cmd": "ls"}),
                   Script(text="Zipped.", encoding="gzip"), Script(text="Brotli.", encoding="br")]

        def calls():
            for s in scripts:
                mock.script = s
                yield lambda: oai.chat.completions.create(model="gpt-4o", messages=msgs)
                yield lambda: list(oai.chat.completions.create(
                    model="gpt-4o", messages=msgs, stream=True,
                    stream_options={"include_usage": True}))
                yield lambda: oai.responses.create(model="gpt-5", input="hi")
                yield lambda: list(oai.responses.create(model="gpt-5", input="hi", stream=True))
                yield lambda: ant.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                                  messages=msgs)
                yield lambda: list(ant.messages.create(model="claude-sonnet-4-5", max_tokens=64,
                                                       messages=msgs, stream=True))
                body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
                for verb in ("generateContent", "streamGenerateContent?alt=sse",
                             "streamGenerateContent"):
                    yield lambda verb=verb: http.post(
                        f"{mock.base_url}/v1beta/models/gemini-2.5-flash:{verb}", json=body,
                        headers={"x-goog-api-key": "AIza-fuzz"}).read()

        for call in calls():
            with mock._recorder.lock:
                mock._recorder.events.clear()
            call()
            captures.append(mock.raw_events())
        http.close()
    return captures


# -- what every llm_call must look like -----------------------------------------------------------
def shape_problems(call: dict[str, Any]) -> list[str]:
    """What is wrong with an llm_call's shape: the fields readers rely on,
    whatever the provider sent.  Empty when nothing is."""
    bad = []
    r = call.get("response")
    if not isinstance(r, dict):
        return ["response is not an object"]
    if not isinstance(r.get("text"), str):
        bad.append("response.text is not a string")
    if not isinstance(r.get("thinking", ""), str):
        bad.append("response.thinking is not a string")
    for k in ("stop_reason", "model", "id"):
        if r.get(k) is not None and not isinstance(r[k], str):
            bad.append(f"response.{k} is not a string")
    tcs = r.get("tool_calls")
    if not isinstance(tcs, list):
        bad.append("response.tool_calls is not a list")
    else:
        for tc in tcs:
            if not isinstance(tc, dict) or set(tc) != {"id", "name", "arguments"}:
                bad.append(f"a tool call is not {{id, name, arguments}}: {tc!r:.80}")
            elif any(tc[k] is not None and not isinstance(tc[k], str) for k in ("id", "name")):
                bad.append(f"a tool call's id or name is not a string: {tc!r:.80}")
    usage = call.get("usage")
    if not isinstance(usage, dict) or not all(type(v) is int for v in usage.values()):
        bad.append(f"usage is not names to integers: {usage!r:.80}")
    if call.get("model") is not None and not isinstance(call["model"], str):
        bad.append("model is not a string")
    err = call.get("error")
    if err is not None and not (isinstance(err, dict)
                                and all(isinstance(v, (str, int, float)) for v in err.values())):
        bad.append(f"error is not flat: {err!r:.80}")
    return bad


# -- captures as bytes ---------------------------------------------------------------------------
def event_bytes(ev: dict[str, Any]) -> bytes:
    import base64
    return ev["data"].encode() if "data" in ev else base64.b64decode(ev.get("data_b64", ""))


def with_bytes(ev: dict[str, Any], data: bytes) -> dict[str, Any]:
    import base64
    e = {k: v for k, v in ev.items() if k not in ("data", "data_b64")}
    e["len"] = e["ret"] = len(data)
    try:
        e["data"] = data.decode("utf-8")
    except UnicodeDecodeError:
        e["data_b64"] = base64.b64encode(data).decode()
    return e


def mutate_capture(events: list[dict[str, Any]], rnd: random.Random,
                   response_body_only: bool) -> list[dict[str, Any]]:
    """A capture with one of its byte streams mutated, then cut again at its
    reads' boundaries.  ``response_body_only``: only a response, and only
    after its head, so the request and the response's status stay whole."""
    streams: dict[tuple[int, str], list[int]] = {}
    for i, e in enumerate(events):
        if e.get("type") == "ssl" and e.get("len"):
            streams.setdefault((e["conn"], e["dir"]), []).append(i)
    if not streams:
        return events
    keys = sorted(streams)
    if response_body_only:
        keys = [k for k in keys if event_bytes(events[streams[k][0]]).startswith(b"HTTP/")]
        if not keys:
            return events
    idx = streams[rnd.choice(keys)]
    pieces = [event_bytes(events[i]) for i in idx]
    data = b"".join(pieces)
    start = body_start(data) if response_body_only else 0
    mutated = mutate_bytes(data, rnd, start)
    out = list(events)
    pos = 0
    for n, (i, piece) in enumerate(zip(idx, pieces)):
        end = len(mutated) if n == len(idx) - 1 else min(len(mutated), pos + len(piece))
        out[i] = with_bytes(events[i], mutated[pos:end])
        pos = end
    return [e for e in out if e.get("type") != "ssl" or e.get("len") or not e.get("ret")]


# -- one fuzz run, as the test runs it (in a process of its own, for its peak RSS) ----------------
def run_fuzz(seed: int, confused: int, mutated: int, real: list[list[dict[str, Any]]],
             bombs: bool = True) -> dict[str, Any]:
    """Runs the cases; returns {cases, failed_cases, failures (the first 20),
    seconds, peak_rss_mib}."""
    import time

    import orjson

    rnd = random.Random(seed)
    failures: list[str] = []
    failed_cases: set[str] = set()
    counts = {"confused": 0, "mutated": 0, "bombs": 0}

    def fail(what: str) -> None:
        failed_cases.add(what.split(":", 1)[0])
        if len(failures) < 20:
            failures.append(what)

    def check(case: str, events: list[dict[str, Any]], want_calls: int | None) -> None:
        out, stats = analyze(events)
        errors = {k: v for k, v in stats.items() if k.startswith("errors.")}
        if errors:
            fail(f"{case}: {errors}")
        calls = [o for o in out if o["type"] == "llm_call"]
        if want_calls is not None and len(calls) != want_calls:
            fail(f"{case}: {len(calls)} llm_call for {want_calls} calls")
        for c in calls:
            if "analysis_error" in c:
                fail(f"{case}: {c['analysis_error']}")
            for p in shape_problems(c):
                fail(f"{case}: {p}")
        for o in out:
            try:
                orjson.dumps(o)
            except TypeError as e:
                fail(f"{case}: an output does not serialise: {e}")

    t0 = time.perf_counter()
    for i in range(confused):
        n = rnd.choice([1, 1, 1, 2, 4])
        xs = []
        for _ in range(n):
            api = rnd.choice(APIS)
            enc = rnd.choice([None, None, "gzip", "br", "zstd", "deflate"])
            xs.append(exchange_of(confused_body(api, rnd), rnd, encoding=enc))
        events = capture_of(xs, rnd, conns=rnd.choice([1, 2]), exit_at_end=rnd.random() < 0.3)
        check(f"confused #{i} ({', '.join(x.api for x in xs)}; seed {seed})", events, len(xs))
        counts["confused"] += 1
    for i in range(mutated):
        base = rnd.choice(real)
        whole = rnd.random() < 0.5
        events = mutate_capture(base, rnd, response_body_only=not whole)
        check(f"mutated #{i} ({'anywhere' if whole else 'response body'}; seed {seed})", events,
              None if whole else 1)
        counts["mutated"] += 1
    if bombs:
        from bombs import BOMBS, MiB
        for enc, size in (("gzip", 2048 * MiB), ("br", 1024 * MiB), ("zstd", 512 * MiB),
                          ("deflate", 1024 * MiB)):
            b = provider_body("anthropic", rnd)
            x = exchange_of(b, rnd)
            x.response = response(200, BOMBS[enc](size), headers={"Content-Encoding": enc})
            check(f"bomb ({enc}, {size >> 20} MiB)", capture_of([x], rnd), 1)
            counts["bombs"] += 1
    seconds = time.perf_counter() - t0
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    return {"cases": counts, "failed_cases": len(failed_cases), "failures": failures,
            "seconds": seconds, "peak_rss_mib": peak}


if __name__ == "__main__":
    import sys

    import orjson

    seed, confused, mutated, real_path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    with open(real_path, "rb") as f:
        real = orjson.loads(f.read())
    print(json.dumps(run_fuzz(seed, confused, mutated, real)))
