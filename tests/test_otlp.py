"""OpenTelemetry export against real backends: a recorded agent session
exported to Arize Phoenix (OTLP/HTTP and OTLP/gRPC) and read back through
its API; `record --otlp` live; `trace --otlp` with the backend down; and the
resource, headers and metrics decoded by a local OTLP receiver."""
from __future__ import annotations

import datetime
import json
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from llm_mock import LLMMock, Script
from otlp_receiver import OtlpReceiver
from phoenix import Phoenix
from support import REPO

pytestmark = pytest.mark.bpf

NOBODY = 65534
API_KEY = "sk-ant-api03-otlptestsecret0123456789abcd"
TOOL_SECRET = "ghp_otlpTestToolSecret0123456789abcdefXY"

AGENT = textwrap.dedent(
    """
    import json, os, ssl, subprocess, sys, time, urllib.request
    base, ca, side_url = sys.argv[1:4]
    time.sleep(float(os.environ.get("AGENT_START_DELAY", "0")))
    ctx = ssl.create_default_context(cafile=ca)

    def ask(messages):
        body = json.dumps({"model": "claude-test", "max_tokens": 100, "system": "You run tools.",
                           "messages": messages}).encode()
        req = urllib.request.Request(base + "/v1/messages", data=body, headers={
            "content-type": "application/json", "x-api-key": "%s", "anthropic-version": "2023-06-01"})
        with urllib.request.urlopen(req, context=ctx) as r:
            return json.load(r)

    messages = [{"role": "user", "content": "save a note and fetch the page"}]
    first = ask(messages)
    tool = next(b for b in first["content"] if b["type"] == "tool_use")
    out = subprocess.run(tool["input"]["command"], shell=True, capture_output=True, text=True)
    messages += [{"role": "assistant", "content": first["content"]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"],
                                               "content": "done: " + out.stdout}]}]
    second = ask(messages)
    subprocess.run(["curl", "-s", "-o", "/dev/null", side_url])  # nobody asked for this
    print(second["content"][0]["text"])
    """ % API_KEY
)


class _Quiet(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"page\n")

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory):
    server = Phoenix(tmp_path_factory.mktemp("phoenix"))
    print(f"\nphoenix: virtualenv ready in {server.build_seconds:.1f} s, server up in {server.start_seconds:.1f} s")
    yield server
    server.close()


@pytest.fixture
def world():
    shared = Path(tempfile.mkdtemp(prefix="agentsight-otlp-"))
    shared.chmod(0o777)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with LLMMock() as mock:
        ca = shared / "ca.pem"
        ca.write_bytes(Path(mock.ca_file).read_bytes())
        ca.chmod(0o644)
        agent = shared / "agent.py"
        agent.write_text(AGENT)
        agent.chmod(0o644)
        note = shared / "note.txt"
        command = (f"GITHUB_TOKEN={TOOL_SECRET} sh -c 'echo recorded > {note}' && "
                   f"curl -s -o /dev/null http://127.0.0.1:{http.server_address[1]}/tool")
        mock.queue = [Script(tool_name="bash", tool_args={"command": command}, tool_id="toolu_otlp_1"),
                      Script(text="Done: note saved.")]
        yield {"dir": shared, "http": f"http://127.0.0.1:{http.server_address[1]}", "mock": mock, "ca": ca,
               "agent": agent, "note": note, "command": command}
    http.shutdown()
    http.server_close()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY), SUDO_USER="nobody", **extra)
    return env


def _agent_cmd(world) -> list[str]:
    return ["/usr/bin/python3", str(world["agent"]), world["mock"].base_url, str(world["ca"]), world["http"] + "/side"]


def _record(session: Path, world, *options: str, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), *options,
                             "--", *_agent_cmd(world)], capture_output=True, text=True, env=env or _env(), cwd=REPO,
                            timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Done: note saved."
    return result


def _ns(iso: str) -> int:
    t = datetime.datetime.fromisoformat(iso)
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _check_tree(spans: list[dict], session: Path, world, content: bool) -> dict:
    """The span tree of the recorded agent, checked against the session."""
    text = json.dumps(spans)
    assert API_KEY not in text and TOOL_SECRET not in text  # no secret in any span
    assert len({s["context"]["trace_id"] for s in spans}) == 1  # one trace for the run
    by_id = {s["context"]["span_id"]: s for s in spans}
    assert len(by_id) == len(spans)
    children: dict = {}
    for s in spans:
        assert s["parent_id"] is None or s["parent_id"] in by_id, s  # every parent arrived
        children.setdefault(s["parent_id"], []).append(s)
    (root,) = children[None]
    a = root["attributes"]
    db = sqlite3.connect(session)
    meta = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
    (root_pid,) = meta["root_pids"]
    assert root["name"] == "invoke_agent agent.py" and a["gen_ai.operation.name"] == "invoke_agent"
    assert a["gen_ai.agent.name"] == "agent.py" and a["process.pid"] == root_pid
    assert a["process.command_args"] == _agent_cmd(world)
    assert a["process.executable.path"] == "/usr/bin/python3" and a["process.exit.code"] == 0
    assert a["gen_ai.usage.input_tokens"] == 24 and a["gen_ai.usage.output_tokens"] == 14

    calls = db.execute("SELECT started_ns, ended_ns FROM llm_calls ORDER BY started_ns").fetchall()
    chats = sorted((s for s in children[root["context"]["span_id"]] if s["name"].startswith("chat ")),
                   key=lambda s: s["start_time"])
    assert [s["name"] for s in chats] == ["chat claude-test", "chat claude-test"]
    for chat, (started, ended) in zip(chats, calls):
        c = chat["attributes"]
        assert abs(_ns(chat["start_time"]) - started) < 2000 and abs(_ns(chat["end_time"]) - ended) < 2000
        assert (c["gen_ai.operation.name"], c["gen_ai.provider.name"], c["gen_ai.request.model"]) == \
            ("chat", "unknown", "claude-test")
        assert (c["gen_ai.usage.input_tokens"], c["gen_ai.usage.output_tokens"]) == (12, 7)
        assert c["gen_ai.response.model"] == "claude-test" and c["gen_ai.response.id"].startswith("msg_")
        assert c["server.address"] == "127.0.0.1" and c["server.port"] == world["mock"].port
        assert ("gen_ai.input.messages" in c) is content
    assert chats[0]["attributes"]["gen_ai.response.finish_reasons"] == ["tool_use"]
    assert chats[1]["attributes"]["gen_ai.response.finish_reasons"] == ["end_turn"]
    assert chats[1]["context"]["span_id"] not in children  # the last call asked for no tool

    (tool,) = children[chats[0]["context"]["span_id"]]
    t = tool["attributes"]
    assert tool["name"] == "execute_tool bash" and t["gen_ai.tool.call.id"] == "toolu_otlp_1"
    assert t["gen_ai.tool.name"] == "bash" and t["gen_ai.operation.name"] == "execute_tool"
    assert abs(_ns(tool["start_time"]) - calls[0][1]) < 2000 and abs(_ns(tool["end_time"]) - calls[1][0]) < 2000
    if content:
        assert json.loads(t["gen_ai.tool.call.arguments"])["command"].startswith("GITHUB_TOKEN=[REDACTED] ")
        assert json.loads(t["gen_ai.tool.call.result"]) == "done: "
        inputs = json.loads(chats[1]["attributes"]["gen_ai.input.messages"])
        assert inputs[0] == {"role": "user", "parts": [{"type": "text", "content": "save a note and fetch the page"}]}
        assert inputs[1]["role"] == "assistant" and {"type": "tool_call", "id": "toolu_otlp_1", "name": "bash",
                                                      "arguments": {"command": "GITHUB_TOKEN=[REDACTED] " + world[
                                                          "command"].split(" ", 1)[1]}} in inputs[1]["parts"]
        assert inputs[2] == {"role": "user", "parts": [
            {"type": "tool_call_response", "id": "toolu_otlp_1", "response": "done: "}]}
        assert json.loads(chats[1]["attributes"]["gen_ai.output.messages"]) == [
            {"role": "assistant", "parts": [{"type": "text", "content": "Done: note saved."}],
             "finish_reason": "end_turn"}]
        assert json.loads(chats[0]["attributes"]["gen_ai.system_instructions"]) == [
            {"type": "text", "content": "You run tools."}]
    else:
        assert "gen_ai.tool.call.arguments" not in t

    (shell,) = children[tool["context"]["span_id"]]  # the tool's shell, and under it what it started
    sa = shell["attributes"]
    assert shell["name"] == "process sh" and sa["process.command_args"][:2] == ["/bin/sh", "-c"]
    assert sa["process.command_args"][2].startswith("GITHUB_TOKEN=*") and sa["process.exit.code"] == 0
    assert sa["agentsight.link.evidence.arguments"] == "argv is arguments.command"
    below = {s["attributes"]["process.command_args"][0]: s for s in children[shell["context"]["span_id"]]}
    assert set(below) == {"sh", "curl"}, below
    assert below["curl"]["attributes"]["process.command_args"][-1] == world["http"] + "/tool"
    writes = [(e["name"], e["attributes"]["file.path"]) for s in [shell, *below.values()] for e in s["events"]]
    assert writes == [("file.write", str(world["note"]))]

    unexplained = [s for s in children[root["context"]["span_id"]] if s["attributes"].get("agentsight.unexplained")]
    assert [s["attributes"]["process.command_args"] for s in unexplained] == [
        ["curl", "-s", "-o", "/dev/null", world["http"] + "/side"]]
    assert unexplained[0]["attributes"]["agentsight.unexplained.reason"] == "no tool call explains it"
    return {"root": root, "chats": chats, "tool": tool, "shell": shell}


def _export(session: Path, endpoint: str, project: str, *options: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentsight", "export", str(session), "--otlp", endpoint, *options],
                          capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=_env(OTEL_RESOURCE_ATTRIBUTES=f"openinference.project.name={project}",
                                   OTEL_METRICS_EXPORTER="none", **env))


def test_recorded_session_exported_to_phoenix(phoenix, world, tmp_path):
    session = tmp_path / "session.db"
    _record(session, world)
    assert world["note"].read_text() == "recorded\n"

    started = time.monotonic()
    result = _export(session, phoenix.url, "export-http", "--otlp-content")
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    n = int(result.stderr.split("otlp: ")[1].split(" of ")[0])
    assert f"otlp: {n} of {n} spans sent to {phoenix.url}/v1/traces" in result.stderr, result.stderr
    spans = phoenix.spans("export-http", expect=n)
    assert len(spans) == n == 8, [s["name"] for s in spans]  # agent, 2 chats, tool, sh, sh, curl, unexplained curl
    _check_tree(spans, session, world, content=True)
    print(f"\nexport of {n} spans over OTLP/HTTP: {took:.2f} s")

    # The same over gRPC, without content: the same tree.
    result = _export(session, phoenix.grpc_url, "export-grpc", OTEL_EXPORTER_OTLP_PROTOCOL="grpc")
    assert result.returncode == 0, result.stderr
    assert f"otlp: {n} of {n} spans sent to {phoenix.grpc_url}" in result.stderr, result.stderr
    _check_tree(phoenix.spans("export-grpc", expect=n), session, world, content=False)


def test_record_otlp_live_to_phoenix(phoenix, world, tmp_path):
    session = tmp_path / "session.db"
    env = _env(OTEL_RESOURCE_ATTRIBUTES="openinference.project.name=record-live", OTEL_METRICS_EXPORTER="none")
    result = _record(session, world, "--otlp", phoenix.url, env=env)
    assert "agentsight: otlp: 8 of 8 spans sent" in result.stderr, result.stderr
    spans = phoenix.spans("record-live", expect=8)
    assert len(spans) == 8, [s["name"] for s in spans]
    tree = _check_tree(spans, session, world, content=False)
    # Exported while recording, not rebuilt from the file: the same spans come from `export`.
    assert tree["tool"]["attributes"]["gen_ai.tool.call.id"] == "toolu_otlp_1"


def test_resource_headers_and_metrics(world, tmp_path):
    session = tmp_path / "session.db"
    _record(session, world)
    receiver = OtlpReceiver()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "agentsight", "export", str(session), "--otlp"], capture_output=True, text=True,
            cwd=REPO, timeout=120,
            env=_env(OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url, OTEL_EXPORTER_OTLP_HEADERS="x-team-token=let-me-in"))
        assert result.returncode == 0, result.stderr
        assert "8 of 8 spans and " in result.stderr and f"sent to {receiver.url}/v1/traces" in result.stderr
        spans = receiver.spans()
        assert len(spans) == 8
        meta = dict(sqlite3.connect(session).execute("SELECT key, value FROM meta").fetchall())
        for resource, span in spans:
            assert resource["service.name"] == "agentsight" and resource["host.name"] == json.loads(meta["host"])
            assert "container.id" not in resource  # the recorded agent ran on the host
            assert span["scope"] == "agentsight"
        kinds = {s["name"].split(" ")[0]: s["kind"] for _, s in spans}
        assert kinds["chat"] == 3 and kinds["invoke_agent"] == 1  # SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL
        assert all(h.get("x-team-token") == "let-me-in" for h in receiver.headers)

        points = {(p["name"], p["attributes"].get("gen_ai.token.type")): p for p in receiver.metric_points()}
        duration = points[("gen_ai.client.operation.duration", None)]
        assert duration["unit"] == "s" and duration["count"] == 2 and duration["temporality"] == 2  # cumulative
        assert duration["bounds"][:3] == [0.01, 0.02, 0.04] and len(duration["bounds"]) == 14
        assert duration["attributes"] == {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "unknown",
                                          "gen_ai.request.model": "claude-test", "gen_ai.response.model": "claude-test",
                                          "server.address": "127.0.0.1", "server.port": world["mock"].port}
        tokens_in = points[("gen_ai.client.token.usage", "input")]
        tokens_out = points[("gen_ai.client.token.usage", "output")]
        assert (tokens_in["unit"], tokens_in["count"], tokens_in["sum"]) == ("{token}", 2, 24)
        assert (tokens_out["count"], tokens_out["sum"]) == (2, 14)
        counter = points[("gen_ai.client.inference.usage.input_tokens", None)]
        assert (counter["kind"], counter["value"], counter["monotonic"]) == ("sum", 24, True)
        assert duration["resource"]["service.name"] == "agentsight"

        # OTEL_SERVICE_NAME names the service, as in every SDK.
        receiver.traces.clear()
        result = subprocess.run([sys.executable, "-m", "agentsight", "export", str(session), "--otlp", receiver.url],
                                capture_output=True, text=True, cwd=REPO, timeout=120,
                                env=_env(OTEL_SERVICE_NAME="fleet-agents"))
        assert result.returncode == 0, result.stderr
        assert {r["service.name"] for r, _ in receiver.spans()} == {"fleet-agents"}
    finally:
        receiver.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


def test_trace_keeps_capturing_when_the_backend_is_down(capture, tmp_path):
    port = _closed_port()
    with LLMMock() as mock:
        mock.queue = [Script(text=f"answer {i}", input_tokens=10 + i, output_tokens=2) for i in range(6)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"
        run = capture("trace", "--comm", "curl", "--no-open", "--otlp", f"http://127.0.0.1:{port}", env=env)
        started = time.monotonic()
        for i in range(6):
            curl = subprocess.run(
                ["curl", "-sS", "--http1.1", "--cacert", mock.ca_file, "-H", "content-type: application/json",
                 "-H", "authorization: Bearer sk-proj-downbackend0123456789abcd", "--data-binary",
                 json.dumps({"model": "local-llama", "messages": [{"role": "user", "content": f"q{i}"}]}),
                 mock.base_url + "/v1/chat/completions"], capture_output=True, timeout=60)
            assert curl.returncode == 0, curl.stderr
        took = time.monotonic() - started
        events, stderr = run.stop()
    calls = [e for e in events if e["type"] == "llm_call" and e["model"] == "local-llama"]
    assert [c["response"]["text"] for c in calls] == [f"answer {i}" for i in range(6)]  # nothing missed
    assert took < 20, took  # the calls were not held up by the export
    line = next(l for l in stderr.splitlines() if l.startswith("agentsight: otlp: "))
    # A chat span and an agent span for each curl (each is an agent of its own), none delivered.
    made = int(line.split(" of ")[1].split(" spans")[0])
    assert made >= 12, line
    assert line.startswith(f"agentsight: otlp: 0 of {made} spans and 0 metric points sent to "
                           f"http://127.0.0.1:{port}/v1/traces; dropped: {made} spans not taken by the backend"), line
    assert line.endswith("(connection refused)"), line
    print(line)


def _container_cgroup(container: str) -> Path:
    """A cgroup named the way Docker names a container's (`docker-ID.scope`),
    in this machine's cgroup2 hierarchy or its v1 `pids` one."""
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    roots = [m[1] for m in mounts if m[2] == "cgroup2"] + [m[1] for m in mounts if m[2] == "cgroup" and
                                                            "pids" in m[3].split(",")]
    assert roots, "no cgroup hierarchy to make a container's cgroup in"
    path = Path(roots[0]) / "agentsight-test" / f"docker-{container}.scope"
    path.mkdir(parents=True)
    return path


def test_trace_otlp_live_names_the_container(capture, world, tmp_path):
    """`trace --otlp` while an agent runs in a container's cgroup: its trace
    carries container.id, and what correlation links lands under the tool
    call, whenever the link is made."""
    receiver = OtlpReceiver()
    container = secrets.token_hex(32)
    cgroup = _container_cgroup(container)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        run = capture("trace", "--otlp", receiver.url, env=env)
        # Running for a while, as agents do: agentsight reads its cgroup while it runs.
        agent = subprocess.run(["sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *_agent_cmd(world)],
                               capture_output=True, text=True, timeout=120, env=dict(env, AGENT_START_DELAY="1.5"))
        assert agent.returncode == 0 and agent.stdout.strip() == "Done: note saved.", agent.stderr
        time.sleep(4)  # the tool call's and the agent's spans go out before the links are made
        events, stderr = run.stop()
    finally:
        cgroup.rmdir()  # empty again: the agent has exited
        cgroup.parent.rmdir()
    try:
        line = next(l for l in stderr.splitlines() if l.startswith("agentsight: otlp: "))
        made = int(line.split(" of ")[1].split(" spans")[0])
        assert line.startswith(f"agentsight: otlp: {made} of {made} spans and "), line
        received = receiver.spans()
        roots = [s for r, s in received if s["name"] == "invoke_agent agent.py"
                 and s["attributes"]["process.command_args"] == _agent_cmd(world)]
        assert len(roots) == 1, [(s["name"], s["attributes"].get("process.command_args")) for _, s in received
                                 if s["parent_id"] is None]
        trace = roots[0]["trace_id"]
        spans = {s["span_id"]: (r, s) for r, s in received if s["trace_id"] == trace}
        assert {r.get("container.id") for r, _ in spans.values()} == {container}
        assert all(r["service.name"] == "agentsight" for r, _ in spans.values())
        assert all(s["parent_id"] is None or s["parent_id"] in spans for _, s in spans.values())
        names = sorted(s["name"] for _, s in spans.values())
        assert names.count("chat claude-test") == 2 and names.count("execute_tool bash") == 1, names
        tool = next(s for _, s in spans.values() if s["name"] == "execute_tool bash")
        assert spans[tool["parent_id"]][1]["name"] == "chat claude-test"
        below_tool = [s for _, s in spans.values() if s["parent_id"] == tool["span_id"]]
        assert [s["name"] for s in below_tool] == ["process sh"], names
        assert below_tool[0]["attributes"]["agentsight.link.evidence.arguments"] == "argv is arguments.command"
        # Linked while the capture runs (once the result went back), in the
        # tool call's export request or a later one: below it either way.
        assert below_tool[0]["request"] >= tool["request"]
        subtree = [s for _, s in spans.values() if s["parent_id"] == below_tool[0]["span_id"]] + below_tool
        writes = [(e[0], e[2]["file.path"]) for s in subtree for e in s["events"]]
        assert writes == [("file.write", str(world["note"]))]
        unexplained = [s for _, s in spans.values() if s["attributes"].get("agentsight.unexplained")]
        assert [s["attributes"]["process.command_args"][-1] for s in unexplained] == [world["http"] + "/side"]
        assert {spans[s["parent_id"]][1]["name"] for s in unexplained} == {"invoke_agent agent.py"}
        assert API_KEY not in json.dumps([s for _, s in spans.values()])
    finally:
        receiver.close()
