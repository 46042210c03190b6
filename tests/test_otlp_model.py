"""The OpenTelemetry trace model over hand-built events (no BPF, no
backend): where spans go when links come late, trace windows, content in
the conventions' form for each API, redaction, and an export queue that
never makes the capture wait."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest

from agentsight.events import Exec, Exit, FileKey, Fork, Link, LlmCall, LlmResponse, ProcessKey, ToolCall, ToolCallRef
from agentsight.events import Unexplained
from agentsight.sinks.otlp import ExportWorker, OtlpOptions, OtlpSink
from agentsight.sinks.otlp_spans import SpanData, TraceBuilder, agent_name, container_id
from support import REPO

S = 1_000_000_000
T0 = 1_760_000_000 * S


def call(pid, start, end, tools=(), *, api="messages", provider="anthropic", model="claude-x", request=None,
         usage=None, status=200, error=None, stream=True, text="ok", host="api.anthropic.com"):
    return LlmCall(
        ts=end, provider=provider, api=api, model=model, stream=stream, status=status, method="POST", host=host,
        path="/v1/messages", request=request if request is not None else {"model": model, "messages": []},
        request_headers={"host": host}, response_headers={},
        response=LlmResponse(text=text, tool_calls=[ToolCall(*t) for t in tools],
                             stop_reason="tool_use" if tools else "end_turn", model=model, id="resp_1"),
        usage=usage if usage is not None else {"input_tokens": 10, "output_tokens": 5}, started_ns=start,
        first_token_ns=start + S // 10 if stream else None, ended_ns=end, pid=pid, tid=pid, comm="agent", conn=1,
        side="client", error=error)


def exec_(ts, pid, ppid, argv, filename=None):
    return Exec(ts, pid, pid, argv[0].rsplit("/", 1)[-1][:15], 1000, ppid=ppid, filename=filename or argv[0],
                argv=argv, cwd="/work")


def run(builder, events, *, clock=None):
    """Feeds events one second of monotonic time apart (or at `clock(i)`);
    every span made, with due() called after each event."""
    out = []
    for i, ev in enumerate(events):
        now = float(i) if clock is None else clock(i)
        out += builder.feed(ev, now)
        out += builder.due(now)
    return out


def tree(spans):
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans)
    return by_id


def agent_run(tool_cmd="echo hi > /tmp/out"):
    """An agent (pid 100) whose first call asks for a tool that runs `sh`,
    which writes a file; then a second call; then it exits."""
    ref = ToolCallRef(100, T0 + S, 0, "toolu_1")
    events = [
        exec_(T0, 100, 1, ["/usr/bin/python3", "agent.py"]),
        call(100, T0 + S, T0 + 2 * S, [("toolu_1", "bash", {"command": tool_cmd})]),
        Fork(T0 + 3 * S, 100, 100, "python3", 1000, child_pid=101),
        exec_(T0 + 3 * S + 1, 101, 100, ["/bin/sh", "-c", tool_cmd]),
        Exit(T0 + 4 * S, 101, 101, "sh", 1000, exit_code=0, ppid=100),
        call(100, T0 + 5 * S, T0 + 6 * S),
        Exit(T0 + 9 * S, 100, 100, "python3", 1000, exit_code=0, ppid=1),
    ]
    links = [Link(T0 + 3 * S + 1, ref, ProcessKey(101, T0 + 3 * S), {"arguments": "argv is arguments.command"}),
             Link(T0 + 3 * S + 5, ref, FileKey(101, T0 + 3 * S + 5, "write", "/tmp/out"), {"process": "by pid 101"})]
    return events, links


def test_links_at_the_end_build_the_whole_tree():
    """As `record` and `export` get them: every link when the run ends."""
    events, links = agent_run()
    b = TraceBuilder(mode="record", roots=lambda: {100})
    spans = run(b, events + links) + b.close(T0 + 10 * S)
    by_id = tree(spans)
    names = sorted(s.name for s in spans)
    assert names == ["chat claude-x", "chat claude-x", "execute_tool bash", "invoke_agent agent.py", "process sh"]
    assert len({s.trace_id for s in spans}) == 1
    sh = next(s for s in spans if s.name == "process sh")
    tool = by_id[sh.parent_id]
    chat = by_id[tool.parent_id]
    root = by_id[chat.parent_id]
    assert tool.name == "execute_tool bash" and chat.name == "chat claude-x" and root.parent_id is None
    assert [(e.name, e.attributes["file.path"]) for e in sh.events] == [("file.write", "/tmp/out")]
    assert (tool.start_ns, tool.end_ns) == (T0 + 2 * S, T0 + 5 * S)  # from the answer to the next call
    assert (sh.start_ns, sh.end_ns) == (T0 + 3 * S + 1, T0 + 4 * S)
    assert sh.attributes["agentsight.link.evidence.arguments"] == "argv is arguments.command"
    assert (root.start_ns, root.end_ns) == (T0, T0 + 9 * S)
    assert root.attributes["agentsight.trace.end_reason"] == "the agent exited"


def test_links_after_the_tool_span_went_out_still_land_under_it():
    events, links = agent_run()
    b = TraceBuilder(mode="record", roots=lambda: {100}, settle=0.5)
    spans = run(b, events)  # a second between events: the tool call settles before any link
    assert "execute_tool bash" in [s.name for s in spans]
    spans += b.feed(links[0], 100.0) + b.due(200.0)  # the process span goes out...
    spans += b.feed(links[1], 300.0) + b.close(T0 + 10 * S)  # ...before the file change it made is linked
    by_id = tree(spans)
    sh = next(s for s in spans if s.name == "process sh")
    assert by_id[sh.parent_id].name == "execute_tool bash"
    # The file change came after its carrier span went out: a zero-length span of its own, under it.
    late = [s for s in spans if s.name == "file write"]
    assert len(late) == 1 and late[0].start_ns == late[0].end_ns == T0 + 3 * S + 5
    assert by_id[late[0].parent_id].name in ("process sh", "execute_tool bash")
    assert b.stats["late_file_spans"] == 1


def test_links_before_the_process_exits_wait_for_it():
    """As an incremental correlator may send them: the link at exec time."""
    events, links = agent_run()
    order = events[:4] + links + events[4:]
    b = TraceBuilder(mode="record", roots=lambda: {100}, settle=0.5)
    spans = run(b, order) + b.close(T0 + 10 * S)
    sh = next(s for s in spans if s.name == "process sh")
    assert sh.end_ns == T0 + 4 * S and [e.name for e in sh.events] == ["file.write"]
    assert not b.stats["late_file_spans"]


def test_unexplained_processes_are_flagged_under_the_agent():
    b = TraceBuilder(mode="record", roots=lambda: {100})
    events = [
        exec_(T0, 100, 1, ["node", "/usr/bin/claude", "-p", "hi"]),
        call(100, T0 + S, T0 + 2 * S),
        Fork(T0 + 3 * S, 100, 100, "node", 1000, child_pid=102),
        exec_(T0 + 3 * S + 1, 102, 100, ["curl", "-H", "authorization: Bearer sk-proj-secret0123456789abcdefgh",
                                         "http://example.test"]),
        Exit(T0 + 4 * S, 102, 102, "curl", 1000, exit_code=6, ppid=100),
        Unexplained(T0 + 3 * S + 1, ProcessKey(102, T0 + 3 * S), "no tool call explains it"),
        Unexplained(T0 + 3 * S + 2, FileKey(100, T0 + 3 * S + 2, "unlink", "/home/u/.bashrc"),
                    "no tool call explains it"),
    ]
    spans = run(b, events) + b.close(T0 + 5 * S)
    by_id = tree(spans)
    curl = next(s for s in spans if s.name == "process curl")
    root = by_id[curl.parent_id]
    assert root.name == "invoke_agent claude"  # node running /usr/bin/claude
    assert curl.attributes["agentsight.unexplained"] is True
    assert curl.attributes["process.exit.code"] == 6
    assert "sk-proj-secret0123456789abcdefgh" not in json.dumps(curl.attributes)  # argv masked
    assert [(e.name, e.attributes["file.path"], e.attributes["agentsight.unexplained"]) for e in root.events] == [
        ("file.unlink", "/home/u/.bashrc", True)]
    assert root.attributes["agentsight.unexplained.processes"] == 1


def test_trace_mode_windows_end_on_exit_and_on_quiet():
    wall = [T0]
    b = TraceBuilder(mode="trace", wall_clock=lambda: wall[0], settle=0.1, idle=60, window=600)
    spans = run(b, [exec_(T0, 200, 1, ["aider"]), call(200, T0 + S, T0 + 2 * S)])
    assert [s.name for s in spans] == ["chat claude-x"]
    wall[0] = T0 + 100 * S  # 98 s without a call: the trace ends
    spans += b.due(10.0) + b.due(20.0)
    root = next(s for s in spans if s.name.startswith("invoke_agent"))
    assert root.name == "invoke_agent aider" and root.end_ns == T0 + 2 * S
    assert root.attributes["agentsight.trace.end_reason"] == "no LLM call for a while"
    # The same agent again: a new trace, the same agent.
    later = b.feed(call(200, T0 + 101 * S, T0 + 102 * S), 30.0)
    later += b.feed(Exit(T0 + 103 * S, 200, 200, "aider", 1000, exit_code=0, ppid=1), 31.0) + b.due(40.0)
    assert {s.trace_id for s in later} != {root.trace_id} and len({s.trace_id for s in later}) == 1
    again = next(s for s in later if s.name.startswith("invoke_agent"))
    assert again.name == "invoke_agent aider" and again.attributes["agentsight.trace.end_reason"] == "the agent exited"
    # A process that makes LLM calls below an agent is part of the agent's trace.
    b2 = TraceBuilder(mode="trace", wall_clock=lambda: T0, settle=0.1)
    s2 = run(b2, [exec_(T0, 300, 1, ["claude"]), call(300, T0 + S, T0 + 2 * S),
                  Fork(T0 + 3 * S, 300, 300, "claude", 1000, child_pid=301), call(301, T0 + 4 * S, T0 + 5 * S)])
    s2 += b2.close(T0 + 6 * S)
    assert len({s.trace_id for s in s2}) == 1 and sum(s.name.startswith("invoke_agent") for s in s2) == 1


def test_chat_attributes_follow_the_conventions():
    b = TraceBuilder(mode="trace", wall_clock=lambda: T0)
    (chat,) = b.feed(call(7, T0, T0 + 3 * S, api="messages", usage={
        "input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20},
        host="api.anthropic.com", request={"model": "claude-x", "max_tokens": 64, "temperature": 0.2,
                                           "messages": []}), 0.0)
    a = chat.attributes
    assert chat.kind == "client" and chat.name == "chat claude-x" and (chat.start_ns, chat.end_ns) == (T0, T0 + 3 * S)
    assert a["gen_ai.usage.input_tokens"] == 130  # the Messages API reports cached input apart
    assert a["gen_ai.usage.cache_read.input_tokens"] == 100 and a["gen_ai.usage.cache_creation.input_tokens"] == 20
    assert (a["server.address"], a["server.port"]) == ("api.anthropic.com", 443)
    assert a["gen_ai.request.max_tokens"] == 64 and a["gen_ai.request.temperature"] == 0.2
    assert a["gen_ai.response.time_to_first_chunk"] == pytest.approx(0.1)
    assert a["gen_ai.response.finish_reasons"] == ["end_turn"] and "error.type" not in a
    (gem,) = b.feed(call(8, T0, T0 + S, api="streamGenerateContent", provider="gemini", model="gemini-2.5-flash",
                         usage={"input_tokens": 7, "output_tokens": 3, "reasoning_tokens": 11},
                         host="generativelanguage.googleapis.com"), 0.0)
    assert gem.name == "generate_content gemini-2.5-flash" and gem.attributes["gen_ai.provider.name"] == "gcp.gemini"
    assert gem.attributes["gen_ai.usage.output_tokens"] == 14  # Gemini counts thoughts apart
    (failed,) = b.feed(call(9, T0, T0 + S, status=429, stream=False, host="127.0.0.1:8443", error={
        "status": 429, "type": "rate_limit_error", "message": "slow down, key sk-ant-api03-leakedkey0123456789"}), 0.0)
    assert failed.attributes["error.type"] == "rate_limit_error" and failed.error.startswith("slow down")
    assert "leakedkey" not in failed.error
    assert (failed.attributes["server.address"], failed.attributes["server.port"]) == ("127.0.0.1", 8443)
    assert "gen_ai.response.time_to_first_chunk" not in failed.attributes
    (cut,) = b.feed(call(10, T0, T0 + S, error={"type": "connection", "message": "connection closed"}), 0.0)
    assert cut.attributes["error.type"] == "connection"


CONVERSATIONS = {
    "chat.completions": {"model": "gpt-4o", "messages": [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "weather?"}, {"type": "image_url", "image_url": {}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "rainy"}]},
    "responses": {"model": "gpt-4.1", "instructions": "be brief", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "rainy"}]},
    "streamGenerateContent": {"systemInstruction": {"parts": [{"text": "be brief"}]}, "contents": [
        {"role": "user", "parts": [{"text": "weather?"}]},
        {"role": "model", "parts": [
            {"functionCall": {"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"id": "call_1", "name": "get_weather",
                                                         "response": "rainy"}}]}]},
    "messages": {"model": "claude-x", "system": [{"type": "text", "text": "be brief"}], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1", "name": "get_weather",
                                           "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": [{"type": "text", "text": "rainy"}]}]}]},
}


@pytest.mark.parametrize("api", sorted(CONVERSATIONS))
def test_content_in_the_conventions_form_for_each_api(api):
    b = TraceBuilder(mode="trace", wall_clock=lambda: T0, content=True)
    first = call(5, T0, T0 + S, [("call_1", "get_weather", {"city": "Paris", "api_key": "sk-live-abcdefghijkl0123"})],
                 api=api, request={"messages": []})
    second = call(5, T0 + 2 * S, T0 + 3 * S, api=api, request=CONVERSATIONS[api], text="It rains.")
    spans = run(b, [first, second]) + b.close(T0 + 4 * S)
    chat = next(s for s in spans if s.start_ns == T0 + 2 * S)
    messages = json.loads(chat.attributes["gen_ai.input.messages"])
    flat = [(m["role"], p["type"]) for m in messages for p in m["parts"]]
    assert ("user", "text") in flat and ("assistant", "tool_call") in flat and any(
        t == "tool_call_response" for _, t in flat), flat
    call_part = next(p for m in messages for p in m["parts"] if p["type"] == "tool_call")
    assert call_part["name"] == "get_weather" and call_part["arguments"] == {"city": "Paris"}
    system = chat.attributes.get("gen_ai.system_instructions")
    instructions = json.loads(system) if system else [p for m in messages if m["role"] == "system" for p in m["parts"]]
    assert instructions == [{"type": "text", "content": "be brief"}]
    assert json.loads(chat.attributes["gen_ai.output.messages"]) == [
        {"role": "assistant", "parts": [{"type": "text", "content": "It rains."}], "finish_reason": "end_turn"}]
    tool = next(s for s in spans if s.name == "execute_tool get_weather")
    assert json.loads(tool.attributes["gen_ai.tool.call.result"]) == "rainy"  # what went back to the model
    assert json.loads(tool.attributes["gen_ai.tool.call.arguments"]) == {"city": "Paris", "api_key": "[REDACTED]"}


def test_content_is_off_by_default_and_always_redacted():
    secret = "sk-ant-api03-contentsecret0123456789"
    request = {"messages": [{"role": "user", "content": f"my key is {secret}"}], "api_key": secret}
    plain = TraceBuilder(mode="trace", wall_clock=lambda: T0).feed(call(1, T0, T0 + S, request=request), 0.0)[0]
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for k in plain.attributes)
    # Unredacted events (a run with --no-redact) still give redacted content.
    with_content = TraceBuilder(mode="trace", wall_clock=lambda: T0, content=True)
    (chat,) = with_content.feed(call(1, T0, T0 + S, request=request, text=f"echo {secret}"), 0.0)
    assert secret not in json.dumps(chat.attributes) and "[REDACTED]" in chat.attributes["gen_ai.input.messages"]


def test_huge_content_is_cut_to_the_attribute_budget():
    request = {"messages": [{"role": "user", "content": "x" * 20000} for _ in range(40)]}
    b = TraceBuilder(mode="trace", wall_clock=lambda: T0, content=True)
    (chat,) = b.feed(call(1, T0, T0 + S, request=request), 0.0)
    value = chat.attributes["gen_ai.input.messages"]
    assert len(value.encode()) <= 64 << 10 and chat.attributes["agentsight.content.truncated"] is True
    kept = json.loads(value)
    assert kept and all(p["content"].endswith("…[cut 11808 chars]") for m in kept for p in m["parts"])


@pytest.mark.parametrize("line, expected", [
    ("0::/system.slice/docker-" + "a" * 64 + ".scope", "a" * 64),
    ("12:pids:/docker/" + "b" * 64, "b" * 64),
    ("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_5678.slice/cri-containerd-"
     + "c" * 64 + ".scope", "c" * 64),
    ("0::/../../kubepods-burstable-podx.slice/crio-" + "d" * 64 + ".scope", "d" * 64),
    ("0::/machine.slice/libpod-" + "e" * 64 + ".scope/container", "e" * 64),
    ("0::/user.slice/user-1000.slice/session-2.scope", None),
    ("0::/", None),
])
def test_container_id_from_cgroup(line, expected):
    assert container_id("1:name=systemd:/\n" + line + "\n") == expected


@pytest.mark.parametrize("argv, name", [
    (["/usr/bin/python3", "-u", "agent.py", "--fast"], "agent.py"),
    (["python", "-m", "aider", "--yes"], "aider"),
    (["node", "/home/u/.nvm/bin/claude"], "claude"),
    (["/usr/local/bin/claude", "-p", "hi"], "claude"),
    (["bash", "-c", "python x.py"], "bash"),
    (["env", "FOO=1", "codex"], "codex"),
])
def test_agent_name(argv, name):
    assert agent_name(argv, None, "comm") == name


class _StuckExporter:
    """An exporter whose backend never answers."""

    def __init__(self):
        self.release = threading.Event()
        self.calls = 0

    def export(self, spans):
        self.calls += 1
        self.release.wait(30)
        return type("Result", (), {"name": "FAILURE"})()

    def shutdown(self):
        self.release.set()


def _span(i):
    return SpanData(1, i + 1, None, "chat m", "client", T0, T0 + S, {"gen_ai.operation.name": "chat"})


def test_a_stuck_backend_never_makes_the_capture_wait():
    exporter = _StuckExporter()
    worker = ExportWorker(exporter, None, {"service.name": "agentsight"}, max_queue=100, batch=10, delay=0.01)
    started = time.perf_counter()
    for i in range(0, 10000, 50):
        worker.submit([_span(j) for j in range(i, i + 50)])
    took = time.perf_counter() - started
    assert took < 1.0, took  # 200 submits while the export thread is stuck
    assert worker.queue_full >= 10000 - 100 - 10  # bounded: what did not fit was dropped and counted
    started = time.monotonic()
    worker.close(seconds=0.5)
    assert time.monotonic() - started < 5
    assert worker.sent == 0 and worker.queue_full + worker.failed + worker.unsent == 10000


class _Recorder:
    def __init__(self):
        self.batches = []

    def export(self, spans):
        self.batches.append(spans)
        return type("Result", (), {"name": "SUCCESS"})()

    def shutdown(self):
        pass


def test_the_sink_reports_what_it_sent_and_dropped():
    pytest.importorskip("opentelemetry.sdk", reason="the otlp extra is a test dependency")
    events, links = agent_run()
    lines = []
    exporter = _Recorder()
    sink = OtlpSink(OtlpOptions("http://127.0.0.1:9/"), mode="record", roots=lambda: {100}, live=False,
                    worker=ExportWorker(exporter, None, {"service.name": "agentsight", "host.name": "h"}, delay=0.01),
                    report=lines.append)
    sink.write(events + links)
    sink.close()
    sent = [s for batch in exporter.batches for s in batch]
    assert len(sent) == 5 and {s.resource.attributes["service.name"] for s in sent} == {"agentsight"}
    assert {s.instrumentation_scope.name for s in sent} == {"agentsight"}
    assert lines == ["agentsight: otlp: 5 of 5 spans sent to http://127.0.0.1:9/v1/traces"]


def test_options_and_errors_a_user_sees(tmp_path):
    def cli(*args, **env):
        return subprocess.run([sys.executable, "-m", "agentsight", *args], capture_output=True, text=True, cwd=REPO,
                              env={**{k: v for k, v in __import__("os").environ.items() if not k.startswith("OTEL_")},
                                   **env}, timeout=60)

    session = tmp_path / "none.db"
    r = cli("export", str(session), "--otlp", "collector:4318")
    assert r.returncode == 2 and r.stderr == ("agentsight: --otlp collector:4318: not an OTLP endpoint URL "
                                              "(for example http://collector:4318)\n")
    r = cli("export", str(session), "--otlp-content")
    assert r.returncode == 2 and r.stderr == "agentsight: --otlp-content needs --otlp\n"
    r = cli("export", str(session), "--otlp", "http://127.0.0.1:9", OTEL_EXPORTER_OTLP_PROTOCOL="http/json")
    assert r.returncode == 2 and "agentsight exports http/protobuf or grpc" in r.stderr
    r = cli("export", str(session), "--otlp", "http://127.0.0.1:9")
    assert r.returncode == 2 and r.stderr == f"agentsight: {session}: no such file\n"
    # Without the extra installed: one sentence saying what to install.
    code = ("import sys; sys.modules['opentelemetry'] = None; from agentsight.cli import main; "
            f"sys.exit(main(['export', {str(session)!r}, '--otlp', 'http://127.0.0.1:9']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and r.stderr == (
        "agentsight: OTLP export needs the OpenTelemetry SDK and its OTLP exporter, which are not installed: "
        "pip install 'agentsight[otlp]'\n"), r.stderr


def test_calls_seen_from_the_server_side_are_no_agent_s():
    """A traced process that answers LLM calls (a local model server, the
    mock in a test runner) is not an agent: its view of a call makes no span,
    and correlation links the tool call to the client that made it."""
    from dataclasses import replace

    from agentsight.analyzers.correlate import Correlator

    client = call(100, T0 + S, T0 + 2 * S, [("toolu_1", "bash", {"command": "ls"})])
    server = replace(client, pid=50, tid=50, side="server")
    events = [Fork(T0, 50, 50, "server", 0, child_pid=100), exec_(T0 + 1, 100, 50, ["python3", "agent.py"]),
              server, client, Fork(T0 + 3 * S, 100, 100, "python3", 0, child_pid=101),
              exec_(T0 + 3 * S + 1, 101, 100, ["ls"]), Exit(T0 + 4 * S, 101, 101, "ls", 0, exit_code=0, ppid=100)]
    correlator = Correlator()
    for ev in events:
        correlator.feed(ev)
    (link,) = [e for e in correlator.close() if isinstance(e, Link)]
    assert link.tool_call.llm_pid == 100
    b = TraceBuilder(mode="trace", wall_clock=lambda: T0)
    spans = run(b, events + [link]) + b.close(T0 + 5 * S)
    assert sorted(s.name for s in spans) == ["chat claude-x", "execute_tool bash", "invoke_agent agent.py",
                                             "process ls"]
    assert not b.stats["links_unresolved"]
