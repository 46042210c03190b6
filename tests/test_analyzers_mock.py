"""The mock LLM server speaks what the official SDKs accept, and the Pipeline
turns the mock's recorded plaintext into the same calls the SDKs saw."""
from __future__ import annotations

import json

import anthropic
import httpx2
import openai
import pytest

from llm_fixtures import JsonAnalysis, of_type
from llm_mock import LLMMock, Script

TOOL = {"city": "Paris", "units": ["C", "F"], "days": 3}


@pytest.fixture(scope="module")
def server():
    with LLMMock() as mock:
        yield mock


@pytest.fixture
def mock(server):
    server.script = Script()
    server.requests.clear()
    with server._recorder.lock:
        server._recorder.events.clear()
    return server


def calls_from(mock, **kw):
    p = JsonAnalysis(**kw)
    out = [o for e in mock.raw_events() for o in p.feed(e)] + p.close()
    assert p.stats.get("skipped.malformed_http", 0) == 0, p.stats
    for o in out:
        json.dumps(o)
    return of_type(out, "llm_call")


def oai(mock):
    return openai.OpenAI(base_url=mock.base_url + "/v1", api_key="sk-test-0123456789abcdefghij",
                         max_retries=0, http_client=httpx2.Client(verify=mock.ssl_context()))


def ant(mock):
    return anthropic.Anthropic(base_url=mock.base_url, api_key="sk-ant-test-0123456789abcdef",
                               max_retries=0, http_client=httpx2.Client(verify=mock.ssl_context()))


def test_mock_binds_loopback_only(mock):
    assert mock.base_url.startswith("https://127.0.0.1:")
    assert mock._server.server_address[0] == "127.0.0.1"


@pytest.mark.parametrize("encoding", [None, "gzip", "br", "deflate"])
def test_openai_chat_non_stream(mock, encoding):
    mock.script = Script(text="Bonjour.", tool_name="get_weather", tool_args=TOOL,
                         input_tokens=21, output_tokens=13, cache_read_tokens=5,
                         encoding=encoding)
    r = oai(mock).chat.completions.create(model="gpt-4o",
                                          messages=[{"role": "user", "content": "hi"}])
    msg = r.choices[0].message
    assert msg.content == "Bonjour."
    assert msg.tool_calls[0].function.name == "get_weather"
    assert json.loads(msg.tool_calls[0].function.arguments) == TOOL
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (21, 13)
    [call] = calls_from(mock)
    assert (call["provider"], call["api"], call["stream"], call["status"]) == (
        "unknown", "chat.completions", False, 200)
    assert call["response"]["text"] == "Bonjour."
    assert call["response"]["tool_calls"] == [{"id": "call_mock_1", "name": "get_weather",
                                               "arguments": TOOL}]
    assert call["usage"]["input_tokens"] == 21 and call["usage"]["cache_read_input_tokens"] == 5
    assert call["request"]["messages"] == [{"role": "user", "content": "hi"}]
    assert call["request_headers"]["authorization"] == "[REDACTED]"


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_chat_stream(mock, include_usage):
    mock.script = Script(text="Streaming words here.", tool_name="f", tool_args=TOOL, piece=2)
    kw = {"stream_options": {"include_usage": True}} if include_usage else {}
    chunks = list(oai(mock).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "go"}], stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices
                   for tc in c.choices[0].delta.tool_calls or ())
    assert text == "Streaming words here." and json.loads(args) == TOOL
    assert (chunks[-1].usage is not None) == include_usage
    [call] = calls_from(mock, provider_hosts={f"127.0.0.1:{mock.port}": "openai"})
    assert (call["provider"], call["stream"], call["model"]) == ("openai", True, "gpt-4o-mini")
    assert call["response"]["text"] == text
    assert call["response"]["tool_calls"][0]["arguments"] == TOOL
    assert call["response"]["stop_reason"] == "tool_calls"
    assert call["usage"] == ({"input_tokens": 12, "output_tokens": 7, "total_tokens": 19,
                              "cache_read_input_tokens": 0, "reasoning_tokens": 0}
                             if include_usage else {})
    assert call["started_ns"] <= call["first_token_ns"] <= call["ended_ns"]


def test_openai_responses(mock):
    mock.script = Script(text="Resp text.", tool_name="lookup", tool_args={"q": "x"},
                         input_tokens=5, output_tokens=4)
    client = oai(mock)
    r = client.responses.create(model="gpt-5", input="hello")
    assert r.output_text == "Resp text." and r.usage.output_tokens == 4
    with client.responses.stream(model="gpt-5", input="hello") as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == "Resp text." and final.output[1].name == "lookup"
    plain, streamed = calls_from(mock)
    for call in (plain, streamed):
        assert call["api"] == "responses"
        assert call["response"]["text"] == "Resp text."
        assert call["response"]["tool_calls"] == [{"id": "call_mock_1", "name": "lookup",
                                                   "arguments": {"q": "x"}}]
        assert call["usage"]["input_tokens"] == 5 and call["usage"]["output_tokens"] == 4
    assert (plain["stream"], streamed["stream"]) == (False, True)


def test_anthropic_messages(mock):
    mock.script = Script(text="Claude says hi.", tool_name="get_weather", tool_args=TOOL,
                         input_tokens=100, output_tokens=50, cache_read_tokens=80,
                         cache_creation_tokens=20)
    client = ant(mock)
    msgs = [{"role": "user", "content": "weather?"}]
    r = client.messages.create(model="claude-opus-4-1", max_tokens=256, messages=msgs)
    assert r.content[0].text == "Claude says hi." and r.content[1].input == TOOL
    with client.messages.stream(model="claude-opus-4-1", max_tokens=256, messages=msgs) as s:
        streamed_text = "".join(s.text_stream)
        final = s.get_final_message()
    assert streamed_text == "Claude says hi." and final.content[1].input == TOOL
    assert final.usage.output_tokens == 50 and final.stop_reason == "tool_use"
    calls = calls_from(mock, provider_hosts={"127.0.0.1": "anthropic"})
    assert [c["stream"] for c in calls] == [False, True]
    for call in calls:
        assert (call["provider"], call["api"], call["model"]) == (
            "anthropic", "messages", "claude-opus-4-1")
        assert call["response"]["text"] == "Claude says hi."
        assert call["response"]["tool_calls"] == [{"id": "toolu_mock_1", "name": "get_weather",
                                                   "arguments": TOOL}]
        assert call["usage"] == {"input_tokens": 100, "output_tokens": 50,
                                 "cache_creation_input_tokens": 20,
                                 "cache_read_input_tokens": 80}
        assert call["response"]["stop_reason"] == "tool_use"


def test_sdk_error_is_reported(mock):
    mock.script = Script(status=429, error_message="slow down")
    with pytest.raises(anthropic.RateLimitError):
        ant(mock).messages.create(model="claude-x", max_tokens=5,
                                  messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.RateLimitError):
        oai(mock).chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                     "content": "x"}])
    a, o = calls_from(mock)
    assert a["status"] == 429 and a["error"]["message"] == "slow down"
    assert a["error"]["type"] == "rate_limit_error"
    assert o["status"] == 429 and o["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize("encoding", [None, "zstd"])
def test_gemini_endpoints(mock, encoding):
    mock.script = Script(text="Gemini here.", tool_name="get_weather", tool_args=TOOL,
                         input_tokens=8, output_tokens=3, encoding=encoding)
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    with httpx2.Client(verify=mock.ssl_context()) as h:
        base = mock.base_url + "/v1beta/models/gemini-2.5-flash"
        r = h.post(base + ":generateContent", json=body, headers={"x-goog-api-key": "AIzaX"})
        r.raise_for_status()
        assert r.headers.get("content-encoding") == encoding
        content = r.content
        if content[:4] == b"\x28\xb5\x2f\xfd":  # a zstd frame: httpx2 decodes zstd only where it has a decoder
            import zstandard
            content = zstandard.ZstdDecompressor().decompress(content)
        parts = json.loads(content)["candidates"][0]["content"]["parts"]
        assert parts[0]["text"] == "Gemini here."
        with h.stream("POST", base + ":streamGenerateContent?alt=sse", json=body) as s:
            raw = b"".join(s.iter_bytes())
        assert raw.count(b"data: ") >= 4
    calls = calls_from(mock)
    assert [(c["provider"], c["api"], c["stream"]) for c in calls] == [
        ("unknown", "generateContent", False), ("unknown", "streamGenerateContent", True)]
    for call in calls:
        assert call["model"] == "gemini-2.5-flash"
        assert call["response"]["text"] == "Gemini here."
        assert call["response"]["tool_calls"] == [{"id": None, "name": "get_weather",
                                                   "arguments": TOOL}]
        assert call["usage"] == {"input_tokens": 8, "output_tokens": 3, "total_tokens": 11}


def test_concurrent_keep_alive_calls_on_several_connections(mock):
    import threading

    mock.script = Script(text="parallel")
    errors = []

    def worker(n):
        try:
            c = oai(mock)
            for _ in range(3):
                r = c.chat.completions.create(model=f"m{n}", messages=[{"role": "user",
                                                                        "content": str(n)}])
                assert r.choices[0].message.content == "parallel"
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    calls = calls_from(mock)
    assert len(calls) == 12
    assert sorted(c["model"] for c in calls) == sorted(f"m{n}" for n in range(4) for _ in range(3))
    assert len({c["conn"] for c in calls}) == 4
    assert all(c["response"]["text"] == "parallel" for c in calls)
