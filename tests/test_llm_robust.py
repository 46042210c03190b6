"""Provider bodies with fields of the wrong type: every call is still an
llm_call, and a call whose analysis fails anyway says what failed."""
from __future__ import annotations

import json
import random

import orjson
import pytest

from agentsight.analyzers.providers import anthropic as anthropic_provider
from fuzz_cases import (APIS, analyze, capture_of, confused_body, exchange_of, provider_body,
                        shape_problems)
from llm_fixtures import Capture, of_type, request, response, sse_response
from llm_mock import Script, anthropic_events, sse

ANT_REQ = {"model": "claude-sonnet-4-5", "max_tokens": 64, "stream": True,
           "messages": [{"role": "user", "content": "hi"}]}


def one_call(events):
    out, stats = analyze(events)
    calls = of_type(out, "llm_call")
    assert len(calls) == 1, (out, stats)
    orjson.dumps(calls[0])
    return calls[0], stats


def anthropic_stream(frames) -> list[dict]:
    c = Capture()
    c.send(request(body=ANT_REQ))
    c.recv(sse_response(sse(frames)))
    return c.events


def test_a_string_index_in_an_anthropic_stream_keeps_the_text():
    frames = anthropic_events(Script(text="Hello there, agent.", piece=4, tool_name="bash",
                                     tool_args={"cmd": "ls"}), "claude-sonnet-4-5")
    # one event says "0" where the others say 0
    start = next(d for n, d in frames if n == "content_block_start")
    start["index"] = str(start["index"])
    call, stats = one_call(anthropic_stream(frames))
    assert call["response"]["text"] == "Hello there, agent."
    assert call["response"]["tool_calls"] == [{"id": "toolu_mock_1", "name": "bash",
                                               "arguments": {"cmd": "ls"}}]
    assert "analysis_error" not in call and "errors.llm" not in stats


def check_shape(call) -> None:
    assert shape_problems(call) == []


@pytest.mark.parametrize("api", APIS)
def test_type_confused_bodies_of_every_api_always_give_one_well_formed_call(api):
    rnd = random.Random(api)
    for i in range(150):
        x = exchange_of(confused_body(api, rnd), rnd)
        call, stats = one_call(capture_of([x], rnd))
        assert "analysis_error" not in call, (i, call["analysis_error"])
        assert not [k for k in stats if k.startswith("errors.")], (i, stats)
        check_shape(call)


def test_a_merger_that_raises_mid_stream_still_gives_the_call_with_what_it_had(monkeypatch):
    real = anthropic_provider.AnthropicMerger.feed_sse
    seen = []

    def flaky(self, event, data):
        seen.append(event)
        if event == "content_block_delta" and len(seen) > 5:
            raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")
        return real(self, event, data)

    monkeypatch.setattr(anthropic_provider.AnthropicMerger, "feed_sse", flaky)
    frames = anthropic_events(Script(text="Hello there, agent.", piece=2, input_tokens=33),
                              "claude-sonnet-4-5")
    call, stats = one_call(anthropic_stream(frames))
    err = call["analysis_error"]
    assert err.startswith("anthropic merger: TypeError in AnthropicMerger.flaky (test_llm_robust.py:"), err
    assert err.endswith("unsupported operand type(s) for +: 'int' and 'str'")
    # what came before the failure is kept
    assert call["response"]["id"] == "msg_mock_1" and call["usage"]["input_tokens"] == 33
    assert (call["status"], call["model"], call["request"]) == (200, "claude-sonnet-4-5", ANT_REQ)
    assert stats["llm.analysis_errors"] == 1 and stats["errors.llm"] == 1


def test_a_merger_that_raises_at_the_end_still_gives_the_call(monkeypatch):
    def broken(self):
        raise AttributeError("'list' object has no attribute 'get'")

    monkeypatch.setattr(anthropic_provider.AnthropicMerger, "finish", broken)
    body = {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]}
    resp = {"id": "msg_9", "type": "message", "model": "claude-sonnet-4-5-20250929",
            "content": [{"type": "text", "text": "kept"}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 1}}
    c = Capture()
    c.send(request(body=body))
    c.recv(response(200, resp))
    call, stats = one_call(c.events)
    assert call["analysis_error"].startswith("anthropic merger: AttributeError in AnthropicMerger.broken")
    assert call["response"]["text"] == "kept" and call["response"]["stop_reason"] == "end_turn"
    assert call["usage"] == {"input_tokens": 3, "output_tokens": 1}
    assert stats["llm.analysis_errors"] == 1


def test_a_value_in_a_failure_message_is_not_repeated(monkeypatch):
    # ValueError and KeyError messages may quote the traffic (a key, a token)
    def leaky(self, event, data):
        raise KeyError("sk-ant-secret-value")

    monkeypatch.setattr(anthropic_provider.AnthropicMerger, "feed_sse", leaky)
    call, _ = one_call(anthropic_stream(anthropic_events(Script(), "claude-sonnet-4-5")))
    assert call["analysis_error"].startswith("anthropic merger: KeyError in AnthropicMerger.leaky")
    assert "secret" not in json.dumps(call)


def test_a_well_formed_body_of_every_api_has_no_analysis_error():
    rnd = random.Random(5)
    for api in APIS:
        call, stats = one_call(capture_of([exchange_of(provider_body(api, rnd), rnd)], rnd))
        assert "analysis_error" not in call and "llm.analysis_errors" not in stats
        check_shape(call)
