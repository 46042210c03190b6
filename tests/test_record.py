"""`record`, `report` and `export` with a real agent-like process tree."""
from __future__ import annotations

import json
import os
import signal
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
from support import REPO

pytestmark = pytest.mark.bpf

NOBODY = 65534
API_KEY = "sk-ant-api03-recordtestsecret0123456789"

AGENT = textwrap.dedent(
    """
    import json, ssl, subprocess, sys, urllib.request
    base, ca, side_url = sys.argv[1:4]
    ctx = ssl.create_default_context(cafile=ca)

    def ask(messages):
        body = json.dumps({"model": "claude-test", "max_tokens": 100, "messages": messages}).encode()
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
                                               "content": out.stdout}]}]
    second = ask(messages)
    # Something the model never asked for.
    subprocess.run(["curl", "-s", "-o", "/dev/null", side_url])
    print(second["content"][0]["text"])
    sys.exit(3)
    """ % API_KEY
)


class _Quiet(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"page\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def world():
    """A directory everyone can use, a plain HTTP server and the LLM mock."""
    shared = Path(tempfile.mkdtemp(prefix="agentsight-record-"))
    shared.chmod(0o777)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    with LLMMock() as mock:
        ca = shared / "ca.pem"
        ca.write_bytes(Path(mock.ca_file).read_bytes())
        ca.chmod(0o644)
        yield {"dir": shared, "http": f"http://127.0.0.1:{http.server_address[1]}", "mock": mock, "ca": ca}
    http.shutdown()
    http.server_close()


def _record(session: Path, *cmd: str, sudo_uid: int = NOBODY) -> subprocess.CompletedProcess:
    env = dict(os.environ, SUDO_UID=str(sudo_uid), SUDO_GID=str(sudo_uid), SUDO_USER="nobody")
    return subprocess.run([sys.executable, "-m", "agentsight", "record", "-o", str(session), "--", *cmd],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_tool_call_is_linked_to_what_it_caused(world, tmp_path):
    shared, mock = world["dir"], world["mock"]
    note = shared / "note.txt"
    command = f"echo recorded > {note} && curl -s -o /dev/null {world['http']}/tool"
    mock.queue = [Script(tool_name="bash", tool_args={"command": command}, tool_id="toolu_record_1"),
                  Script(text="Done: note saved.")]
    agent = shared / "agent.py"
    agent.write_text(AGENT)
    agent.chmod(0o644)
    # Busy outside the recorded tree the whole time.
    outsider = subprocess.Popen(["sh", "-c", f"for i in $(seq 40); do curl -s -o /dev/null {world['http']}/outside;"
                                 " sleep 0.05; done"])
    session = tmp_path / "session.db"
    try:
        result = _record(session, "/usr/bin/python3", str(agent), mock.base_url, str(world["ca"]),
                         world["http"] + "/side")
    finally:
        outsider.kill()
        outsider.wait()
    assert result.returncode == 3, result.stderr  # the agent's own exit status
    assert result.stdout.strip() == "Done: note saved."
    assert note.read_text() == "recorded\n"

    db = sqlite3.connect(session)
    rows = db.execute("SELECT pid, uid, argv FROM processes WHERE argv IS NOT NULL").fetchall()
    assert rows and {uid for _, uid, _ in rows} == {NOBODY}, rows  # the sudo caller, not root
    recorded_pids = {pid for pid, _, _ in db.execute("SELECT pid, uid, argv FROM processes")}
    assert outsider.pid not in recorded_pids
    assert not [a for _, _, a in rows if "/outside" in a]
    raw = db.execute("SELECT group_concat(event, '') FROM raw_events").fetchone()[0]
    assert "/outside" not in raw
    assert API_KEY not in raw

    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert report["session"]["status"] == "complete" and report["session"]["command_exit"] == 3
    assert report["session"]["incomplete"] == []
    first, second = report["llm_calls"]
    # The Messages API on a host that is not Anthropic's: a compatible API.
    assert (first["provider"], first["model"], first["input_tokens"], first["output_tokens"]) == \
        ("unknown", "claude-test", 12, 7)
    assert second["text"] == "Done: note saved." and second["tool_calls"] == []
    (tool,) = first["tool_calls"]
    assert tool["name"] == "bash" and tool["arguments"] == {"command": command}
    ran = {tuple(a["argv"]): a for a in tool["activity"] if a["kind"] == "process"}
    shell = ran[("/bin/sh", "-c", command)]
    assert shell["evidence"]["arguments"] == "argv is arguments.command" and shell["exit_code"] == 0
    curl = ran[("curl", "-s", "-o", "/dev/null", f"{world['http']}/tool")]
    assert "parent_linked" in curl["evidence"] or "arguments" in curl["evidence"]
    written = [a for a in tool["activity"] if a["kind"] == "file"]
    assert [(a["op"], a["path"]) for a in written] == [("write", str(note))]

    unexplained = report["unexplained"]["processes"]
    side = [p for p in unexplained if p["argv"][:1] == ["curl"]]
    assert [p["argv"][-1] for p in side] == [world["http"] + "/side"]
    assert side[0]["reason"] == "no tool call explains it"
    assert report["totals"]["llm_calls"] == 2
    assert report["totals"]["tokens_by_model"] == {"claude-test": {"input": 24, "output": 14}}

    text = subprocess.run([sys.executable, "-m", "agentsight", "report", str(session)],
                          capture_output=True, text=True, cwd=REPO, check=True).stdout
    lines = text.splitlines()
    tool_line = next(i for i, l in enumerate(lines) if l.strip().startswith("tool call bash"))
    unexplained_line = lines.index("Unexplained activity")
    assert tool_line < unexplained_line
    below_tool = "\n".join(lines[tool_line:unexplained_line])
    assert "shell  /bin/sh -c" in below_tool and "ran    curl" in below_tool and f"write  {note}" in below_tool
    assert f"{world['http']}/side" in "\n".join(lines[unexplained_line:])

    exported = subprocess.run([sys.executable, "-m", "agentsight", "export", str(session)],
                              capture_output=True, text=True, cwd=REPO, check=True).stdout.splitlines()
    types = [json.loads(line)["type"] for line in exported]
    assert types.count("llm_call") == 2 and "exec" in types and "ssl" in types


def test_exit_status_and_signal_pass_through(tmp_path):
    session = tmp_path / "s.db"
    result = _record(session, "sh", "-c", "exit 42")
    assert result.returncode == 42, result.stderr
    session2 = tmp_path / "s2.db"
    result = _record(session2, "sh", "-c", "kill -TERM $$")
    assert result.returncode == 128 + 15
    meta = dict(sqlite3.connect(session2).execute("SELECT key, value FROM meta").fetchall())
    assert json.loads(meta["command_exit"]) == "signal 15"


def test_missing_command_is_reported(tmp_path):
    result = _record(tmp_path / "s.db", "no-such-agent-command")
    assert result.returncode == 127
    assert result.stderr.strip() == "agentsight: no-such-agent-command: command not found"
    assert not (tmp_path / "s.db").exists()


def _kill_recorded(session: Path) -> None:
    """Ends the processes the recording left running: exactly those it recorded."""
    db = sqlite3.connect(session)
    for (pid,) in db.execute("SELECT DISTINCT pid FROM processes WHERE end_ns IS NULL"):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    db.close()


def test_sigterm_still_writes_a_readable_session(tmp_path):
    session = tmp_path / "s.db"
    env = dict(os.environ, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY))
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "-o", str(session), "--",
                             "sh", "-c", "ls / > /dev/null; sleep 30"],
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    for line in proc.stderr:
        if line.startswith("ready"):
            break
    time.sleep(0.5)
    proc.terminate()
    proc.wait(timeout=30)
    _kill_recorded(session)  # it holds our stderr pipe open
    proc.stderr.read()
    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert report["session"]["status"] == "stopped: SIGTERM"
    assert "the recording was SIGTERM" in report["session"]["incomplete"][0]
    assert "the command was still running when the recording stopped" in report["session"]["incomplete"]
    assert report["totals"]["commands"] >= 2  # sh, ls


def test_killed_recorder_leaves_a_session_that_says_so(tmp_path):
    session = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "-o", str(session), "--",
                             "sh", "-c", "ls / > /dev/null; sleep 30"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stderr:
        if line.startswith("ready"):
            break
    time.sleep(1.5)  # past a commit
    proc.kill()
    proc.wait()
    _kill_recorded(session)
    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert report["session"]["status"] == "recording"
    assert report["session"]["incomplete"][0].startswith("the recording did not finish")
    assert report["totals"]["commands"] >= 2


def test_ctrl_c_stops_the_recording_cleanly(tmp_path):
    """SIGINT: the command (here, not on a terminal, it does not get it) has two
    seconds to finish; then the recording stops and the session is written."""
    session = tmp_path / "s.db"
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                             "sh", "-c", "ls / > /dev/null; sleep 30"],
                            stderr=subprocess.PIPE, text=True, cwd=REPO)
    for line in proc.stderr:
        if line.startswith("ready"):
            break
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    _kill_recorded(session)
    proc.stderr.read()
    assert proc.returncode == 130
    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert report["session"]["status"] == "stopped: interrupted (SIGINT)"
    assert report["totals"]["commands"] >= 2


def test_live_view_on_a_terminal_leaves_the_command_output_alone(tmp_path):
    """On a terminal the last row shows the status; the command's own lines
    come through unchanged."""
    import fcntl
    import pty
    import struct
    import termios

    session = tmp_path / "s.db"
    main, sub = pty.openpty()
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "-o", str(session), "--",
                             "sh", "-c", "for i in 1 2 3; do echo line-$i; ls / > /dev/null; sleep 0.4; done"],
                            stdin=sub, stdout=sub, stderr=sub, cwd=REPO, env=dict(os.environ, TERM="xterm"))
    os.close(sub)
    output = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal closed: everyone is done
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert proc.wait(timeout=30) == 0
    text = output.decode(errors="replace")
    for i in (1, 2, 3):
        assert f"line-{i}\r\n" in text  # whole lines, untouched by the status row
    # All the counts fit in 80 columns.
    assert "agentsight ● 0 LLM calls · " in text and " commands · " in text and " 0 lost " in text
    assert "\x1b[1;" in text and "\x1b[r" in text  # scroll region set, then restored
