"""Linking what an agent did to the tool calls its model asked for.

Deterministic and explained: each link carries the evidence that matched.

- Time: a tool call can only explain activity that starts after the model's
  response ended and before the same process's next LLM call (which
  carries the tool's result back).
- Lineage: the activity comes from a descendant of the process that made
  the LLM call; the descendants of a linked process are linked too.
- Arguments: a process whose argv is a command string of the tool call
  (`sh -c "<command>"`), or whose program and arguments all appear in one;
  a file whose path is a path argument of the tool call.

Processes of the agent's tree that no tool call explains are reported as
`Unexplained`: the "agent ran curl by itself" case. The agent's tree is the
recorded command's (`roots`), or, without roots, the processes that made LLM
calls and their descendants.

`Correlator` is a sans-I/O stage: feed it events in capture order; close()
returns the links and the unexplained activity.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..events import Exec, Exit, FileKey, FileOp, Fork, Link, LlmCall, Open, ProcessKey, ToolCallRef, Unexplained

MAX_DEPTH = 64
MAX_PROCESSES = 1 << 20  # programs remembered; beyond this new ones are counted, not linked
MAX_FILE_CHANGES = 1 << 20

O_ACCMODE, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0o3, 0o1, 0o2, 0o100, 0o1000
# Devices and kernel interfaces: opened for writing all the time, never files changed.
PSEUDO_FILE_PREFIXES = ("/dev/", "/proc/", "/sys/")


def file_change(ev: Open | FileOp) -> FileKey | None:
    """The file change an event is, if it is one: an open that may have
    written (write access, O_CREAT or O_TRUNC), or an unlink, rmdir, rename."""
    if ev.ret < 0:
        return None
    if isinstance(ev, FileOp):
        return FileKey(ev.pid, ev.ts, ev.op, ev.resolved or ev.path)
    path = ev.resolved or ev.path
    if path.startswith(PSEUDO_FILE_PREFIXES):
        return None
    flags = ev.flags
    if flags & O_ACCMODE in (O_WRONLY, O_RDWR) or flags & (O_CREAT | O_TRUNC):
        return FileKey(ev.pid, ev.ts, "write", path)
    return None


@dataclass
class Process:
    """One program a process ran (a fork that never exec'd is one too)."""

    key: ProcessKey
    ppid: int | None
    argv: list[str] | None  # None: forked, never exec'd
    exec_ns: int | None = None


@dataclass
class _Change:
    key: FileKey
    new_path: str | None = None


@dataclass
class _Call:
    pid: int
    started_ns: int
    ended_ns: int
    tool_calls: list[tuple[ToolCallRef, Any]] = field(default_factory=list)


def _strings(value: Any, where: str = "arguments") -> list[tuple[str, str]]:
    """Every string inside a tool call's arguments, with where it was."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{where}[{i}]")]
    return []


def _argv_evidence(argv: list[str], strings: list[tuple[str, str]]) -> tuple[int, str] | None:
    """(strength, why) when argv is the command a tool call asked for."""
    best = None
    for where, text in strings:
        if argv and (argv[-1] == text or " ".join(argv) == text):
            return 3, f"argv is {where}"
        program = os.path.basename(argv[0]) if argv else ""
        words = text.replace(";", " ").replace("&", " ").replace("|", " ").split()
        if program and program in {os.path.basename(w) for w in words} and all(a in text for a in argv[1:]):
            best = best or (2, f"program and arguments appear in {where}")
    return best


def _path_evidence(path: str | None, strings: list[tuple[str, str]]) -> str | None:
    """Why a changed file is the one a tool call named, if it is."""
    if not path:
        return None
    name = os.path.basename(path)
    for where, text in strings:
        t = text.strip()
        if path == t or (t and " " not in t and path.endswith("/" + t.lstrip("./"))):
            return f"path is {where}"
        if name and name in t.split():  # e.g. "echo hi > out.txt"
            return f"file name {name} appears in {where}"
    return None


class Correlator:
    """Links and unexplained activity from the events of one run.

    `roots`: the pids of the recorded command (its tree is the agent's);
    None: every process that made an LLM call is an agent."""

    def __init__(self, roots: set[int] | None = None) -> None:
        self.roots = roots
        self.stats = {"correlation.processes_not_kept": 0, "correlation.files_not_kept": 0}
        self._processes: list[Process] = []
        self._current: dict[int, Process] = {}  # pid -> what it runs now
        self._parent: dict[int, int] = {}
        self._changes: list[_Change] = []
        self._calls: list[_Call] = []

    def set_roots(self, roots: set[int]) -> None:
        self.roots = set(roots)

    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is Exec:
            self._exec(ev)  # type: ignore[arg-type]
        elif t is Fork:
            self._fork(ev)  # type: ignore[arg-type]
        elif t is Exit:
            self._current.pop(ev.pid, None)  # type: ignore[attr-defined]
        elif t is Open or t is FileOp:
            key = file_change(ev)  # type: ignore[arg-type]
            if key is not None:
                if len(self._changes) >= MAX_FILE_CHANGES:
                    self.stats["correlation.files_not_kept"] += 1
                else:
                    self._changes.append(_Change(key, getattr(ev, "new_resolved", None) or getattr(ev, "new_path", None)))
        elif t is LlmCall:
            self._llm(ev)  # type: ignore[arg-type]
        return []

    def _exec(self, ev: Exec) -> None:
        self._parent.setdefault(ev.pid, ev.ppid)
        p = self._current.get(ev.pid)
        if p is not None and p.argv is None:  # a forked child now runs its own program
            p.argv = ev.argv
            p.exec_ns = ev.ts
            return
        self._add(Process(ProcessKey(ev.pid, ev.ts), ev.ppid, ev.argv, ev.ts))

    def _fork(self, ev: Fork) -> None:
        self._parent.setdefault(ev.child_pid, ev.pid)
        self._add(Process(ProcessKey(ev.child_pid, ev.ts), ev.pid, None))

    def _add(self, p: Process) -> None:
        if len(self._processes) >= MAX_PROCESSES:
            self.stats["correlation.processes_not_kept"] += 1
            return
        self._processes.append(p)
        self._current[p.key.pid] = p

    def _llm(self, ev: LlmCall) -> None:
        if ev.side != "client":
            # A traced process answered it (a model server, a mock in a test
            # runner): its tool calls are its client's to run, not its own.
            return
        call = _Call(ev.pid, ev.started_ns, ev.ended_ns)
        for i, tc in enumerate(ev.response.tool_calls):
            call.tool_calls.append((ToolCallRef(ev.pid, ev.started_ns, i, tc.id), tc.arguments))
        self._calls.append(call)

    def _descends_from(self, pid: int, ancestor: int) -> bool:
        parent = self._parent
        for _ in range(MAX_DEPTH):
            next_pid = parent.get(pid)
            if next_pid is None:
                return False
            pid = next_pid
            if pid == ancestor:
                return True
        return False

    def _in_tree(self, pid: int, agents: set[int]) -> bool:
        return pid in agents or any(self._descends_from(pid, a) for a in agents)

    def close(self) -> list[object]:
        calls = sorted(self._calls, key=lambda c: c.started_ns)
        windows = []  # (llm call, tool call ref, arguments, start, end)
        for i, call in enumerate(calls):
            end = next((c.started_ns for c in calls[i + 1:] if c.pid == call.pid and c.started_ns > call.ended_ns),
                       None)
            for ref, arguments in call.tool_calls:
                windows.append((call, ref, _strings(arguments), call.ended_ns, end))

        out: list[object] = []
        linked: set[ProcessKey] = set()
        linked_pids: dict[int, ToolCallRef] = {}  # pid -> tool call (while it runs what was linked)
        ran = sorted((p for p in self._processes if p.argv is not None), key=lambda p: p.exec_ns or p.key.start_ns)
        for p in ran:
            assert p.argv is not None
            when = p.exec_ns or p.key.start_ns
            best: tuple[int, ToolCallRef, dict[str, str | float]] | None = None
            for call, ref, strings, start, end in windows:
                if when < start or (end is not None and when >= end):
                    continue
                if p.key.pid == call.pid or not self._descends_from(p.key.pid, call.pid):
                    continue
                evidence: dict[str, str | float] = {
                    "after_llm_call_ms": round((when - call.ended_ns) / 1e6, 1),
                    "lineage": f"descendant of pid {call.pid}, which made the LLM call"}
                found = _argv_evidence(p.argv, strings)
                strength = 0
                if found:
                    strength, evidence["arguments"] = found
                # A process started by one already linked belongs to the same tool call.
                ancestor: int | None = p.key.pid
                for _ in range(MAX_DEPTH):
                    ancestor = self._parent.get(ancestor)  # type: ignore[arg-type]
                    if ancestor is None:
                        break
                    if linked_pids.get(ancestor) == ref:
                        strength = max(strength, 1)
                        evidence["parent_linked"] = f"started by pid {ancestor}, linked to this tool call"
                        break
                if strength and (best is None or strength > best[0]):
                    best = (strength, ref, evidence)
            if best:
                out.append(Link(when, best[1], p.key, best[2]))
                linked.add(p.key)
                linked_pids[p.key.pid] = best[1]

        agents = self.roots if self.roots is not None else {c.pid for c in calls}
        first_call = calls[0].started_ns if calls else None
        for p in ran:
            when = p.exec_ns or p.key.start_ns
            if p.key in linked or p.key.pid in agents or not self._in_tree(p.key.pid, agents):
                continue
            reason = "no tool call explains it"
            if first_call is None or when < first_call:
                reason = "started before any LLM call"
            out.append(Unexplained(when, p.key, reason))

        for change in sorted(self._changes, key=lambda c: c.key.ts):
            f = change.key
            best_file: tuple[int, ToolCallRef, dict[str, str | float]] | None = None
            for call, ref, strings, start, end in windows:
                if f.ts < start or (end is not None and f.ts >= end):
                    continue
                evidence = {"after_llm_call_ms": round((f.ts - call.ended_ns) / 1e6, 1)}
                strength = 0
                if linked_pids.get(f.pid) == ref:
                    strength = 2
                    evidence["process"] = f"by pid {f.pid}, linked to this tool call"
                why = _path_evidence(f.path, strings) or _path_evidence(change.new_path, strings)
                if why and (f.pid == call.pid or self._descends_from(f.pid, call.pid)):
                    strength += 1
                    evidence["arguments"] = why
                if strength and (best_file is None or strength > best_file[0]):
                    best_file = (strength, ref, evidence)
            if best_file:
                out.append(Link(f.ts, best_file[1], f, best_file[2]))
            elif f.pid not in agents and self._in_tree(f.pid, agents):
                out.append(Unexplained(f.ts, f, "no tool call explains it"))
        return out
