"""LLM call records from realistic provider payloads (plain and streamed)."""
from __future__ import annotations

import json

import orjson
import pytest

from agentsight.analyzers import REDACTED
from llm_fixtures import JsonAnalysis, Capture, cut, every, of_type, request, response, run, sse_response
from llm_mock import (Script, anthropic_events, anthropic_response, chat_events, chat_response,
                      gemini_chunks, gemini_response, responses_events, responses_response, sse)

ANTHROPIC_REQ = {"model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": True,
                 "messages": [{"role": "user", "content": "What's the weather in Paris?"}],
                 "tools": [{"name": "get_weather", "description": "Weather",
                            "input_schema": {"type": "object",
                                             "properties": {"city": {"type": "string"}}}}]}

# A stream as the Anthropic API sends it (text, then a tool_use built from input_json_delta)
ANTHROPIC_STREAM = (
    b'event: message_start\n'
    b'data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant",'
    b'"model":"claude-sonnet-4-5-20250929","content":[],"stop_reason":null,"stop_sequence":null,'
    b'"usage":{"input_tokens":472,"cache_creation_input_tokens":0,"cache_read_input_tokens":2048,'
    b'"output_tokens":2}}}\n\n'
    b'event: content_block_start\n'
    b'data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}\n\n'
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\n'
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Let me '
    b'check"}}\n\n'
    b'event: content_block_delta\n'
    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" \xc3\xa9t\xc3\xa9."}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
    b'event: content_block_start\n'
    b'data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use",'
    b'"id":"toolu_01A","name":"get_weather","input":{}}}\n\n'
    b'event: content_block_delta\n'
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":""}}\n\n'
    b'event: content_block_delta\n'
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":"{\\"city\\": \\"Pa"}}\n\n'
    b'event: content_block_delta\n'
    b'data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta",'
    b'"partial_json":"ris\\", \\"days\\": 3}"}}\n\n'
    b'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}\n\n'
    b'event: message_delta\n'
    b'data: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    b'"usage":{"output_tokens":89}}\n\n'
    b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
)


def call_of(out):
    calls = of_type(out, "llm_call")
    assert len(calls) == 1, out
    orjson.dumps(calls[0])
    return calls[0]


def capture(req: bytes, resp: bytes, resp_cuts=None) -> Capture:
    c = Capture()
    c.send(req)
    if resp_cuts is None:
        c.recv(resp)
    else:
        c.recv_pieces(resp, resp_cuts)
    return c


# -- Anthropic ------------------------------------------------------------------------------
def test_anthropic_stream_tool_use():
    resp = sse_response(cut(ANTHROPIC_STREAM, every(300, len(ANTHROPIC_STREAM))))
    c = capture(request(body=ANTHROPIC_REQ, headers={"x-api-key": "sk-ant-api03-SECRETSECRET"}),
                resp, every(97, len(resp)))
    call = call_of(run(c.events)[0])
    assert (call["provider"], call["api"], call["model"], call["stream"], call["status"]) == (
        "anthropic", "messages", "claude-sonnet-4-5", True, 200)
    assert call["response"]["text"] == "Let me check été."
    assert call["response"]["tool_calls"] == [
        {"id": "toolu_01A", "name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]
    assert call["response"]["stop_reason"] == "tool_use"
    assert call["response"]["model"] == "claude-sonnet-4-5-20250929"
    assert call["usage"] == {"input_tokens": 472, "output_tokens": 89,
                             "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2048}
    assert call["request"]["tools"][0]["name"] == "get_weather"
    assert call["request_headers"]["x-api-key"] == REDACTED
    assert call["started_ns"] < call["first_token_ns"] < call["ended_ns"]
    assert "incomplete" not in call and "error" not in call


def test_anthropic_stream_split_at_every_byte():
    s = Script(text="Hi é!", tool_name="f", tool_args={"a": [1, 2]}, piece=2)
    body = b"".join(sse(anthropic_events(s, "claude-x")))
    resp = sse_response([body])
    req = request(body=dict(ANTHROPIC_REQ, model="claude-x"))
    head = len(resp) - len(body) - len(b"0\r\n\r\n") - 2
    # the ts of the read that completes the first text delta
    first_delta_end = resp.index(b'"text_delta","text":"Hi"}}\n\n') + 28
    for k in range(head, len(resp)):
        c = capture(req, resp, [k])
        call = call_of(run(c.events)[0])
        assert call["response"]["text"] == "Hi é!", k
        assert call["response"]["tool_calls"] == [{"id": "toolu_mock_1", "name": "f",
                                                   "arguments": {"a": [1, 2]}}]
        assert call["usage"]["output_tokens"] == 7 and call["usage"]["input_tokens"] == 12
        expected_first = c.events[1]["ts"] if k >= first_delta_end else c.events[2]["ts"]
        assert call["first_token_ns"] == expected_first, k


def test_anthropic_non_stream_with_cache_usage():
    s = Script(text="Answer.", tool_name="search", tool_args={"q": "x"}, cache_read_tokens=100,
               cache_creation_tokens=50, input_tokens=3, output_tokens=9)
    req = dict(ANTHROPIC_REQ, stream=False)
    c = capture(request(body=req), response(200, anthropic_response(s, "claude-x")))
    call = call_of(run(c.events)[0])
    assert call["stream"] is False and call["first_token_ns"] is None
    assert call["response"]["text"] == "Answer."
    assert call["response"]["tool_calls"] == [{"id": "toolu_mock_1", "name": "search",
                                               "arguments": {"q": "x"}}]
    assert call["response"]["stop_reason"] == "tool_use"
    assert call["usage"] == {"input_tokens": 3, "output_tokens": 9,
                             "cache_creation_input_tokens": 50, "cache_read_input_tokens": 100}


def test_anthropic_thinking_blocks():
    body = b"".join(sse([
        ("message_start", {"type": "message_start", "message": {"id": "m", "model": "c",
                                                                "usage": {"input_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "thinking", "thinking": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "signature_delta", "signature": "abc"}}),
        ("content_block_start", {"type": "content_block_start", "index": 1,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 1,
                                 "delta": {"type": "text_delta", "text": "42"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": {"output_tokens": 5}}),
    ]))
    call = call_of(run(capture(request(body=ANTHROPIC_REQ), sse_response([body])).events)[0])
    assert call["response"]["thinking"] == "hmm" and call["response"]["text"] == "42"


def test_anthropic_error_response():
    err = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    c = capture(request(body=ANTHROPIC_REQ), response(529, err, reason="Overloaded"))
    call = call_of(run(c.events)[0])
    assert call["status"] == 529
    assert call["error"] == {"status": 529, "type": "overloaded_error", "message": "Overloaded"}


def test_anthropic_error_event_mid_stream():
    body = ANTHROPIC_STREAM[:ANTHROPIC_STREAM.index(b"event: content_block_stop")] + (
        b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
        b'"message":"Overloaded"}}\n\n')
    call = call_of(run(capture(request(body=ANTHROPIC_REQ), sse_response([body])).events)[0])
    assert call["response"]["text"] == "Let me check été."
    assert call["error"]["type"] == "overloaded_error"


def test_anthropic_process_exit_mid_stream_is_incomplete_with_partial_text():
    c = Capture()
    c.send(request(body=ANTHROPIC_REQ))
    full = sse_response([ANTHROPIC_STREAM])
    c.recv(full[: full.index(b"event: content_block_stop")])
    c.exit()
    out, p = run(c.events)
    call = call_of(out)
    assert call["incomplete"] is True and call["incomplete_reason"] == "process_exit"
    assert call["error"]["type"] == "connection"
    assert call["response"]["text"] == "Let me check été."
    assert call["usage"]["input_tokens"] == 472
    assert out[-1]["type"] == "exit"
    assert p.stats["llm.incomplete"] == 1


def test_truncated_stream_capture_is_incomplete_but_keeps_what_it_can():
    full = sse_response([ANTHROPIC_STREAM])
    i = full.index(b"Let me")
    c = Capture()
    c.send(request(body=ANTHROPIC_REQ))
    c.recv(full[:i], truncated=20)
    c.recv(full[i + 20:])
    call = call_of(run(c.events)[0])
    assert call["incomplete_reason"] == "truncated"
    assert call["response"]["text"] == " été."  # the first delta was lost
    assert call["response"]["tool_calls"][0]["arguments"] == {"city": "Paris", "days": 3}
    assert call["usage"]["output_tokens"] == 89


# -- OpenAI Chat Completions ------------------------------------------------------------------------
CHAT_REQ = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "stream_options": {"include_usage": True}}


def chat_req(body=CHAT_REQ, host="api.openai.com", path="/v1/chat/completions", **kw) -> bytes:
    return request("POST", path, host, body=body, **kw)


def test_openai_chat_stream_parallel_tool_calls_and_usage():
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-2024-08-06", "usage": None}

    def ch(delta, finish=None):
        return dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])

    events = [
        (None, ch({"role": "assistant", "content": None})),
        (None, ch({"tool_calls": [{"index": 0, "id": "call_A", "type": "function",
                                   "function": {"name": "get_weather", "arguments": ""}}]})),
        (None, ch({"tool_calls": [{"index": 0, "function": {"arguments": "{\"ci"}}]})),
        (None, ch({"tool_calls": [{"index": 1, "id": "call_B", "type": "function",
                                   "function": {"name": "get_time", "arguments": "{\"tz\":"}}]})),
        (None, ch({"tool_calls": [{"index": 0, "function": {"arguments": "ty\": \"Oslo\"}"}}]})),
        (None, ch({"tool_calls": [{"index": 1, "function": {"arguments": " \"CET\"}"}}]})),
        (None, ch({}, "tool_calls")),
        (None, dict(base, choices=[], usage={
            "prompt_tokens": 80, "completion_tokens": 40, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64},
            "completion_tokens_details": {"reasoning_tokens": 0}})),
        (None, "[DONE]"),
    ]
    resp = sse_response(sse(events))
    c = capture(chat_req(headers={"Authorization": "Bearer sk-proj-abcdefghijklmnopqrstuvwx"}),
                resp, every(61, len(resp)))
    call = call_of(run(c.events)[0])
    assert (call["provider"], call["api"], call["model"], call["stream"]) == (
        "openai", "chat.completions", "gpt-4o", True)
    assert call["response"]["text"] == ""
    assert call["response"]["tool_calls"] == [
        {"id": "call_A", "name": "get_weather", "arguments": {"city": "Oslo"}},
        {"id": "call_B", "name": "get_time", "arguments": {"tz": "CET"}}]
    assert call["response"]["stop_reason"] == "tool_calls"
    assert call["usage"] == {"input_tokens": 80, "output_tokens": 40, "total_tokens": 120,
                             "cache_read_input_tokens": 64, "reasoning_tokens": 0}
    assert call["request_headers"]["authorization"] == REDACTED
    assert call["first_token_ns"] is not None


@pytest.mark.parametrize("cuts", [None, "every_byte"])
def test_openai_compatible_reasoning_deltas_beside_content(cuts):
    """vLLM, DeepSeek and Ollama send the reasoning in the same delta as
    the text, or alone: both kinds of text are kept, whole reads or not."""
    base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "model": "deepseek-r1"}

    def ch(delta, finish=None):
        return dict(base, choices=[{"index": 0, "delta": delta, "finish_reason": finish}])

    events = [(None, ch({"role": "assistant", "reasoning_content": "think"})),
              (None, ch({"reasoning_content": "ing", "content": "An"})),
              (None, ch({"content": "swer", "reasoning": "!"})),
              (None, ch({}, "stop")), (None, "[DONE]")]
    resp = sse_response(sse(events))
    c = capture(chat_req(), resp, None if cuts is None else every(1, len(resp)))
    call = call_of(run(c.events)[0])
    assert call["response"]["text"] == "Answer" and call["response"]["thinking"] == "thinking!"
    assert call["response"]["stop_reason"] == "stop" and call["response"]["model"] == "deepseek-r1"


@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_chat_stream_text(include_usage):
    s = Script(text="The quick brown fox.", piece=4, input_tokens=20, output_tokens=6)
    body = dict(CHAT_REQ, stream_options={"include_usage": include_usage})
    resp = sse_response(sse(chat_events(s, "gpt-4o", include_usage)))
    c = capture(chat_req(body), resp, every(13, len(resp)))
    call = call_of(run(c.events)[0])
    assert call["response"]["text"] == "The quick brown fox."
    assert call["response"]["stop_reason"] == "stop"
    if include_usage:
        assert call["usage"]["input_tokens"] == 20 and call["usage"]["output_tokens"] == 6
    else:
        assert call["usage"] == {}


def test_openai_chat_non_stream_tool_call():
    s = Script(text="", tool_name="lookup", tool_args={"id": 7, "deep": True})
    c = capture(chat_req(dict(CHAT_REQ, stream=False)), response(200, chat_response(s, "gpt-4o")))
    call = call_of(run(c.events)[0])
    assert call["stream"] is False
    assert call["response"]["tool_calls"] == [{"id": "call_mock_1", "name": "lookup",
                                               "arguments": {"id": 7, "deep": True}}]
    assert call["usage"]["input_tokens"] == 12 and call["usage"]["total_tokens"] == 19


def test_openai_error_response():
    err = {"error": {"message": "Rate limit reached", "type": "requests", "param": None,
                     "code": "rate_limit_exceeded"}}
    c = capture(chat_req(), response(429, err, reason="Too Many Requests"))
    call = call_of(run(c.events)[0])
    assert call["error"] == {"status": 429, "type": "requests", "code": "rate_limit_exceeded",
                             "message": "Rate limit reached"}


@pytest.mark.parametrize("host", ["localhost:8000", "vllm.internal", "127.0.0.1:11434",
                                  "litellm.corp.example:4000"])
def test_openai_compatible_servers_are_provider_unknown(host):
    s = Script(text="local model says hi")
    resp = sse_response(sse(chat_events(s, "qwen2.5", True)))
    c = capture(chat_req(dict(CHAT_REQ, model="qwen2.5"), host=host), resp)
    call = call_of(run(c.events)[0])
    assert (call["provider"], call["api"], call["model"]) == ("unknown", "chat.completions",
                                                              "qwen2.5")
    assert call["response"]["text"] == "local model says hi"
    assert call["host"] == host.split(":")[0]


def test_provider_hosts_override():
    s = Script(text="mocked")
    c = capture(request(body=dict(ANTHROPIC_REQ, stream=False), host="127.0.0.1:8443"),
                response(200, anthropic_response(s, "claude-x")))
    call = call_of(run(c.events, provider_hosts={"127.0.0.1:8443": "anthropic"})[0])
    assert call["provider"] == "anthropic" and call["response"]["text"] == "mocked"


def test_same_path_but_not_an_llm_body_is_plain_http():
    c = capture(chat_req({"hello": "world"}, host="example.org"), response(200, {"ok": True}))
    out, _ = run(c.events)
    assert of_type(out, "llm_call") == []
    assert of_type(out, "http")[0]["path"] == "/v1/chat/completions"


def test_many_keep_alive_calls_on_one_connection():
    c = Capture()
    for i in range(20):
        s = Script(text=f"answer {i}", output_tokens=i + 1)
        if i % 2:
            c.send(chat_req())
            resp = sse_response(sse(chat_events(s, "gpt-4o", True)))
        else:
            c.send(chat_req(dict(CHAT_REQ, stream=False)))
            resp = response(200, chat_response(s, "gpt-4o"))
        c.recv_pieces(resp, every(50 + i, len(resp)))
    calls = of_type(run(c.events)[0], "llm_call")
    assert [x["response"]["text"] for x in calls] == [f"answer {i}" for i in range(20)]
    assert [x["usage"]["output_tokens"] for x in calls] == list(range(1, 21))
    assert [x["stream"] for x in calls] == [bool(i % 2) for i in range(20)]


# -- OpenAI Responses ------------------------------------------------------------------------------
RESP_REQ = {"model": "gpt-5", "input": "Weather?", "stream": True,
            "tools": [{"type": "function", "name": "get_weather", "parameters": {}}]}


def test_openai_responses_stream_text_and_function_call():
    s = Script(text="Checking.", tool_name="get_weather", tool_args={"city": "Rome"},
               tool_id="call_R1", input_tokens=30, output_tokens=15, cache_read_tokens=10)
    resp = sse_response(sse(responses_events(s, "gpt-5")))
    c = capture(request("POST", "/v1/responses", "api.openai.com", body=RESP_REQ), resp,
                every(77, len(resp)))
    call = call_of(run(c.events)[0])
    assert (call["provider"], call["api"], call["stream"]) == ("openai", "responses", True)
    assert call["response"]["text"] == "Checking."
    assert call["response"]["tool_calls"] == [
        {"id": "call_R1", "name": "get_weather", "arguments": {"city": "Rome"}}]
    assert call["response"]["stop_reason"] == "completed"
    assert call["usage"] == {"input_tokens": 30, "output_tokens": 15, "total_tokens": 45,
                             "cache_read_input_tokens": 10, "reasoning_tokens": 0}


def test_openai_responses_stream_cut_before_completed_uses_deltas():
    s = Script(text="Partial answer", tool_name="f", tool_args={"x": 1})
    frames = sse(responses_events(s, "gpt-5"))[:-1]  # no response.completed
    resp = sse_response(frames)
    c = Capture()
    c.send(request("POST", "/v1/responses", "api.openai.com", body=RESP_REQ))
    c.recv(resp[:-5])  # the terminating chunk never arrives
    out, _ = run(c.events)
    call = call_of(out)
    assert call["incomplete_reason"] == "end_of_capture"
    assert call["response"]["text"] == "Partial answer"
    assert call["response"]["tool_calls"] == [{"id": "call_mock_1", "name": "f",
                                               "arguments": {"x": 1}}]


def test_openai_responses_non_stream():
    s = Script(text="Plain.", output_tokens=2)
    c = capture(request("POST", "/v1/responses", "api.openai.com",
                        body=dict(RESP_REQ, stream=False)),
                response(200, responses_response(s, "gpt-5")))
    call = call_of(run(c.events)[0])
    assert call["response"]["text"] == "Plain." and call["usage"]["output_tokens"] == 2
    assert call["stream"] is False


# -- Gemini -------------------------------------------------------------------------------------------
GEM_REQ = {"contents": [{"role": "user", "parts": [{"text": "Weather in Lima?"}]}],
           "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]}
GEM_HOST = "generativelanguage.googleapis.com"


def test_gemini_generate_content_with_function_call_and_key_in_url():
    s = Script(text="Let me look.", tool_name="get_weather", tool_args={"city": "Lima"},
               input_tokens=40, output_tokens=11, cache_read_tokens=8)
    key = "AIzaSyA-0123456789abcdefghijklmnopqrstu"
    c = capture(request("POST", f"/v1beta/models/gemini-2.5-flash:generateContent?key={key}",
                        GEM_HOST, body=GEM_REQ),
                response(200, gemini_response(s, "gemini-2.5-flash")))
    call = call_of(run(c.events)[0])
    assert (call["provider"], call["api"], call["model"], call["stream"]) == (
        "gemini", "generateContent", "gemini-2.5-flash", False)
    assert call["response"]["text"] == "Let me look."
    assert call["response"]["tool_calls"] == [{"id": None, "name": "get_weather",
                                               "arguments": {"city": "Lima"}}]
    assert call["response"]["stop_reason"] == "STOP"
    assert call["usage"] == {"input_tokens": 40, "output_tokens": 11, "total_tokens": 51,
                             "cache_read_input_tokens": 8}
    assert key not in json.dumps(call)
    assert call["path"] == f"/v1beta/models/gemini-2.5-flash:generateContent?key={REDACTED}"


def test_gemini_stream_sse_crlf():
    s = Script(text="Sunny and warm in Lima.", piece=5, tool_name="get_weather",
               tool_args={"city": "Lima"}, input_tokens=9, output_tokens=6)
    frames = sse([(None, ch) for ch in gemini_chunks(s, "gemini-2.5-pro")], crlf=True)
    resp = sse_response(frames)
    c = capture(request("POST", "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
                        GEM_HOST, body=GEM_REQ, headers={"x-goog-api-key": "AIzaSyB" + "x" * 32}),
                resp, every(33, len(resp)))
    call = call_of(run(c.events)[0])
    assert (call["api"], call["stream"], call["model"]) == ("streamGenerateContent", True,
                                                            "gemini-2.5-pro")
    assert call["response"]["text"] == "Sunny and warm in Lima."
    assert call["response"]["tool_calls"][0]["arguments"] == {"city": "Lima"}
    assert call["usage"] == {"input_tokens": 9, "output_tokens": 6, "total_tokens": 15}
    assert call["request_headers"]["x-goog-api-key"] == REDACTED
    assert call["first_token_ns"] is not None


def test_gemini_stream_json_array_without_alt_sse():
    s = Script(text="Array mode.", piece=4)
    body = json.dumps(gemini_chunks(s, "gemini-2.0-flash")).encode()
    resp = response(200, chunks=cut(body, every(40, len(body))))
    c = capture(request("POST", "/v1beta/models/gemini-2.0-flash:streamGenerateContent",
                        GEM_HOST, body=GEM_REQ), resp, every(64, len(resp)))
    call = call_of(run(c.events)[0])
    assert call["response"]["text"] == "Array mode." and call["usage"]["output_tokens"] == 7


def test_gemini_error_and_vertex_host():
    err = {"error": {"code": 400, "message": "API key not valid.", "status": "INVALID_ARGUMENT"}}
    path = "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent"
    c = capture(request("POST", path, "us-central1-aiplatform.googleapis.com", body=GEM_REQ),
                response(400, err, reason="Bad Request"))
    call = call_of(run(c.events)[0])
    assert call["provider"] == "gemini" and call["model"] == "gemini-2.0-flash"
    assert call["error"] == {"status": 400, "code": 400, "message": "API key not valid.",
                             "type": "INVALID_ARGUMENT"}


# -- redaction --------------------------------------------------------------------------------------
def test_redaction_of_bodies_headers_and_urls():
    body = {"model": "gpt-4o", "api_key": "whatever-secret",
            "messages": [{"role": "user",
                          "content": "my key is sk-proj-AAAAAAAAAAAAAAAAAAAAAAAA and "
                                     "Bearer abcdefghijklmnop, anthropic sk-ant-api03-XYZXYZXYZXYZ"}]}
    resp_body = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                      "content": "echo sk-ABCDEFGHIJKLMNOPQRSTUV"},
                              "finish_reason": "stop"}]}
    req = chat_req(body, path="/v1/chat/completions?api_key=sk-zzzzzzzzzzzzzzzzzzzzz&x=1",
                   headers={"Cookie": "session=abc", "Authorization": "Bearer sk-abc"})
    resp = response(200, resp_body, headers={"Set-Cookie": "sid=123; HttpOnly"})
    c = capture(req, resp)
    call = call_of(run(c.events)[0])
    text = json.dumps(call)
    for secret in ("sk-proj-AAAA", "abcdefghijklmnop", "sk-ant-api03", "whatever-secret",
                   "sk-zzzz", "session=abc", "sid=123", "sk-ABCDEFGHIJ"):
        assert secret not in text, secret
    assert call["request"]["api_key"] == REDACTED
    assert call["path"] == f"/v1/chat/completions?api_key={REDACTED}&x=1"
    assert call["request_headers"]["cookie"] == REDACTED
    assert call["response_headers"]["set-cookie"] == REDACTED
    assert call["request"]["messages"][0]["content"].startswith(f"my key is {REDACTED} and Bearer")
    # and redaction can be turned off
    raw = call_of(run(c.events, redact=False)[0])
    assert raw["request"]["api_key"] == "whatever-secret"


def test_http_event_path_is_redacted():
    c = capture(request("GET", "/maps?key=AIzaSyC0123456789012345678901234567890&z=1",
                        "maps.example.com"), response(200, b"{}"))
    h = of_type(run(c.events)[0], "http")[0]
    assert h["path"] == f"/maps?key={REDACTED}&z=1"


def test_pipeline_outputs_in_order_with_process_events():
    s = Script(text="x")
    c = Capture()
    c.events.append({"type": "exec", "ts": c.ts, "pid": c.pid, "tid": c.pid, "comm": "agent",
                     "uid": 0, "filename": "/usr/bin/python3", "argv": ["python3"],
                     "argv_truncated": False, "ppid": 1})
    c.send(chat_req(dict(CHAT_REQ, stream=False)))
    c.recv(response(200, chat_response(s, "gpt-4o")))
    c.exit()
    out, _ = run(c.events)
    assert [o["type"] for o in out] == ["exec", "llm_call", "exit"]
    assert JsonAnalysis().stats == {}
