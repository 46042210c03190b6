"""The web UI without a browser: what the server answers, to whom, and how
much; the conversation of each API's request shape; the live feed.

The browser tests (real Chromium, real recordings) are in test_web_browser.py."""
from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time

import orjson
import pytest

from agentsight.events import Exec, Exit, FileKey, Fork, Link, LlmCall, LlmCallRef, LlmResponse, Open, ProcessKey, \
    Startup, ToolCall, ToolCallRef, ToolResult, Unexplained
from agentsight.sinks.base import Outcome
from agentsight.ui.web import feed as feed_module
from agentsight.ui.web.conversation import conversation
from agentsight.ui.web.feed import WebFeed
from agentsight.ui.web.server import CSP, WebServer
from agentsight.ui.web.store import LINKS_PER_TOOL, SessionStore, call_id, process_id
from support import REPO
from web_support import AGENT_PID, build_session


@pytest.fixture(scope="module")
def big_session(tmp_path_factory):
    path = tmp_path_factory.mktemp("web") / "big.db"
    started = time.monotonic()
    facts = build_session(path, 40, programs_per_tool=30, files_per_tool=90)
    print(f"\nsynthetic session: {facts['bytes'] / 1e6:.0f} MB, {facts['calls']} LLM calls, {facts['processes']} "
          f"processes, {facts['files']} file changes, built in {time.monotonic() - started:.1f} s")
    return path, facts


@pytest.fixture(scope="module")
def big_store(big_session):
    store = SessionStore(str(big_session[0]))
    yield store
    store.close()


def _get(server: WebServer, path: str, headers: dict | None = None, method: str = "GET",
         token: bool = True) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    h = {"Host": f"127.0.0.1:{server.port}"}
    if token:
        h["Cookie"] = f"{server.cookie}={server.token}"
    h.update(headers or {})
    conn.request(method, path, headers=h)
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, body


@pytest.fixture
def server(big_session):
    s = WebServer("127.0.0.1", 0, [SessionStore(str(big_session[0]))])
    s.start()
    yield s
    s.close()


# -- windows of a large session ------------------------------------------------------------


def test_timeline_sends_a_bounded_window_with_counts_for_the_rest(big_store, big_session):
    _, facts = big_session
    t = big_store.run("timeline", limit=500)
    assert len(orjson.dumps(t)) < 1_500_000
    kinds = [i["kind"] for i in t["items"]]
    assert kinds.count("process") == 500 and kinds.count("file") == 500
    assert t["counts"]["process"] == facts["processes"] and t["counts"]["file"] == facts["files"]
    assert sum(t["buckets"]["process"]) == facts["processes"] and sum(t["buckets"]["file"]) == facts["files"]
    assert int(t["more"]["process"]) > max(i["t0"] for i in t["items"] if i["kind"] == "process") - 1
    calls = [i for i in t["items"] if i["kind"] == "llm"]
    assert len(calls) == facts["calls"] == t["counts"]["llm"]
    first = calls[0]
    assert first["model"] == "claude-bench" and first["ttft"] == 300_000_000 and first["text"]
    (tool,) = first["tools"]
    assert tool["command"].startswith("cd /work && make test-0 ")
    # Links are sent per tool call, up to a bound, with how many there are.
    assert len(tool["links"]) == LINKS_PER_TOOL and tool["links_total"] == 1 + 30 + 90
    assert {l["target_kind"] for l in tool["links"]} == {"process", "file"}
    # The next page starts where this one stopped.
    page2 = big_store.run("timeline", since=int(t["more"]["process"]), kinds=frozenset(["process"]), limit=500)
    first2 = [i for i in page2["items"] if i["kind"] == "process"][0]
    assert first2["t0"] >= int(t["more"]["process"])


def test_timeline_zoom_filter_and_search(big_store, big_session):
    _, facts = big_session
    whole = big_store.run("timeline", limit=10)
    lo, hi = whole["bounds"]
    calls = big_store.run("timeline", kinds=frozenset(["llm"]))["items"]
    third = calls[3]
    zoomed = big_store.run("timeline", start=third["t0"], end=third["t1"])
    assert [i["id"] for i in zoomed["items"] if i["kind"] == "llm"] == [third["id"]]
    assert all(i["kind"] != "file" for i in zoomed["items"])  # the tool ran after the call
    assert lo <= third["t0"] and third["t1"] <= hi

    found = big_store.run("timeline", q="make test-7 >")
    assert [i["id"] for i in found["items"] if i["kind"] == "llm"][:1] == [calls[7]["id"]]
    assert not [i for i in found["items"] if i["kind"] == "file"]
    shells = [i for i in found["items"] if i["kind"] == "process"]
    assert [s["argv"][-1] for s in shells] == ["cd /work && make test-7 > out-7.log && grep -c ok out-7.log"]
    # Search is literal text: LIKE wildcards in it match themselves.
    assert big_store.run("timeline", q="make%test")["counts"] == {"llm": 0, "process": 0, "file": 0}

    shell = shells[0]
    only = big_store.run("timeline", proc=shell["id"], limit=5000)
    pids = {i["pid"] for i in only["items"]}
    assert shell["pid"] in pids and AGENT_PID not in pids and len(pids) == 31
    assert only["counts"]["file"] == 90
    lonely = big_store.run("timeline", unexplained=True)
    assert lonely["counts"]["process"] == facts["calls"] // 10
    assert all(i["unexplained"] == "no tool call explains it" for i in lonely["items"])


def test_search_finds_text_as_shown_whatever_json_escapes_in_it(tmp_path):
    from agentsight.sinks.session import SessionWriter

    command = 'echo "hi there" > \'x y.txt\' \\ done'
    path = tmp_path / "s.db"
    writer = SessionWriter(str(path), {})
    writer.write([Exec(100, 10, 10, "agent", 0, ppid=1, argv=["agent"]), _llm(10, 200, command),
                  Fork(300, 10, 10, "agent", 0, child_pid=11),
                  Exec(310, 11, 11, "sh", 0, ppid=10, argv=["sh", "-c", command], cwd="/w"),
                  Open(320, 11, 11, "sh", 0, path="x y.txt", resolved="/w/x y.txt", flags=0o1101, ret=3)])
    writer.close(Outcome())
    store = SessionStore(str(path))
    try:
        for q in ('"hi there"', "'x y.txt' \\ done", "HI THERE"):
            found = {i["kind"] for i in store.run("timeline", q=q)["items"]}
            assert found == {"llm", "process"}, q
        assert {i["kind"] for i in store.run("timeline", q="x y.txt")["items"]} == {"llm", "process", "file"}
    finally:
        store.close()


def test_a_call_summary_never_trusts_what_the_request_or_response_hold():
    """The summary skips the request by finding the top-level "response" key
    from the end; keys of that name anywhere else must not fool it."""
    from agentsight.ui.web.store import call_summary, summary_of_record

    def record(request, arguments, error=None, text="real text"):
        call = _llm(10, 200, "ls")
        call.request = request
        call.response.text = text
        call.response.tool_calls[0].arguments = arguments
        call.first_token_ns = 250
        call.error = error
        return orjson.dumps(call.to_json()).decode()

    fooled = {"response": {"text": "fake", "stop_reason": "fake"}, "started_ns": 0, "first_token_ns": 99}
    cases = [record({"messages": [{"response": {"text": "fake"}}]}, {"x": 1}),
             record({"a": 1}, {"response": {"started_ns": 1}}),
             record({"a": 1}, fooled),
             record({"a": 1}, {"k": "v"}, error={"response": {"text": "fake"}, "started_ns": 5}),
             record({"a": 1}, {"k": 1}, text='"response":{"text":"fake"}, "started_ns": 0}'),
             record({"response": {}}, [{"response": {"response": {}}}])]
    for text in cases:
        expected = call_summary(orjson.loads(text))
        assert summary_of_record(text) == expected
        assert expected["ttft"] == 50 and expected["text"] in ("real text", '"response":{"text":"fake"}, "started_ns": 0}')
    assert summary_of_record(None)["ttft"] is None and summary_of_record("not json")["text"] == ""


def test_process_tree_and_detail(big_store, big_session):
    _, facts = big_session
    roots = big_store.run("children")
    assert roots["total"] == 1
    (agent,) = roots["nodes"]
    assert agent["pid"] == AGENT_PID and agent["children"] == 1 + facts["calls"] + facts["calls"] // 10
    page = big_store.run("children", parent=agent["id"], limit=50)
    assert len(page["nodes"]) == 50 and page["total"] == agent["children"]
    rest = big_store.run("children", parent=agent["id"], offset=100, limit=50)
    assert len(rest["nodes"]) == agent["children"] - 100 and rest["nodes"][0]["t0"] > page["nodes"][-1]["t0"]
    git, shell = page["nodes"][:2]
    assert git["argv"][0] == "git" and git["startup"] and "link" not in git
    assert shell["argv"][0] == "/bin/bash" and shell["link"]["tool"].startswith("t:")
    assert shell["parent"] == agent["id"]
    detail = big_store.run("process", id=shell["id"])
    assert detail["children"] == 30 and detail["descendants"] == 30
    assert detail["tool"]["name"] == "bash" and detail["tool"]["command"] == shell["argv"][-1]
    kid = big_store.run("children", parent=shell["id"])["nodes"][0]
    files = big_store.run("process", id=kid["id"])["files"]
    assert files and all(f["proc"] == kid["id"] and f["link"]["tool"] == shell["link"]["tool"] for f in files)
    with pytest.raises(Exception, match="no process"):
        big_store.run("process", id="p:1:2")


def test_call_detail_folds_a_long_conversation(big_store):
    calls = big_store.run("timeline", kinds=frozenset(["llm"]))["items"]
    last = calls[-1]
    c = big_store.run("call", id=last["id"])
    conv = c["conversation"]
    messages = conv["messages"]
    assert len(messages) == 2 * len(calls) - 1
    assert [m["role"] for m in messages[:3]] == ["user", "assistant", "user"]
    assert messages[1]["parts"][1]["type"] == "tool_call" and messages[1]["parts"][1]["name"] == "bash"
    assert messages[2]["parts"][0]["type"] == "tool_result"
    assert messages[0]["folded"] and not messages[-1]["folded"]
    system = conv["system"][0]
    assert system["cut"] and len(system["text"]) == 4000
    assert len(conv["tools"]) == 30
    whole = big_store.run("text", id=last["id"], part=system["address"])["text"]
    assert len(whole) == 4000 + system["cut"] and whole.startswith(system["text"])
    folded = next(p for m in messages if m["folded"] for p in m["parts"] if p.get("cut"))
    assert len(folded["text"]) == 300
    assert len(big_store.run("text", id=last["id"], part=folded["address"])["text"]) == 300 + folded["cut"]
    assert c["timings"]["ttft_ns"] == 300_000_000 and c["usage"]["input_tokens"] > 1000
    assert c["request_headers"]["x-api-key"] == "[REDACTED]"
    (tool,) = c["tool_calls"]
    assert tool["links_total"] == len(tool["links"]) == 121
    # Everything sent for one call stays small, however long the conversation.
    assert len(orjson.dumps(c)) < 400_000
    for bad in ("m.99999.0", "x.1", "m.a.b"):
        with pytest.raises(Exception, match="no part"):
            big_store.run("text", id=last["id"], part=bad)


def test_answers_stay_fast_on_a_large_session(big_store, big_session):
    """Generous bounds (a shared 2-core VM); bench/bench_web.py measures 500 MB."""
    calls = big_store.run("timeline", kinds=frozenset(["llm"]))["items"]
    timings = {}
    for name, kwargs in [("summary", {}), ("timeline", {}), ("timeline", {"q": "module_7_2"}),
                         ("children", {}), ("call", {"id": calls[-1]["id"]})]:
        started = time.perf_counter()
        out = big_store.run(name, **kwargs)
        timings[name + str(kwargs)[:30]] = time.perf_counter() - started
        assert len(orjson.dumps(out)) < 2_500_000
    print("\n" + "\n".join(f"  {k}: {v * 1000:.0f} ms" for k, v in timings.items()))
    assert max(timings.values()) < 3.0, timings


# -- the server: who may read what --------------------------------------------------------


def test_every_answer_carries_the_policy_and_needs_the_token(server):
    status, headers, body = _get(server, "/")
    assert status == 200 and b'<script type="module" src="/static/app.js">' in body
    assert headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP and "default-src 'none'" in CSP
    assert headers["x-content-type-options"] == "nosniff"
    for path in ("/", "/static/app.js", "/api/sessions", "/api/s/0/summary", "/api/s/0/live"):
        status, headers, body = _get(server, path, token=False)
        assert status == 403, path
        assert headers["content-security-policy"] == CSP
        assert b"open the address agentsight printed" in body
    status, _, _ = _get(server, "/api/s/0/summary", token=False, headers={"Cookie": f"{server.cookie}=wrong"})
    assert status == 403
    status, _, _ = _get(server, "/api/s/0/summary?token=wrong", token=False)
    assert status == 403
    # The printed address: its token becomes a cookie for this port and leaves the address bar.
    status, headers, _ = _get(server, f"/?token={server.token}", token=False)
    assert status == 303 and headers["location"] == "/"
    assert headers["set-cookie"] == f"{server.cookie}={server.token}; Path=/; HttpOnly; SameSite=Strict"


def test_only_its_own_host_name_and_only_reads(server):
    status, _, body = _get(server, "/api/s/0/summary", headers={"Host": "evil.example:80"})
    assert status == 421 and b"wrong Host" in body
    status, _, _ = _get(server, "/api/s/0/summary", headers={"Host": f"localhost:{server.port}"})
    assert status == 200
    for method in ("POST", "PUT", "DELETE"):
        assert _get(server, "/api/s/0/summary", method=method)[0] == 405
    for path in ("/static/../store.py", "/static/store.py", "/static/%2e%2e/store.py", "/etc/passwd",
                 "/api/s/1/summary", "/api/s/-1/summary", "/api/s/0/nothing", "/api/s/0/live"):
        assert _get(server, path)[0] == 404, path
    status, _, body = _get(server, "/api/s/0/timeline?from=soon")
    assert status == 400 and b"from is not a whole number" in body


def test_serving_leaves_the_session_file_as_it_was(tmp_path):
    path = tmp_path / "s.db"
    build_session(path, 1)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    s = WebServer("127.0.0.1", 0, [SessionStore(str(path))])
    s.start()
    try:
        for p in ("/api/sessions", "/api/s/0/summary", "/api/s/0/timeline", "/api/s/0/children"):
            assert _get(s, p)[0] == 200
        def write_through_a_worker():
            try:
                s.stores[0]._db().execute("DELETE FROM meta")
            except Exception as exc:  # noqa: BLE001
                return str(exc)
            return "it wrote"

        assert "readonly" in s.stores[0]._pool.submit(write_through_a_worker).result()
    finally:
        s.close()
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert not os.path.exists(str(path) + "-wal")


def test_serve_command_prints_its_address_and_refuses_what_is_not_a_session(tmp_path):
    session = tmp_path / "s.db"
    build_session(session, 1)
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "serve", str(session), str(session), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert line.startswith("agentsight: serving 2 sessions at http://127.0.0.1:"), line
        url = line.split(" at ", 1)[1].split()[0]
        assert "?token=" in url
    finally:
        proc.send_signal(2)
        assert proc.wait(10) == 0
    not_db = tmp_path / "notes.txt"
    not_db.write_text("hello\n")
    for arg, message in [(str(tmp_path / "missing.db"), "no such file"), (str(not_db), "is not an agentsight session")]:
        result = subprocess.run([sys.executable, "-m", "agentsight", "serve", arg, "--port", "0"],
                                capture_output=True, text=True, cwd=REPO, timeout=30)
        assert result.returncode == 2 and message in result.stderr and result.stderr.count("\n") == 1, result.stderr
    busy = WebServer("127.0.0.1", 0, [])
    try:
        result = subprocess.run([sys.executable, "-m", "agentsight", "serve", str(session), "--port", str(busy.port)],
                                capture_output=True, text=True, cwd=REPO, timeout=30)
        assert result.returncode == 2 and f"cannot listen on 127.0.0.1:{busy.port}" in result.stderr
    finally:
        busy.close()


def test_elsewhere_than_loopback_needs_the_token_too(big_session):
    s = WebServer("0.0.0.0", 0, [SessionStore(str(big_session[0]))])
    s.start()
    try:
        assert s.allowed_hosts is None and s.url.startswith(f"http://0.0.0.0:{s.port}/?token=")
        assert _get(s, "/api/sessions", token=False, headers={"Host": "agent-box:7396"})[0] == 403
        assert _get(s, "/api/sessions", headers={"Host": "agent-box:7396"})[0] == 200
    finally:
        s.close()


# -- conversations of every shape ----------------------------------------------------------


def test_conversation_of_each_api_shape():
    anthropic = conversation({
        "model": "m", "system": [{"type": "text", "text": "be brief"}], "tools": [
            {"name": "bash", "description": "run", "input_schema": {"type": "object"}}],
        "messages": [{"role": "user", "content": "hi"},
                     {"role": "assistant", "content": [{"type": "thinking", "thinking": "hmm"},
                                                       {"type": "tool_use", "id": "t1", "name": "bash",
                                                        "input": {"command": "ls"}}]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                                   "content": [{"type": "text", "text": "a\nb"}],
                                                   "is_error": True}]}]})
    assert anthropic["system"] == [{"type": "text", "text": "be brief"}]
    assert [p["type"] for m in anthropic["messages"] for p in m["parts"]] == \
        ["text", "thinking", "tool_call", "tool_result"]
    assert anthropic["messages"][1]["parts"][1]["name"] == "bash"
    assert anthropic["messages"][2]["parts"][0] == {"type": "tool_result", "id": "t1", "text": "a\nb", "error": True}
    assert anthropic["tools"][0]["name"] == "bash" and anthropic["parameters"] == {"model": "m"}

    chat = conversation({"model": "gpt", "messages": [
        {"role": "system", "content": "sys"}, {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})
    assert chat["system"][0]["text"] == "sys"
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant", "tool"]
    assert chat["messages"][1]["parts"][0]["text"] == '{\n  "x": 1\n}'
    assert chat["messages"][2]["parts"][0]["type"] == "tool_result" and chat["tools"][0]["name"] == "f"

    responses = conversation({"model": "o", "instructions": "inst", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "do"}]},
        {"type": "function_call", "call_id": "k", "name": "g", "arguments": "not json"},
        {"type": "function_call_output", "call_id": "k", "output": "done"}],
        "tools": [{"type": "function", "name": "g"}, {"type": "web_search"}]})
    assert responses["system"][0]["text"] == "inst"
    assert [p["type"] for m in responses["messages"] for p in m["parts"]] == ["text", "tool_call", "tool_result"]
    assert responses["messages"][1]["parts"][0]["text"] == "not json"
    assert [t["name"] for t in responses["tools"]] == ["g", "web_search"]

    gemini = conversation({"systemInstruction": {"parts": [{"text": "gs"}]}, "contents": [
        {"role": "user", "parts": [{"text": "hello"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "h", "args": {"a": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "h", "response": {"ok": True}}}]}],
        "tools": [{"functionDeclarations": [{"name": "h"}]}]})
    assert gemini["system"][0]["text"] == "gs"
    assert [m["role"] for m in gemini["messages"]] == ["user", "assistant", "user"]
    assert gemini["tools"][0]["name"] == "h"

    # Whatever it is, it is kept as text.
    odd = conversation({"weird": [1, 2]})
    assert odd["messages"][0]["parts"][0]["type"] == "other" and "weird" in odd["messages"][0]["parts"][0]["text"]
    assert conversation("plain")["messages"][0]["parts"][0]["text"] == "plain"
    assert conversation({"messages": [5, {"role": 3, "content": {"x": 1}}]})["messages"][1]["role"] == "?"


# -- the live feed ------------------------------------------------------------------------


def _frames(page, until: str, timeout: float = 5.0) -> list[tuple[str, dict]]:
    out: list[tuple[str, dict]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for raw in page.take(0.2):
            head, data = raw.decode().split("\n", 1)
            out.append((head.removeprefix("event: "), orjson.loads(data.removeprefix("data: "))))
        if any(kind == until for kind, _ in out):
            return out
    raise AssertionError(f"no {until!r} frame in {out}")


def _llm(pid: int, started: int, tool: str | None = None) -> LlmCall:
    calls = [ToolCall("t1", "bash", {"command": tool})] if tool else []
    return LlmCall(ts=started + 10, provider="anthropic", api="messages", model="m", stream=False, status=200,
                   method="POST", host="h", path="/v1/messages", request={"messages": []}, request_headers={},
                   response_headers={}, response=LlmResponse(text="ok", tool_calls=calls),
                   usage={"input_tokens": 3, "output_tokens": 4}, started_ns=started, first_token_ns=None,
                   ended_ns=started + 10, pid=pid, tid=pid, comm="agent", conn=1, side="client")


def test_feed_items_carry_the_same_keys_as_the_session_file(tmp_path):
    from agentsight.sinks.session import SessionWriter

    events = [Exec(100, 10, 10, "agent", 0, ppid=1, argv=["agent"]), _llm(10, 200, "echo hi > f"),
              Fork(300, 10, 10, "agent", 0, child_pid=11),
              Exec(310, 11, 11, "sh", 0, ppid=10, argv=["sh", "-c", "echo hi > f"], cwd="/w"),
              Open(320, 11, 11, "sh", 0, path="f", resolved="/w/f", flags=0o1101, ret=3),
              Exit(330, 11, 11, "sh", 0, exit_code=0, ppid=10),
              Link(310, ToolCallRef(10, 200, 0, "t1"), ProcessKey(11, 300), {"arguments": "argv is arguments.command"}),
              Link(320, ToolCallRef(10, 200, 0, "t1"), FileKey(11, 320, "write", "/w/f"), {"process": "by pid 11"}),
              Unexplained(330, ProcessKey(10, 100), "odd"),
              Fork(90, 10, 10, "agent", 0, child_pid=9), Exec(95, 9, 9, "git", 0, ppid=10, argv=["git", "status"]),
              Startup(95, ProcessKey(9, 90)),
              _llm(10, 400), ToolResult(400, ToolCallRef(10, 200, 0, "t1"), LlmCallRef(10, 400), duration_ns=390,
                                        is_error=False, size=3, where="messages[1].content[0]")]
    events[6] = Link(310, ToolCallRef(10, 200, 0, "t1"), ProcessKey(11, 300), {"arguments": "argv is arguments.command"},
                     role="shell")
    feed = WebFeed()
    page = feed.subscribe()
    feed.write(events)
    frames = _frames(page, "items")
    live = {}
    for kind, data in frames:
        for item in data.get("items", []):
            live.setdefault(item["id"], {}).update({k: v for k, v in item.items() if v is not None})
    feed.close(Outcome())
    assert _frames(page, "end")[-1] == ("end", {"status": "complete"})

    path = tmp_path / "s.db"
    writer = SessionWriter(str(path), {})
    writer.write(events)
    writer.close(Outcome())
    store = SessionStore(str(path))
    try:
        stored = {i["id"]: i for i in store.run("timeline")["items"]}
    finally:
        store.close()
    shell = process_id(11, 300)
    assert set(stored) == {call_id(10, 200), call_id(10, 400), process_id(10, 100), shell, "f:11:320",
                           process_id(9, 90)}
    assert set(stored) <= set(live)
    for key in (shell, "f:11:320"):
        for field in ("t0", "pid", "argv", "exit_code", "path", "proc", "parent"):
            assert live[key].get(field) == stored[key].get(field), (key, field)
    assert live[f"l:t:10:200:0:{shell}"]["tool"] == stored[call_id(10, 200)]["tools"][0]["id"]
    assert live[f"l:t:10:200:0:{shell}"]["item"]["argv"] == ["sh", "-c", "echo hi > f"]
    assert live["u:" + process_id(10, 100)]["reason"] == "odd" == stored[process_id(10, 100)]["unexplained"]
    assert live[f"l:t:10:200:0:{shell}"]["role"] == "shell" == stored[shell]["link"]["role"]
    assert stored["f:11:320"]["link"]["role"] == "command"
    assert live["s:" + process_id(9, 90)]["target"] == process_id(9, 90) and stored[process_id(9, 90)]["startup"]
    result = {"sent_ns": 400, "duration_ns": 390, "is_error": False, "size": 3}
    assert live["r:10:200:0"]["tool"] == "t:10:200:0" and live["r:10:200:0"]["result"] == result
    assert stored[call_id(10, 200)]["tools"][0]["result"] == result


def test_feed_never_makes_the_capture_wait(monkeypatch):
    """A page that stops reading, or a feed thread held up, costs the capture
    nothing: what does not fit is dropped and counted, and pages re-read."""
    monkeypatch.setattr(feed_module, "MAX_PENDING_EVENTS", 1000)
    monkeypatch.setattr(feed_module, "MAX_PAGE_FRAMES", 5)
    feed = WebFeed()
    stuck = feed.subscribe()
    reading = feed.subscribe()
    forks = [Fork(i, 10, 10, "agent", 0, child_pid=1000 + i) for i in range(100)]
    with feed._pages_lock:  # the feed's thread cannot hand anything to a page meanwhile
        started = time.perf_counter()
        for _ in range(50):
            feed.write(forks)
        took = time.perf_counter() - started
    assert took < 0.5, took
    # Kept: what fits the queue, and at most one queue's worth the feed's thread took before it had to wait.
    assert feed.dropped >= 50 * 100 - 2 * 1000
    assert feed.losses() == {"events_dropped": feed.dropped}
    seen = _frames(reading, "resync", timeout=5)
    assert ("resync", {"reason": "events were dropped"}) in seen
    def drained() -> None:
        deadline = time.monotonic() + 10
        while feed._pending and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)

    drained()
    stuck.take(0)
    for i in range(20):  # more batches than the stuck page has room for, one frame each
        feed.write([Fork(10_000 + i, 10, 10, "agent", 0, child_pid=20_000 + i)])
        drained()
    assert stuck.take(0) == [feed_module.frame("resync", {"reason": "this page fell behind"})]
    feed.close(Outcome())
