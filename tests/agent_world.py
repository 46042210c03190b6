"""Hand-built agent sessions as agentsight.events objects, for the linker.

    w = World()
    agent = w.start_agent(["node", "cli.js"])
    call = w.llm(agent, tools=[("toolu_1", "Bash", {"command": "ls"})])
    shell = w.spawn(agent, ["/bin/bash", "-c", "ls"])
    ...
    w.llm(agent, results=["toolu_1"])          # the next request carries the result
    out = w.correlate()                          # what the Correlator emitted, in order

Time moves on by a millisecond per event unless told otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agentsight.analyzers.correlate import Correlator
from agentsight.events import (
    Exec, Exit, FileOp, Fork, Link, LlmCall, LlmResponse, Open, ProcessKey, Startup, TlsData, ToolCall, ToolResult,
    Unexplained,
)

T0 = 1_750_000_000_000_000_000
O_WRITE = 0o1 | 0o100 | 0o1000  # O_WRONLY | O_CREAT | O_TRUNC
O_APPEND_WRITE = 0o1 | 0o100 | 0o2000


@dataclass
class World:
    t: int = T0
    events: list[Any] = field(default_factory=list)
    next_pid: int = 1000
    keys: dict[int, ProcessKey] = field(default_factory=dict)  # pid -> what it runs now
    forked: set[int] = field(default_factory=set)  # forked, not exec'd yet
    history: list[dict[str, Any]] = field(default_factory=list)  # the conversation so far (Anthropic shape)
    api: str = "messages"
    provider: str = "anthropic"

    def tick(self, ms: float = 1.0) -> int:
        self.t += int(ms * 1_000_000)
        return self.t

    def pid(self) -> int:
        self.next_pid += 1
        return self.next_pid

    def start_agent(self, argv: list[str], pid: int | None = None) -> int:
        pid = pid or self.pid()
        self.exec(pid, argv, ppid=1)
        return pid

    def exec(self, pid: int, argv: list[str], ppid: int = 0, ms: float = 1.0) -> ProcessKey:
        ts = self.tick(ms)
        self.events.append(Exec(ts, pid, pid, argv[0].rsplit("/", 1)[-1][:15], 1000, ppid=ppid, filename=argv[0],
                                argv=list(argv), cwd="/w"))
        if pid in self.forked:  # a forked child runs its own program: the same process
            self.forked.discard(pid)
        else:
            self.keys[pid] = ProcessKey(pid, ts)
        return self.keys[pid]

    def fork(self, parent: int, ms: float = 1.0) -> int:
        child = self.pid()
        ts = self.tick(ms)
        self.events.append(Fork(ts, parent, parent, "fork", 1000, child_pid=child))
        self.keys[child] = ProcessKey(child, ts)
        self.forked.add(child)
        return child

    def spawn(self, parent: int, argv: list[str], ms: float = 1.0) -> int:
        """fork + exec, as every shell and subprocess does."""
        child = self.fork(parent, ms)
        self.exec(child, argv, ppid=parent, ms=0.1)
        return child

    def key(self, pid: int) -> ProcessKey:
        return self.keys[pid]

    def exit(self, pid: int, code: int = 0, ms: float = 1.0) -> None:
        ts = self.tick(ms)
        self.events.append(Exit(ts, pid, pid, "x", 1000, exit_code=code))

    def write(self, pid: int, path: str, append: bool = False, ms: float = 1.0) -> int:
        ts = self.tick(ms)
        self.events.append(Open(ts, pid, pid, "w", 1000, path=path, resolved=path,
                                flags=O_APPEND_WRITE if append else O_WRITE, ret=3))
        return ts

    def read(self, pid: int, path: str, ms: float = 1.0) -> None:
        ts = self.tick(ms)
        self.events.append(Open(ts, pid, pid, "r", 1000, path=path, resolved=path, flags=0, ret=3))

    def rename(self, pid: int, src: str, dst: str, ms: float = 1.0) -> int:
        ts = self.tick(ms)
        self.events.append(FileOp(ts, pid, pid, "mv", 1000, op="rename", path=src, resolved=src, new_path=dst,
                                  new_resolved=dst, ret=0))
        return ts

    def unlink(self, pid: int, path: str, ms: float = 1.0) -> int:
        ts = self.tick(ms)
        self.events.append(FileOp(ts, pid, pid, "rm", 1000, op="unlink", path=path, resolved=path, ret=0))
        return ts

    def llm(self, pid: int, tools: list[tuple[str | None, str, Any]] = (), results: list[str] = (),
            text: str = "", ms: float = 200.0, request: Any = None, append: bool = True,
            usage: dict[str, int] | None = None, first_token_ms: float | None = None,
            model: str = "claude-test") -> LlmCall:
        """One LLM call by pid: its request carries `results` (tool call ids)
        back; its response asks for `tools`."""
        started = self.tick(1)
        # the request's first bytes and the response's last, as the TLS probes see them
        self.events.append(TlsData(started, pid, pid, "agent", 1000, fn="SSL_write", dir="send", conn=1, len=4,
                                   data=b"POST"))
        if request is None:
            if results:
                self.history.append({"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": r, "content": f"output of {r}"} for r in results]})
            elif not self.history:
                self.history.append({"role": "user", "content": "do the task"})
            request = {"model": "claude-test", "max_tokens": 100, "messages": list(self.history)}
        first = started + int(first_token_ms * 1_000_000) if first_token_ms is not None else None
        ended = self.tick(ms)
        self.events.append(TlsData(ended, pid, pid, "agent", 1000, fn="SSL_read", dir="recv", conn=1, len=1,
                                   data=b"}"))
        response = LlmResponse(text=text, tool_calls=[ToolCall(i, n, a) for i, n, a in tools])
        if append and request is not None and self.api == "messages":
            blocks: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            blocks += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in tools]
            self.history.append({"role": "assistant", "content": blocks})
        call = LlmCall(ts=ended, provider=self.provider, api=self.api, model=model, stream=first is not None,
                       status=200, method="POST", host="api.example", path="/v1/messages", request=request,
                       request_headers={}, response_headers={}, response=response, usage=usage or {},
                       started_ns=started, first_token_ns=first, ended_ns=ended, pid=pid, tid=pid, comm="agent", conn=1,
                       side="client")
        self.events.append(call)
        return call

    def correlate(self, roots: set[int] | None = None, close: bool = True,
                  events: list[Any] | None = None) -> list[Any]:
        c = Correlator(roots)
        out: list[Any] = []
        for ev in events if events is not None else self.events:
            out += c.feed(ev)
        if close:
            out += c.close()
        return out

    def session(self, path: str, roots: set[int] | None = None) -> str:
        """A session file of these events, as `record` writes it."""
        from agentsight.sinks.base import Outcome
        from agentsight.sinks.session import SessionWriter

        c = Correlator(roots)
        batch: list[Any] = []
        for ev in self.events:
            batch.append(ev)
            batch += c.feed(ev)
        batch += c.close()
        writer = SessionWriter(path, {"command": ["agent"]})
        writer.write(batch)
        writer.close(Outcome(extra={"command_exit": 0}))
        return path

    def steps(self, roots: set[int] | None = None) -> list[tuple[Any, list[Any]]]:
        """Each event fed, with what the Correlator emitted right then."""
        c = Correlator(roots)
        return [(ev, c.feed(ev)) for ev in self.events] + [(None, c.close())]


def links(out: list[Any]) -> list[Link]:
    return [e for e in out if isinstance(e, Link)]


def link_of(out: list[Any], target: Any) -> Link:
    found = [e for e in out if isinstance(e, Link) and e.target == target]
    assert len(found) == 1, (target, found)
    return found[0]


def process_links(out: list[Any]) -> dict[int, Link]:
    found: dict[int, Link] = {}
    for e in out:
        if isinstance(e, Link) and isinstance(e.target, ProcessKey):
            assert e.target.pid not in found or found[e.target.pid].target != e.target, e
            found[e.target.pid] = e
    return found


def file_links(out: list[Any]) -> dict[str, Link]:
    found: dict[str, Link] = {}
    for e in out:
        if isinstance(e, Link) and not isinstance(e.target, ProcessKey):
            found[f"{e.target.op} {e.target.path}"] = e
    return found


def unexplained(out: list[Any]) -> list[Unexplained]:
    return [e for e in out if isinstance(e, Unexplained)]


def startup(out: list[Any]) -> list[Startup]:
    return [e for e in out if isinstance(e, Startup)]


def results(out: list[Any]) -> list[ToolResult]:
    return [e for e in out if isinstance(e, ToolResult)]
