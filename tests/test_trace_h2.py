"""`trace` live over HTTP/2 and WebSocket: real clients (the openai and
anthropic SDKs on httpx2 with http2=True, curl --http2, node's http2
module, Go's net/http, the websockets package and the openai SDK's
Responses WebSocket) against a local h2 mock (hypercorn, TLS, ALPN), as
root; every call comes out as an llm_call like over HTTP/1.1, no key is
left in the output or in the raw capture, and `replay` agrees."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

from h2_mock import H2Mock
from llm_mock import Script
from support import REPO

pytestmark = pytest.mark.bpf

OPENAI_KEY = "sk-proj-h2tracetest0123456789abcdefg"
ANTHROPIC_KEY = "sk-ant-api03-h2tracetest0123456789ab"
GEMINI_KEY = "AIzaSyH2TraceTest0123456789abcdefghijk"
KEYS = (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY)
CLIENTS = Path(__file__).resolve().parent / "clients"

SDK_CLIENT = textwrap.dedent(
    f"""
    import sys, httpx2, openai, anthropic
    base, ca = sys.argv[1:3]
    o = openai.OpenAI(base_url=base + "/v1", api_key="{OPENAI_KEY}", max_retries=0,
                      http_client=httpx2.Client(http2=True, verify=ca))
    o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "one"}}])
    for _ in o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "two"}}],
                                       tools=[{{"type": "function", "function": {{"name": "get_weather",
                                                "parameters": {{"type": "object"}}}}}}],
                                       stream=True, stream_options={{"include_usage": True}}):
        pass
    o.responses.create(model="gpt-4.1", input="three")
    a = anthropic.Anthropic(base_url=base, api_key="{ANTHROPIC_KEY}", max_retries=0,
                            http_client=httpx2.Client(http2=True, verify=ca))
    a.messages.create(model="claude-opus-4-1", max_tokens=64, messages=[{{"role": "user", "content": "four"}}])
    with a.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                           messages=[{{"role": "user", "content": "five"}}]) as s:
        s.get_final_message()
    with httpx2.Client(http2=True, verify=ca) as h:
        with h.stream("POST", base + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
                      headers={{"x-goog-api-key": "{GEMINI_KEY}"}},
                      json={{"contents": [{{"role": "user", "parts": [{{"text": "six"}}]}}]}}) as r:
            r.raise_for_status()
            r.read()
    """
)

WS_CLIENT = textwrap.dedent(
    f"""
    import json, ssl, sys
    import httpx2, openai
    from websockets.sync.client import connect
    url, base, ca = sys.argv[1:4]
    # a context of its own: httpx changes the ALPN list of one it is given for HTTP/2
    with connect(url, ssl=ssl.create_default_context(cafile=ca),
                 additional_headers={{"Authorization": "Bearer {OPENAI_KEY}"}}) as ws:
        for text in ("ws one", "ws two"):
            ws.send(json.dumps({{"type": "response.create", "model": "gpt-4.1-mini", "input": text}}))
            while json.loads(ws.recv())["type"] != "response.completed":
                pass
    with connect(url, ssl=ssl.create_default_context(cafile=ca)) as ws:  # no LLM call: echoes
        for text in ("hello", "x" * 5000):
            ws.send(text)
            assert ws.recv() == text
    o = openai.OpenAI(base_url=base + "/v1", api_key="{OPENAI_KEY}", max_retries=0,
                      http_client=httpx2.Client(verify=ca))
    with o.responses.connect(websocket_connection_options={{"ssl": ssl.create_default_context(cafile=ca)}}) as c:
        c.response.create(model="gpt-5", input="ws three", tools=[{{"type": "function", "name": "run",
                          "parameters": {{"type": "object"}}}}])
        for ev in c:
            if ev.type == "response.completed":
                break
    """
)


def _calls(events: list[dict], pid: int) -> list[dict]:
    return [e for e in events if e["type"] == "llm_call" and e["pid"] == pid]


def _summary(c: dict) -> tuple:
    return (c["api"], c["model"], c["stream"], c["response"]["text"],
            (c["usage"].get("input_tokens"), c["usage"].get("output_tokens")),
            [(t["name"], t["arguments"]) for t in c["response"]["tool_calls"]])


def _run(cmd: list[str], **kw) -> subprocess.Popen:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, (cmd, out, err)
    p.stdout_text = out.decode()  # type: ignore[attr-defined]
    return p


def _no_key_anywhere(output: bytes, raw: Path) -> None:
    """Neither the output, nor the raw capture, nor what an unredacted replay
    of that capture decodes from it (HPACK, compressed frames) holds a key."""
    for key in KEYS:
        assert key.encode() not in output
        assert key.encode() not in raw.read_bytes()
    replayed = subprocess.run([sys.executable, "-m", "agentsight", "replay", "--no-redact", str(raw)],
                              capture_output=True, cwd=REPO, timeout=120, check=True)
    for key in KEYS:
        assert key.encode() not in replayed.stdout, key


def _analysed(events: list[dict], pids: set[int]) -> list[dict]:
    """What this test's processes did (other tests may run beside it)."""
    return [e for e in events if e["type"] in ("llm_call", "websocket") and e["pid"] in pids]


def _replay(raw: Path, pids: set[int]) -> list[dict]:
    replayed = subprocess.run([sys.executable, "-m", "agentsight", "replay", str(raw)],
                              capture_output=True, cwd=REPO, timeout=120, check=True)
    return _analysed([orjson.loads(line) for line in replayed.stdout.splitlines()], pids)


def test_trace_reports_llm_calls_over_http2(capture, tmp_path):
    raw = tmp_path / "raw.jsonl"
    with H2Mock() as mock:
        mock.queue = [
            Script(text="first over h2", input_tokens=11, output_tokens=3),
            Script(text="", tool_name="get_weather", tool_args={"city": "Oslo"}, tool_id="call_h2",
                   input_tokens=21, output_tokens=9),
            Script(text="third, a response", input_tokens=31, output_tokens=5),
            Script(text="fourth", tool_name="run", tool_args={"command": "ls"}, tool_id="toolu_h2",
                   input_tokens=41, output_tokens=12),
            Script(text="fifth, streamed by anthropic", input_tokens=51, output_tokens=6),
            Script(text="sixth from gemini", input_tokens=61, output_tokens=4),
            Script(text="seventh via curl, gzipped", input_tokens=71, output_tokens=2, encoding="gzip"),
            Script(text="eighth from node", input_tokens=81, output_tokens=7),
            Script(text="ninth from node", input_tokens=91, output_tokens=8),
        ]
        run = capture("trace", "--raw", str(raw), "--no-open")
        sdk = _run([sys.executable, "-c", SDK_CLIENT, mock.base_url, mock.ca_file])
        curl = _run(["curl", "-sS", "--http2", "--compressed", "--cacert", mock.ca_file,
                     "-H", "content-type: application/json", "-H", f"authorization: Bearer {OPENAI_KEY}",
                     "--data-binary", '{"model": "local-llama", "messages": [{"role": "user", "content": "7"}]}',
                     mock.base_url + "/v1/chat/completions"])
        node = _run(["node", str(CLIENTS / "h2_client.js"), mock.base_url, mock.ca_file, ANTHROPIC_KEY])
        events, _ = run.stop()
        versions = [r[0] for r in mock.requests]

    assert versions == ["2"] * 9  # every client really spoke HTTP/2
    output = run.output.read_bytes()
    _no_key_anywhere(output, raw)

    calls = _calls(events, sdk.pid)
    assert [_summary(c) for c in calls] == [
        ("chat.completions", "gpt-4o-mini", False, "first over h2", (11, 3), []),
        ("chat.completions", "gpt-4o-mini", True, "", (21, 9), [("get_weather", {"city": "Oslo"})]),
        ("responses", "gpt-4.1", False, "third, a response", (31, 5), []),
        ("messages", "claude-opus-4-1", False, "fourth", (41, 12), [("run", {"command": "ls"})]),
        ("messages", "claude-sonnet-4-5", True, "fifth, streamed by anthropic", (51, 6), []),
        ("streamGenerateContent", "gemini-2.5-flash", True, "sixth from gemini", (61, 4), []),
    ]
    assert [_summary(c) for c in _calls(events, curl.pid)] == [
        ("chat.completions", "local-llama", False, "seventh via curl, gzipped", (71, 2), [])]
    assert [_summary(c) for c in _calls(events, node.pid)] == [
        ("messages", "claude-sonnet-4-5", True, "eighth from node", (81, 7), []),
        ("generateContent", "gemini-2.5-pro", False, "ninth from node", (91, 8), [])]
    mine = calls + _calls(events, curl.pid) + _calls(events, node.pid)
    for c in mine:
        assert (c["protocol"], c["status"], c["side"], c.get("incomplete_reason")) == ("h2", 200, "client", None), \
            (c["api"], c["model"], c.get("incomplete_reason"))
        assert c["host"] == "127.0.0.1" and c["started_ns"] <= c["ended_ns"]
        if c["stream"]:
            assert c["started_ns"] <= c["first_token_ns"] <= c["ended_ns"]
    assert calls[1]["response"]["tool_calls"][0]["id"] == "call_h2"
    assert calls[0]["request_headers"]["authorization"] == "[REDACTED]"

    # the same capture, replayed: the same calls (the mock's own, seen from the server side, too)
    pids = {sdk.pid, curl.pid, node.pid, os.getpid()}
    live = _analysed(events, pids)
    assert _replay(raw, pids) == live
    served = [c for c in live if c["side"] == "server"]
    assert len(served) == 9 and all(c["protocol"] == "h2" for c in served)


def test_trace_reports_a_go_client_over_http2(capture, tmp_path):
    """Go's net/http picks h2 by ALPN. Its own TLS is not hooked here, so the
    calls are read where the server (OpenSSL) reads them: Go's framing and
    HPACK, seen from the other side."""
    go = shutil.which("go")
    assert go, "scripts/test.sh installs golang-go"
    cache = Path(os.environ.get("AGENTSIGHT_TEST_CACHE", "/var/cache/agentsight-test")) / "go"
    cache.mkdir(parents=True, exist_ok=True)
    binary = tmp_path / "h2_client"
    subprocess.run([go, "build", "-o", str(binary), str(CLIENTS / "h2_client.go")], check=True, timeout=300,
                   env={**os.environ, "GO111MODULE": "off", "GOCACHE": str(cache / "build"),
                        "GOPATH": str(cache / "path")}, capture_output=True)
    with H2Mock() as mock:
        mock.queue = [Script(text="streamed to go", input_tokens=5, output_tokens=3),
                      Script(text="answered to go", input_tokens=6, output_tokens=4)]
        run = capture("trace", "--no-open")
        client = _run([str(binary), mock.base_url, mock.ca_file, OPENAI_KEY])
        events, _ = run.stop()
    assert [line.split()[:2] for line in client.stdout_text.splitlines()] == [["HTTP/2.0", "200"]] * 2
    served = [e for e in events if e["type"] == "llm_call" and e["pid"] == os.getpid()
              and e["request_headers"].get("user-agent", "").startswith("Go-http-client/2")]
    assert [_summary(c) for c in served] == [
        ("chat.completions", "gpt-4o-mini", True, "streamed to go", (5, 3), []),
        ("messages", "claude-haiku-4-5", False, "answered to go", (6, 4), [])]
    assert all((c["protocol"], c["side"], c["status"], c.get("incomplete")) == ("h2", "server", 200, None)
               for c in served)
    assert OPENAI_KEY.encode() not in run.output.read_bytes()


def test_trace_reports_responses_over_websocket(capture, tmp_path):
    raw = tmp_path / "raw.jsonl"
    with H2Mock() as mock:
        mock.queue = [Script(text="ws answer one", input_tokens=7, output_tokens=3),
                      Script(text="ws answer two", input_tokens=8, output_tokens=4),
                      Script(text="", tool_name="run", tool_args={"command": "pwd"}, tool_id="call_ws",
                             input_tokens=9, output_tokens=5)]
        run = capture("trace", "--raw", str(raw), "--no-open")
        client = _run([sys.executable, "-c", WS_CLIENT, mock.ws_url, mock.base_url, mock.ca_file])
        events, _ = run.stop()
    _no_key_anywhere(run.output.read_bytes(), raw)
    calls = _calls(events, client.pid)
    assert [_summary(c) for c in calls] == [
        ("responses", "gpt-4.1-mini", True, "ws answer one", (7, 3), []),
        ("responses", "gpt-4.1-mini", True, "ws answer two", (8, 4), []),
        ("responses", "gpt-5", True, "", (9, 5), [("run", {"command": "pwd"})]),
    ]
    for c in calls:
        assert (c["protocol"], c["status"], c["method"], c["path"], c.get("incomplete")) == \
            ("websocket", 101, "GET", "/v1/responses", None), c
        assert c["request"]["type"] == "response.create"
        assert c["started_ns"] <= c["first_token_ns"] <= c["ended_ns"]
    assert calls[0]["request_headers"]["authorization"] == "[REDACTED]"
    assert calls[0]["conn"] == calls[1]["conn"] != calls[2]["conn"]  # two calls on one connection
    (plain,) = [e for e in events if e["type"] == "websocket" and e["pid"] == client.pid]
    assert (plain["client_messages"], plain["server_messages"]) == (2, 2)
    assert (plain["client_bytes"], plain["server_bytes"]) == (5005, 5005)
    assert [(m["from"], m["type"], m["size"]) for m in plain["messages"] if m["type"] == "text"] == [
        ("client", "text", 5), ("server", "text", 5), ("client", "text", 5000), ("server", "text", 5000)]
    assert "permessage-deflate" in plain["extensions"]
    assert plain["client_wire_bytes"] < 5005  # the 5000 x's went compressed
    assert plain["closed_by"] == "client" and plain["close_code"] == 1000 and not plain.get("incomplete")
    pids = {client.pid, os.getpid()}
    live = _analysed(events, pids)
    assert _replay(raw, pids) == live
    assert len([c for c in live if c["side"] == "server" and c["type"] == "llm_call"]) == 3
