"""The embeddable API: agentsight.Capture, analyze() and read_events()."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading

import orjson
import pytest

import agentsight
from llm_fixtures import Capture as RawEvents
from llm_fixtures import request, response


def test_public_surface_is_what_all_says():
    for name in agentsight.__all__:
        assert hasattr(agentsight, name), name
    assert {"Capture", "analyze", "read_events", "LlmCall", "TlsData", "AgentsightError"} <= set(agentsight.__all__)


def test_analyze_gives_raw_events_then_what_they_mean_with_secrets_masked(tmp_path):
    raw = RawEvents()
    raw.send(request("POST", "/v1/messages", "api.anthropic.com", headers={"x-api-key": "sk-ant-api03-apitest0123"},
                     body={"model": "claude-x", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
    raw.recv(response(200, {"id": "m", "model": "claude-x", "type": "message", "stop_reason": "end_turn",
                            "content": [{"type": "text", "text": "hello"}],
                            "usage": {"input_tokens": 3, "output_tokens": 1}}))
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in raw.events) + b"not json\n")
    events = list(agentsight.analyze(agentsight.read_events(str(path))))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["TlsData", "TlsData", "LlmCall"]
    call = events[2]
    assert (call.model, call.response.text, call.usage["output_tokens"]) == ("claude-x", "hello", 1)
    assert call.request_headers["x-api-key"] == agentsight.analyzers.REDACTED
    assert b"sk-ant-api03-apitest0123" not in events[0].data and b"x-api-key: ****" in events[0].data
    unmasked = list(agentsight.analyze(raw.events, redact=False))
    assert b"sk-ant-api03-apitest0123" in unmasked[0].data


def test_bad_parameters_name_the_parameter():
    with pytest.raises(agentsight.AgentsightError, match="ring_size must be a power of two"):
        agentsight.Capture(ring_size=3 << 20)
    with pytest.raises(agentsight.AgentsightError, match="collectors must be some of"):
        agentsight.Capture(collectors=("gpu",))
    with pytest.raises(agentsight.AgentsightError, match="max_capture must be between"):
        agentsight.Capture(max_capture=0)


@pytest.mark.bpf
def test_capture_in_a_program_of_ones_own(https_server):
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    interval = sys.getswitchinterval()
    seen: list[object] = []
    with agentsight.Capture(comm="curl") as capture:
        def client():
            subprocess.run(["curl", "-sS", "--http1.1", "--cacert", str(https_server.cert), "--data-binary",
                            "from-the-api", https_server.url + "/echo"], capture_output=True, timeout=60)

        t = threading.Thread(target=client)
        t.start()
        for event in capture.events():
            seen.append(event)
            if isinstance(event, agentsight.Exit) and event.comm == "curl":
                capture.stop()
        t.join()
    assert {s: signal.getsignal(s) for s in handlers} == handlers and sys.getswitchinterval() == interval
    exchanges = [e for e in seen if isinstance(e, agentsight.HttpExchange)]
    assert [(e.method, e.path, e.status) for e in exchanges] == [("POST", "/echo", 200)]
    sent = b"".join(e.data for e in seen if isinstance(e, agentsight.TlsData) and e.dir == "send")
    assert sent.endswith(b"from-the-api")
    assert capture.outcome is not None and capture.outcome.counts.get("exec", 0) >= 1
