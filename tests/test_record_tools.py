"""`record` of an agent that runs its model's tool calls the way agent CLIs
do: each shell command wrapped in a `bash -c` script (an `eval '…'` with a
prelude and an epilogue, a `( trap … EXIT; CMD )` subshell, an
`env bash -lc` login shell), and a file tool it carries out itself through
a temporary file renamed over the target."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from llm_mock import LLMMock, Script
from support import REPO, HttpsServer

pytestmark = pytest.mark.bpf

NOBODY = 65534

AGENT = textwrap.dedent(
    r"""
    import json, os, ssl, subprocess, sys, urllib.request
    base, ca, work = sys.argv[1:4]
    ctx = ssl.create_default_context(cafile=ca)

    def ask(messages):
        body = json.dumps({"model": "claude-test", "max_tokens": 100, "messages": messages}).encode()
        req = urllib.request.Request(base + "/v1/messages", data=body, headers={
            "content-type": "application/json", "x-api-key": "sk-test", "anthropic-version": "2023-06-01"})
        with urllib.request.urlopen(req, context=ctx) as r:
            return json.load(r)

    def eval_wrapper(cmd):
        quoted = cmd.replace("'", "'\\''")
        return ["/bin/bash", "-c", f"source {work}/snapshot.sh 2>/dev/null || true && "
                f"shopt -u extglob 2>/dev/null || true && eval '{quoted}' < /dev/null && pwd -P >| {work}/agent-cwd"]

    def subshell_wrapper(cmd):
        return ["/usr/bin/bash", "-c", "shopt -u promptvars nullglob extglob nocaseglob dotglob; "
                f"_bgpids_file={work}/bgpids.tmp\n(\n  trap 'jobs -p > \"$_bgpids_file\"' EXIT\n{cmd}\n)\n"
                "__code=$?\nexit $__code"]

    def login_wrapper(cmd):
        return ["/usr/bin/env", "bash", "-lc", cmd]

    wrappers = [eval_wrapper, subshell_wrapper, login_wrapper]
    subprocess.run(["uname", "-a"], capture_output=True)  # a start-up probe, before any LLM call
    messages = [{"role": "user", "content": "run the checks, then save the summary"}]
    while True:
        reply = ask(messages)
        messages.append({"role": "assistant", "content": reply["content"]})
        uses = [b for b in reply["content"] if b["type"] == "tool_use"]
        if not uses:
            break
        results = []
        for use in uses:
            if use["name"] == "Write":  # done in-process: a temporary file renamed over the target
                target = use["input"]["file_path"]
                tmp = f"{target}.tmp.{os.getpid()}"
                with open(tmp, "w") as f:
                    f.write(use["input"]["content"])
                os.rename(tmp, target)
                out = "written"
            else:
                argv = wrappers.pop(0)(use["input"]["command"])
                done = subprocess.run(argv, capture_output=True, text=True)
                out = done.stdout + done.stderr
            results.append({"type": "tool_result", "tool_use_id": use["id"], "content": out})
        messages.append({"role": "user", "content": results})
    print(reply["content"][0]["text"])
    """
)


@pytest.fixture
def world():
    shared = Path(tempfile.mkdtemp(prefix="agentsight-tools-"))
    shared.chmod(0o777)
    https = HttpsServer(shared)
    with LLMMock() as mock:
        ca = shared / "mock-ca.pem"
        ca.write_bytes(Path(mock.ca_file).read_bytes())
        for p in (ca, https.cert):
            p.chmod(0o644)
        yield {"dir": shared, "https": https, "mock": mock, "ca": ca}
    https.close()
    shutil.rmtree(shared, ignore_errors=True)


def _command(shape: str, world: dict) -> str:
    """A command with a quote in it, a redirect, and a curl to the local HTTPS server."""
    work, https = world["dir"], world["https"]
    return (f"echo \"it's the {shape} shape\" > {work}/{shape}.txt && "
            f"curl -s --cacert {https.cert} -o /dev/null {https.url}/{shape}")


def test_wrapped_tool_commands_and_a_file_tool_are_linked(world, tmp_path):
    work, mock = world["dir"], world["mock"]
    shapes = ["eval", "subshell", "login"]
    commands = {shape: _command(shape, world) for shape in shapes}
    summary = work / "summary.md"
    mock.queue = [Script(text="", tool_name="Bash", tool_args={"command": commands[s], "description": s},
                         tool_id=f"toolu_{s}") for s in shapes]
    mock.queue += [Script(text="", tool_name="Write", tool_args={"file_path": str(summary), "content": "all good\n"},
                          tool_id="toolu_write"),
                   Script(text="All three checks ran.\nThe summary is saved.")]
    agent = work / "agent.py"
    agent.write_text(AGENT)
    agent.chmod(0o644)
    session = tmp_path / "session.db"
    env = dict(os.environ, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY), SUDO_USER="nobody")
    result = subprocess.run([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                             "/usr/bin/python3", str(agent), mock.base_url, str(world["ca"]), str(work)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "The summary is saved."
    for shape in shapes:
        assert (work / f"{shape}.txt").read_text() == f"it's the {shape} shape\n"
    assert summary.read_text() == "all good\n"

    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert report["session"]["status"] == "complete" and report["session"]["incomplete"] == []
    calls = report["llm_calls"]
    assert len(calls) == 5
    tools = {tc["id"]: tc for c in calls for tc in c["tool_calls"]}
    assert set(tools) == {f"toolu_{s}" for s in shapes} | {"toolu_write"}

    how = {"eval": "is embedded in this shell's script (inside eval)",
           "subshell": "is embedded in this shell's script (verbatim)",
           "login": "argv is arguments.command"}
    for shape in shapes:
        tool = tools[f"toolu_{shape}"]
        activity = tool["activity"]
        shells = [a for a in activity if a["kind"] == "process" and a["role"] == "shell"]
        assert shells, (shape, activity)
        assert how[shape] in shells[0]["evidence"]["arguments"], shells[0]
        curls = [a for a in activity if a["kind"] == "process" and a["argv"] and a["argv"][0] == "curl"]
        assert len(curls) == 1 and curls[0]["argv"][-1] == f"{world['https'].url}/{shape}", activity
        assert curls[0]["role"] == "command" and "a command of the tool's command" in curls[0]["evidence"]["arguments"]
        assert curls[0]["exit_code"] == 0
        written = [a for a in activity if a["kind"] == "file" and a["path"] == str(work / f"{shape}.txt")]
        assert len(written) == 1, activity
        assert written[0]["role"] == "command"
        assert written[0]["evidence"]["arguments"].startswith("a redirect target of the tool's command")
        # nothing of the command is anyone else's
        assert all(a["role"] in ("shell", "command", "wrapper") for a in activity)
        assert tool["result"]["sent_ns"] > 0 and tool["result"]["duration_ms"] > 0
    eval_files = {a["path"]: a for a in tools["toolu_eval"]["activity"] if a["kind"] == "file"}
    assert eval_files[str(work / "agent-cwd")]["role"] == "wrapper"
    sub_files = {a["path"]: a for a in tools["toolu_subshell"]["activity"] if a["kind"] == "file"}
    assert sub_files[str(work / "bgpids.tmp")]["role"] == "wrapper"
    login_ran = [a for a in tools["toolu_login"]["activity"] if a["kind"] == "process" and a["argv"]]
    assert any(a["argv"][0] == "/usr/bin/env" for a in login_ran)
    assert any(a["argv"][:2] == ["id", "-u"] and a["role"] == "wrapper" for a in login_ran), login_ran

    write = {(a["op"], a["path"]): a for a in tools["toolu_write"]["activity"] if a["kind"] == "file"}
    tmp = f"{summary}.tmp."
    (tmp_write,) = [a for (op, path), a in write.items() if op == "write" and path.startswith(tmp)]
    assert tmp_write["evidence"]["arguments"].startswith("a temporary file pid")
    assert tmp_write["evidence"]["arguments"].endswith(f"renamed over {summary} (path is arguments.file_path)")
    (rename,) = [a for (op, _), a in write.items() if op == "rename"]
    assert rename["new_path"] == str(summary)
    assert rename["evidence"]["arguments"] == "rename target is arguments.file_path"
    assert tools["toolu_write"]["result"]["duration_ms"] > 0

    assert report["unexplained"] == {"processes": [], "files": []}
    assert [p["argv"][:1] for p in report["startup"]["processes"]] == [["uname"]]
    last = calls[-1]
    assert last["input"]["kind"] == "tool_results"
    assert last["input"]["tool_results"][0]["content"] == "written"
    assert last["text"] == "All three checks ran.\nThe summary is saved."
    assert all(c["latency_ms"] > 0 for c in calls)

    text = subprocess.run([sys.executable, "-m", "agentsight", "report", str(session)],
                          capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "0.00 s" not in text
    assert "Start-up (before the first LLM call)" in text and "ran uname -a" in text
    assert "← user: run the checks, then save the summary" in text
    assert "→ assistant: All three checks ran." in text
    blocks = text.split("\n      tool call ")
    for shape in shapes:
        (block,) = [b for b in blocks if b.startswith(f"Bash toolu_{shape} ")]
        assert "shell  " in block and "ran    curl" in block and f"write  {work}/{shape}.txt" in block
    assert f"wrapper: write  {work}/agent-cwd" in text
    assert "Unexplained activity\n  none" in text


KILLED_AGENT = textwrap.dedent(
    r"""
    import json, ssl, subprocess, sys, time, urllib.request
    base, ca, work = sys.argv[1:4]
    ctx = ssl.create_default_context(cafile=ca)

    def ask(messages):
        body = json.dumps({"model": "claude-test", "max_tokens": 100, "messages": messages}).encode()
        req = urllib.request.Request(base + "/v1/messages", data=body, headers={
            "content-type": "application/json", "x-api-key": "sk-test", "anthropic-version": "2023-06-01"})
        with urllib.request.urlopen(req, context=ctx) as r:
            return json.load(r)

    messages = [{"role": "user", "content": "note it"}]
    reply = ask(messages)
    use = next(b for b in reply["content"] if b["type"] == "tool_use")
    quoted = use["input"]["command"].replace("'", "'\\''")
    subprocess.run(["/bin/bash", "-c", f"eval '{quoted}' < /dev/null && pwd -P >| {work}/agent-cwd"])
    messages += [{"role": "assistant", "content": reply["content"]},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use["id"], "content": ""}]}]
    ask(messages)
    print("asked", flush=True)
    time.sleep(60)  # still running when the recorder is killed
    """
)


def test_a_killed_recording_keeps_the_links_decided_so_far(world, tmp_path):
    """Links are made as the recording goes: once the result went back, a
    recorder killed with SIGKILL a commit later has stored them."""
    import signal
    import sqlite3
    import time

    work, mock = world["dir"], world["mock"]
    command = f"echo \"it's noted\" > {work}/note.txt"
    mock.queue = [Script(text="", tool_name="Bash", tool_args={"command": command}, tool_id="toolu_note"),
                  Script(text="Noted.")]
    agent = work / "agent.py"
    agent.write_text(KILLED_AGENT)
    agent.chmod(0o644)
    session = tmp_path / "session.db"
    env = dict(os.environ, SUDO_UID=str(NOBODY), SUDO_GID=str(NOBODY), SUDO_USER="nobody")
    proc = subprocess.Popen([sys.executable, "-m", "agentsight", "record", "--no-live", "-o", str(session), "--",
                             "/usr/bin/python3", str(agent), mock.base_url, str(world["ca"]), str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        assert proc.stdout.readline().strip() == "asked"
        deadline = time.monotonic() + 20
        linked = 0
        while time.monotonic() < deadline and not linked:
            time.sleep(0.3)
            db = sqlite3.connect(session)
            try:
                linked = db.execute("SELECT COUNT(*) FROM links").fetchone()[0]
            except sqlite3.OperationalError:
                linked = 0
            db.close()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        db = sqlite3.connect(session)
        for (pid,) in db.execute("SELECT DISTINCT pid FROM processes WHERE end_ns IS NULL"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        db.close()
    report = json.loads(subprocess.run([sys.executable, "-m", "agentsight", "report", str(session), "--json"],
                                       capture_output=True, text=True, cwd=REPO, check=True).stdout)
    assert report["session"]["status"] == "recording"
    (tool,) = [tc for c in report["llm_calls"] for tc in c["tool_calls"]]
    roles = {(a["kind"], a["path"] if a["kind"] == "file" else a["argv"][0]): a["role"] for a in tool["activity"]}
    assert roles[("process", "/bin/bash")] == "shell"
    assert roles[("file", str(work / "note.txt"))] == "command"
    assert roles[("file", str(work / "agent-cwd"))] == "wrapper"
    assert tool["result"]["duration_ms"] > 0
