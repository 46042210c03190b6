"""The session file: what the writer stores from typed events, and what the
reader and the report get back. No root needed."""
from __future__ import annotations

import sqlite3
import stat

import orjson
import pytest

from agentsight.errors import AgentsightError
from agentsight.events import (
    Exec, Exit, FileKey, FileOp, Fork, HttpExchange, Link, LlmCall, LlmResponse, Open, ProcessKey, TlsData, ToolCall,
    ToolCallRef, Unexplained,
)
from agentsight.sinks.base import Outcome
from agentsight.sinks.session import SessionWriter, open_session, read_meta
from agentsight.ui.report import build_report, export_events, render_text

T0 = 1_700_000_000_000_000_000
AGENT, SHELL, CURL = 100, 101, 102


def task(ts: int, pid: int, comm: str) -> tuple[int, int, int, str, int]:
    return (T0 + ts, pid, pid, comm, 1000)


def llm_call(started: int, ended: int, tool_calls: list[ToolCall], text: str = "") -> LlmCall:
    return LlmCall(
        ts=T0 + ended, provider="anthropic", api="messages", model="claude-x", stream=False, status=200,
        method="POST", host="api.anthropic.com", path="/v1/messages", request={"messages": []},
        request_headers={}, response_headers={}, response=LlmResponse(text=text, tool_calls=tool_calls),
        usage={"input_tokens": 10, "output_tokens": 4}, started_ns=T0 + started, first_token_ns=None,
        ended_ns=T0 + ended, pid=AGENT, tid=AGENT, comm="agent", conn=1, side="client")


def events() -> list[object]:
    tool = ToolCall("toolu_1", "bash", {"command": "echo hi > out.txt; curl -s x"})
    call = llm_call(10, 20, [tool])
    shell_key, curl_key = ProcessKey(SHELL, T0 + 30), ProcessKey(CURL, T0 + 40)
    ref = ToolCallRef(AGENT, T0 + 10, 0, "toolu_1")
    out_file = FileKey(SHELL, T0 + 35, "write", "/w/out.txt")
    return [
        Exec(*task(0, AGENT, "agent"), ppid=1, filename="/usr/bin/python3", argv=["python3", "agent.py"], cwd="/w"),
        TlsData(*task(10, AGENT, "agent"), fn="SSL_write", dir="send", conn=1, len=4, data=b"POST"),
        call,
        Fork(*task(30, AGENT, "agent"), child_pid=SHELL),
        Exec(*task(30, SHELL, "sh"), ppid=AGENT, filename="/bin/sh", argv=["sh", "-c", "echo hi > out.txt; curl -s x"],
             cwd="/w"),
        Open(*task(35, SHELL, "sh"), path="out.txt", resolved="/w/out.txt", flags=0o1101, ret=3),
        Open(*task(36, SHELL, "sh"), path="/etc/hosts", resolved="/etc/hosts", flags=0, ret=3),  # a read: no change
        Fork(*task(40, SHELL, "sh"), child_pid=CURL),
        Exec(*task(40, CURL, "curl"), ppid=SHELL, filename="/usr/bin/curl", argv=["curl", "-s", "x"], cwd="/w"),
        Exit(*task(50, CURL, "curl"), exit_code=0, duration_ns=10),
        Exit(*task(55, SHELL, "sh"), exit_code=0, duration_ns=25),
        FileOp(*task(60, AGENT, "agent"), op="unlink", path="/w/stray", resolved="/w/stray"),
        HttpExchange(ts=T0 + 61, method="GET", host="example.com", path="/x", status=200, request_size=0,
                     response_size=5, started_ns=T0 + 60, ended_ns=T0 + 61, pid=CURL, tid=CURL, comm="curl",
                     conn=2, side="client"),
        llm_call(70, 80, [], text="done"),
        Link(T0 + 30, ref, shell_key, {"arguments": "argv is arguments.command"}),
        Link(T0 + 40, ref, curl_key, {"parent_linked": "started by pid 101, linked to this tool call"}),
        Link(T0 + 35, ref, out_file, {"process": "by pid 101, linked to this tool call"}),
        Unexplained(T0 + 60, FileKey(AGENT, T0 + 60, "unlink", "/w/stray"), "no tool call explains it"),
    ]


@pytest.fixture
def session(tmp_path):
    path = tmp_path / "s.db"
    writer = SessionWriter(str(path), {"command": ["python3", "agent.py"]})
    writer.write(events())
    writer.close(Outcome(status="complete", losses={"ring_full_records": 2, "ring_full_bytes": 300},
                         stats={"llm.incomplete": 0}), command_exit=0, root_pids=[AGENT])
    return path


def test_rows_written_from_events(session):
    db = sqlite3.connect(session)
    procs = db.execute("SELECT pid, ppid, argv, start_ns, exec_ns, exit_code FROM processes ORDER BY id").fetchall()
    assert [(p[0], p[1], orjson.loads(p[2])) for p in procs] == [
        (AGENT, 1, ["python3", "agent.py"]), (SHELL, AGENT, ["sh", "-c", "echo hi > out.txt; curl -s x"]),
        (CURL, SHELL, ["curl", "-s", "x"])]
    # A fork that exec'd is one row: started at the fork, its program from the exec.
    assert procs[1][3:5] == (T0 + 30, T0 + 30) and procs[2][5] == 0
    files = db.execute("SELECT pid, op, path FROM file_activity ORDER BY id").fetchall()
    assert files == [(SHELL, "write", "/w/out.txt"), (AGENT, "unlink", "/w/stray")]
    links = db.execute("SELECT kind, target_id FROM links ORDER BY id").fetchall()
    assert [k for k, _ in links] == ["process", "process", "file"]
    assert db.execute("SELECT kind, reason FROM unexplained").fetchall() == [("file", "no tool call explains it")]
    raw_types = [r[0] for r in db.execute("SELECT type FROM raw_events ORDER BY id")]
    assert raw_types.count("ssl") == 1 and raw_types.count("exec") == 3 and "http" not in raw_types
    assert db.execute("SELECT COUNT(*) FROM http_exchanges").fetchone()[0] == 1
    assert stat.S_IMODE(session.stat().st_mode) == 0o600
    assert not session.with_name("s.db-wal").exists()  # one self-contained file once closed


def test_report_renders_what_was_stored(session):
    db = open_session(str(session))
    meta = read_meta(db)
    assert meta["status"] == "complete" and meta["losses"]["ring_full_records"] == 2
    report = build_report(db, str(session))
    (first, second) = report["llm_calls"]
    (tc,) = first["tool_calls"]
    assert tc["id"] == "toolu_1" and tc["arguments"]["command"].startswith("echo hi")
    assert [(a["kind"], a.get("pid"), a.get("path")) for a in tc["activity"]] == [
        ("process", SHELL, None), ("process", CURL, None), ("file", SHELL, "/w/out.txt")]
    assert tc["activity"][0]["evidence"]["arguments"] == "argv is arguments.command"
    assert second["text"] == "done" and second["tool_calls"] == []
    assert report["unexplained"]["files"] == [{"op": "unlink", "path": "/w/stray", "new_path": None, "pid": AGENT,
                                               "ts": T0 + 60, "reason": "no tool call explains it"}]
    assert report["unexplained"]["processes"] == []
    assert report["totals"]["tokens_by_model"] == {"claude-x": {"input": 20, "output": 8}}
    assert "2 records (300 bytes) were lost in a full ring buffer" in report["session"]["incomplete"][0]
    text = render_text(report)
    assert "tool call bash" in text and "ran    sh -c 'echo hi > out.txt; curl -s x'" in text
    assert "write  /w/out.txt" in text and "unlink /w/stray  (pid 100)" in text


def test_export_is_every_event_in_time_order(session):
    import io

    out = io.BytesIO()
    n = export_events(open_session(str(session)), out)
    lines = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert n == len(lines) == 14  # the 11 raw events, two llm_calls and the http exchange
    assert [e["ts"] for e in lines] == sorted(e["ts"] for e in lines)


def test_a_session_being_written_is_readable_after_each_commit(tmp_path):
    path = tmp_path / "live.db"
    writer = SessionWriter(str(path), {"command": ["x"]})
    writer.write(events()[:3])
    assert open_session(str(path)).execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0] == 0
    writer.tick(writer._last_commit + SessionWriter.COMMIT_SECONDS)
    reader = open_session(str(path))
    assert reader.execute("SELECT COUNT(*) FROM llm_calls").fetchone()[0] == 1
    assert build_report(reader, str(path))["session"]["status"] == "recording"
    writer.close(Outcome(status="stopped: SIGTERM"))  # a reader still has it open: closing works all the same
    assert read_meta(open_session(str(path)))["status"] == "stopped: SIGTERM"


def test_links_to_activity_never_stored_are_counted_not_written(tmp_path):
    path = tmp_path / "s.db"
    writer = SessionWriter(str(path), {})
    writer.write([Link(T0, ToolCallRef(AGENT, T0, 0, "x"), ProcessKey(999, T0), {})])
    assert writer.losses() == {"links.unresolved": 1}
    writer.close(Outcome())


def test_not_a_session(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(AgentsightError, match="is not an agentsight session"):
        open_session(str(junk))
    with pytest.raises(AgentsightError, match="no such file"):
        open_session(str(tmp_path / "absent.db"))
