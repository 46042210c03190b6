"""Synthetic sessions for the web UI's tests and bench, written through the
real SessionWriter so their rows have exactly the recorder's shapes.

`build_session(path, megabytes)` writes an agent run shaped like a long
coding-agent session: a conversation that grows with every LLM call (the
request carries the whole history, as real agents send it), its raw TLS
payloads beside it, and for every tool call a shell that runs a few
programs and writes files, with the links and unexplained activity the
correlator would have stored.
"""
from __future__ import annotations

import random
from pathlib import Path

from agentsight.events import (
    Exec, Exit, FileKey, Fork, Link, LlmCall, LlmResponse, Open, ProcessKey, Startup, TlsData, ToolCall,
    ToolCallRef, Unexplained,
)
from agentsight.sinks.base import Outcome
from agentsight.sinks.session import SessionWriter

WORDS = ("the agent reads the file then decides which tool to call next because context windows are large "
         "and tool outputs are long so every request carries the conversation so far").split()
O_WRONLY_CREAT_TRUNC = 0o1101
AGENT_PID = 4000
T0 = 1_800_000_000_000_000_000


def _words(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def build_session(path: Path, megabytes: float, seed: int = 1, programs_per_tool: int = 12,
                  files_per_tool: int = 40, losses: bool = False) -> dict:
    """Writes a session of about `megabytes` MB at `path`; what it holds.
    `losses`: the second call's TLS stream lost bytes and the call is
    incomplete, and the ring buffer lost records."""
    rnd = random.Random(seed)
    writer = SessionWriter(str(path), {"command": ["agent", "--task", "synthetic"], "agentsight": "bench"})
    system = _words(rnd, 3000)  # about 20 KB, like a coding agent's system prompt
    tools = [{"name": f"tool_{i}", "description": _words(rnd, 80),
              "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}}} for i in range(30)]
    messages: list[dict] = []
    target = megabytes * 1e6
    ts = T0
    written = 0
    calls = processes = files = 0
    next_pid = AGENT_PID + 1
    writer.write([Exec(ts, AGENT_PID, AGENT_PID, "agent", 1000, ppid=1, filename="/usr/bin/agent",
                       argv=["agent", "--task", "synthetic"], cwd="/work")])
    # Before its first call the agent looks around: start-up.
    git = next_pid
    next_pid += 1
    writer.write([Fork(ts + 100, AGENT_PID, AGENT_PID, "agent", 1000, child_pid=git),
                  Exec(ts + 200, git, git, "git", 1000, ppid=AGENT_PID, filename="/usr/bin/git",
                       argv=["git", "status", "--porcelain"], cwd="/work"),
                  Startup(ts + 200, ProcessKey(git, ts + 100)),
                  Exit(ts + 300_000, git, git, "git", 1000, exit_code=0, ppid=AGENT_PID)])
    processes += 1
    while written < target:
        messages.append({"role": "user", "content": _words(rnd, 120) if not messages else [
            {"type": "tool_result", "tool_use_id": f"toolu_{calls - 1}", "content": _words(rnd, 400)}]})
        request = {"model": "claude-bench", "max_tokens": 4096, "system": system, "tools": tools,
                   "messages": list(messages), "stream": True}
        started = ts + 1_000_000
        ended = started + rnd.randint(800, 6000) * 1_000_000
        command = f"cd /work && make test-{calls} > out-{calls}.log && grep -c ok out-{calls}.log"
        text = _words(rnd, 60)
        response = LlmResponse(text=text, tool_calls=[ToolCall(f"toolu_{calls}", "bash", {"command": command})],
                               stop_reason="tool_use", thinking=f"thinking about step {calls}", model="claude-bench",
                               id=f"msg_{calls}")
        call = LlmCall(ts=ended, provider="anthropic", api="messages", model="claude-bench", stream=True, status=200,
                       method="POST", host="api.example.test", path="/v1/messages", request=request,
                       request_headers={"content-type": "application/json", "x-api-key": "[REDACTED]"},
                       response_headers={"content-type": "text/event-stream"}, response=response,
                       usage={"input_tokens": 1000 + 50 * calls, "output_tokens": 60 + calls % 90},
                       started_ns=started, first_token_ns=started + 300_000_000, ended_ns=ended, pid=AGENT_PID,
                       tid=AGENT_PID, comm="agent", conn=1, side="client",
                       incomplete_reason="bytes of the response were lost" if losses and calls == 1 else None)
        body = repr(request).encode()
        # The request as the TLS library saw it, in 16 KiB writes, and the streamed answer.
        raw = [TlsData(started + i, AGENT_PID, AGENT_PID, "agent", 1000, fn="SSL_write", dir="send", conn=1,
                       len=len(body[o:o + 16384]), data=body[o:o + 16384])
               for i, o in enumerate(range(0, len(body), 16384))]
        raw.append(TlsData(ended - 1, AGENT_PID, AGENT_PID, "agent", 1000, fn="SSL_read", dir="recv", conn=1,
                           len=len(text) + 400, data=(text * 4).encode()[:len(text) + 400],
                           gap=1234 if losses and calls == 1 else 0))
        written += 2 * len(body) + 2000
        writer.write(raw + [call])
        calls += 1
        messages.append({"role": "assistant", "content": [
            {"type": "text", "text": text},
            {"type": "tool_use", "id": f"toolu_{calls - 1}", "name": "bash", "input": {"command": command}}]})
        ref = ToolCallRef(AGENT_PID, started, 0, f"toolu_{calls - 1}")
        # The tool: a shell, the programs it runs, the files they write.
        ts = ended + 2_000_000
        shell = next_pid
        next_pid += 1
        batch: list = [Fork(ts, AGENT_PID, AGENT_PID, "agent", 1000, child_pid=shell),
                       Exec(ts + 100_000, shell, shell, "bash", 1000, ppid=AGENT_PID, filename="/bin/bash",
                            argv=["/bin/bash", "-c", command], cwd="/work")]
        shell_key = ProcessKey(shell, ts)
        batch.append(Link(ts, ref, shell_key, {"arguments": "argv is arguments.command"}))
        processes += 1
        t = ts + 200_000
        for j in range(programs_per_tool):
            pid = next_pid
            next_pid += 1
            batch += [Fork(t, shell, shell, "bash", 1000, child_pid=pid),
                      Exec(t + 50_000, pid, pid, "cc", 1000, ppid=shell, filename="/usr/bin/cc",
                           argv=["cc", "-O2", "-c", f"src/module_{j}.c", "-o", f"build/module_{j}.o"], cwd="/work"),
                      Link(t, ref, ProcessKey(pid, t), {"parent_linked": f"started by pid {shell}"})]
            for k in range(files_per_tool // programs_per_tool):
                fts = t + 100_000 + k * 10_000
                name = f"/work/build/module_{j}_{k}.o"
                batch.append(Open(fts, pid, pid, "cc", 1000, path=name, resolved=name, flags=O_WRONLY_CREAT_TRUNC,
                                  ret=3))
                batch.append(Link(fts, ref, FileKey(pid, fts, "write", name), {"process": f"by pid {pid}"}))
                files += 1
            t += rnd.randint(5, 40) * 1_000_000
            batch.append(Exit(t, pid, pid, "cc", 1000, exit_code=0, duration_ns=t - 50_000, ppid=shell))
            processes += 1
        if calls % 10 == 0:  # now and then the agent runs something by itself
            pid = next_pid
            next_pid += 1
            batch += [Fork(t, AGENT_PID, AGENT_PID, "agent", 1000, child_pid=pid),
                      Exec(t + 10_000, pid, pid, "curl", 1000, ppid=AGENT_PID, filename="/usr/bin/curl",
                           argv=["curl", "-s", "https://telemetry.example.test/ping"], cwd="/work"),
                      Unexplained(t, ProcessKey(pid, t), "no tool call explains it"),
                      Exit(t + 3_000_000, pid, pid, "curl", 1000, exit_code=0, ppid=AGENT_PID)]
            processes += 1
        t += 1_000_000
        batch.append(Exit(t, shell, shell, "bash", 1000, exit_code=0, ppid=AGENT_PID))
        writer.write(batch)
        writer.commit()
        ts = t + 1_000_000
    writer.write([Exit(ts, AGENT_PID, AGENT_PID, "agent", 1000, exit_code=0, ppid=1)])
    writer.close(Outcome(status="complete", counts={"llm_call": calls},
                         losses={"ring_full_records": 3} if losses else {}))
    return {"calls": calls, "processes": processes + 1, "files": files, "first_ns": T0, "last_ns": ts,
            "bytes": path.stat().st_size}
