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

Processes the recorded program started that no tool call explains are
returned as unexplained: the "agent ran curl by itself" case.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

MAX_DEPTH = 64


@dataclass
class Process:
    id: int
    pid: int
    ppid: int | None
    argv: list[str] | None  # None: forked, never exec'd
    start_ns: int
    exec_ns: int | None = None


@dataclass
class FileChange:
    id: int
    ts: int
    pid: int
    op: str
    path: str | None
    new_path: str | None = None


@dataclass
class ToolCall:
    id: int
    name: str | None
    arguments: Any


@dataclass
class LlmCall:
    id: int
    pid: int
    started_ns: int
    ended_ns: int
    tool_calls: list[ToolCall] = field(default_factory=list)


@dataclass
class Correlation:
    links: list[dict]
    unexplained_processes: list[dict]
    unexplained_files: list[dict]


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


def correlate(llm_calls: list[LlmCall], processes: list[Process], files: list[FileChange],
              root_pids: set[int]) -> Correlation:
    parent = {}
    for p in sorted(processes, key=lambda p: p.start_ns or 0):
        if p.ppid is not None:
            parent.setdefault(p.pid, p.ppid)

    def descends_from(pid: int, ancestor: int) -> bool:
        for _ in range(MAX_DEPTH):
            pid = parent.get(pid)
            if pid is None:
                return False
            if pid == ancestor:
                return True
        return False

    calls = sorted(llm_calls, key=lambda c: c.started_ns)
    windows = []  # (llm call, tool call, start, end)
    for i, call in enumerate(calls):
        if not call.tool_calls:
            continue
        end = next((c.started_ns for c in calls[i + 1:] if c.pid == call.pid and c.started_ns > call.ended_ns),
                   None)
        for tc in call.tool_calls:
            windows.append((call, tc, call.ended_ns, end))

    links: list[dict] = []
    linked_process: dict[int, tuple[int, int]] = {}  # process row id -> (tool call id, strength)
    linked_pids: dict[int, int] = {}  # pid -> tool call id (while it runs what was linked)
    ran = sorted((p for p in processes if p.argv is not None), key=lambda p: p.exec_ns or p.start_ns)
    for p in ran:
        when = p.exec_ns or p.start_ns
        best = None
        for call, tc, start, end in windows:
            if when < start or (end is not None and when >= end):
                continue
            if p.pid == call.pid or not descends_from(p.pid, call.pid):
                continue
            evidence = {"after_llm_call_ms": round((when - call.ended_ns) / 1e6, 1),
                        "lineage": f"descendant of pid {call.pid}, which made the LLM call"}
            found = _argv_evidence(p.argv, _strings(tc.arguments))
            strength = 0
            if found:
                strength, evidence["arguments"] = found
            # A process started by one already linked belongs to the same tool call.
            ancestor = p.pid
            for _ in range(MAX_DEPTH):
                ancestor = parent.get(ancestor)
                if ancestor is None:
                    break
                if linked_pids.get(ancestor) == tc.id:
                    if strength < 1:
                        strength = 1
                    evidence["parent_linked"] = f"started by pid {ancestor}, linked to this tool call"
                    break
            if strength and (best is None or strength > best[0]):
                best = (strength, tc, evidence)
        if best:
            strength, tc, evidence = best
            links.append({"tool_call_id": tc.id, "kind": "process", "target_id": p.id, "evidence": evidence})
            linked_process[p.id] = (tc.id, strength)
            linked_pids[p.pid] = tc.id

    unexplained_processes = []
    first_call = calls[0].started_ns if calls else None
    for p in ran:
        if p.id in linked_process or p.pid in root_pids:
            continue
        reason = "no tool call explains it"
        if first_call is None or (p.exec_ns or p.start_ns) < first_call:
            reason = "started before any LLM call"
        unexplained_processes.append({"process_id": p.id, "reason": reason})

    unexplained_files = []
    for f in sorted(files, key=lambda f: f.ts):
        best = None
        for call, tc, start, end in windows:
            if f.ts < start or (end is not None and f.ts >= end):
                continue
            evidence = {"after_llm_call_ms": round((f.ts - call.ended_ns) / 1e6, 1)}
            strength = 0
            if linked_pids.get(f.pid) == tc.id:
                strength = 2
                evidence["process"] = f"by pid {f.pid}, linked to this tool call"
            why = _path_evidence(f.path, _strings(tc.arguments)) or _path_evidence(f.new_path, _strings(tc.arguments))
            if why and (f.pid == call.pid or descends_from(f.pid, call.pid)):
                strength += 1
                evidence["arguments"] = why
            if strength and (best is None or strength > best[0]):
                best = (strength, tc, evidence)
        if best:
            links.append({"tool_call_id": best[1].id, "kind": "file", "target_id": f.id, "evidence": best[2]})
        elif f.pid not in root_pids:
            unexplained_files.append({"file_id": f.id, "reason": "no tool call explains it"})
    return Correlation(links, unexplained_processes, unexplained_files)
