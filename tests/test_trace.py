"""`trace` live: real SDK code and curl against the local LLM mock, as root;
then `replay` of the raw capture gives the same LLM calls."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import orjson
import pytest

from llm_mock import LLMMock, Script
from support import REPO

pytestmark = pytest.mark.bpf

OPENAI_KEY = "sk-proj-tracetest0123456789abcdefgh"
ANTHROPIC_KEY = "sk-ant-api03-tracetest0123456789abcd"
GEMINI_KEY = "AIzaSyTraceTest0123456789abcdefghijklm"

CLIENT = textwrap.dedent(
    f"""
    import sys, httpx2, openai, anthropic
    base, ca = sys.argv[1:3]
    o = openai.OpenAI(base_url=base + "/v1", api_key="{OPENAI_KEY}", max_retries=0,
                      http_client=httpx2.Client(verify=ca))
    o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "one"}}])
    for _ in o.chat.completions.create(model="gpt-4o-mini", messages=[{{"role": "user", "content": "two"}}],
                                       tools=[{{"type": "function", "function": {{"name": "get_weather",
                                                "parameters": {{"type": "object"}}}}}}],
                                       stream=True, stream_options={{"include_usage": True}}):
        pass
    for _ in o.responses.create(model="gpt-4.1", input="three", stream=True):
        pass
    a = anthropic.Anthropic(base_url=base, api_key="{ANTHROPIC_KEY}", max_retries=0,
                            http_client=httpx2.Client(verify=ca))
    with a.messages.stream(model="claude-sonnet-4-5", max_tokens=64,
                           messages=[{{"role": "user", "content": "four"}}]) as s:
        s.get_final_message()
    with httpx2.Client(verify=ca) as h:
        h.post(base + "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse&key={GEMINI_KEY}",
               json={{"contents": [{{"role": "user", "parts": [{{"text": "five"}}]}}]}}).raise_for_status()
    """
)


def test_trace_reports_each_call_and_replay_agrees(capture, tmp_path):
    raw = tmp_path / "raw.jsonl"
    with LLMMock() as mock:
        mock.queue = [
            Script(text="first answer", input_tokens=11, output_tokens=3),
            Script(text="", tool_name="get_weather", tool_args={"city": "Paris", "unit": "C"},
                   tool_id="call_w1", input_tokens=21, output_tokens=9),
            Script(text="third answer, streamed", input_tokens=31, output_tokens=5),
            Script(text="fourth", tool_name="run", tool_args={"command": "ls -l"}, tool_id="toolu_4",
                   input_tokens=41, output_tokens=12, cache_read_tokens=7),
            Script(text="fifth from gemini", input_tokens=51, output_tokens=4),
            Script(text="sixth via curl", input_tokens=61, output_tokens=2),
        ]
        run = capture("trace", "--raw", str(raw), "--no-open")
        client = subprocess.Popen([sys.executable, "-c", CLIENT, mock.base_url, mock.ca_file],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = client.communicate(timeout=120)
        assert client.returncode == 0, err.decode()
        curl = subprocess.Popen(
            ["curl", "-sS", "--http1.1", "--cacert", mock.ca_file, "-H", "content-type: application/json",
             "-H", f"authorization: Bearer {OPENAI_KEY}", "--data-binary",
             '{"model": "local-llama", "messages": [{"role": "user", "content": "six"}]}',
             mock.base_url + "/v1/chat/completions"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = curl.communicate(timeout=60)
        assert curl.returncode == 0, err
        events, stderr = run.stop()

    output = run.output.read_bytes()
    for secret in (OPENAI_KEY, ANTHROPIC_KEY, GEMINI_KEY):
        assert secret.encode() not in output
        assert secret.encode() not in raw.read_bytes()

    calls = [e for e in events if e["type"] == "llm_call" and e["pid"] in (client.pid, curl.pid)]
    assert [(c["api"], c["model"], c["stream"]) for c in calls] == [
        ("chat.completions", "gpt-4o-mini", False),
        ("chat.completions", "gpt-4o-mini", True),
        ("responses", "gpt-4.1", True),
        ("messages", "claude-sonnet-4-5", True),
        ("streamGenerateContent", "gemini-2.5-flash", True),
        ("chat.completions", "local-llama", False),
    ]
    assert all(c["status"] == 200 and not c.get("incomplete") for c in calls)
    assert [c["response"]["text"] for c in calls] == \
        ["first answer", "", "third answer, streamed", "fourth", "fifth from gemini", "sixth via curl"]
    assert [(c["usage"]["input_tokens"], c["usage"]["output_tokens"]) for c in calls] == \
        [(11, 3), (21, 9), (31, 5), (41, 12), (51, 4), (61, 2)]
    assert calls[3]["usage"]["cache_read_input_tokens"] == 7
    (weather,) = calls[1]["response"]["tool_calls"]
    assert (weather["id"], weather["name"], weather["arguments"]) == ("call_w1", "get_weather",
                                                                       {"city": "Paris", "unit": "C"})
    (run_tool,) = calls[3]["response"]["tool_calls"]
    assert (run_tool["name"], run_tool["arguments"]) == ("run", {"command": "ls -l"})
    for c in calls:
        assert c["started_ns"] <= c["ended_ns"]
        if c["stream"]:
            assert c["started_ns"] <= c["first_token_ns"] <= c["ended_ns"]
    assert {c["pid"] for c in calls[:5]} == {client.pid} and (calls[5]["pid"], calls[5]["comm"]) == (curl.pid, "curl")

    replayed = subprocess.run([sys.executable, "-m", "agentsight", "replay", str(raw)],
                              capture_output=True, cwd=REPO, timeout=120, check=True)
    replay_calls = [e for e in map(orjson.loads, replayed.stdout.splitlines())
                    if e["type"] == "llm_call" and e["pid"] in (client.pid, curl.pid)]
    assert replay_calls == calls
    all_live = [e for e in events if e["type"] == "llm_call"]
    all_replayed = [e for e in map(orjson.loads, replayed.stdout.splitlines()) if e["type"] == "llm_call"]
    assert json.dumps(all_replayed, sort_keys=True) == json.dumps(all_live, sort_keys=True)
