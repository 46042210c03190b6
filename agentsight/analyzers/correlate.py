"""Linking what an agent did to the tool calls its model asked for.

Deterministic and explained: each link carries the evidence that matched,
and a role: `shell` (the shell that ran the tool's command), `command` (what
the command did), `wrapper` (what the agent's wrapper script around the
command did: its prelude and epilogue, a login shell's profile).

- Time: a tool call explains activity from the end of the response that
  asked for it until the agent sends its result back (the first later
  request of the same process that carries it: `tool_result`,
  `function_call_output`, `functionResponse`), or until that process exits.
  Requests that do not carry the result (an agent's side calls: titles,
  command checks) do not end it.
- Lineage: the activity comes from a descendant of the process that made
  the LLM call (file tools: from that process itself); what a linked
  process starts, and what it execs, belongs to the same tool call, also
  after the window (a server a tool started).
- Arguments: the tool's command is parsed as a shell script (see
  `shell.py`): a process whose argv is the command, a shell whose `-c`
  script is it or embeds it (`eval '…'` with its quoting undone, a
  `( trap …; CMD )` subshell, `bash -lc`), a process that is one of the
  command's simple commands (past `env`, `timeout`, `nice`, `sudo`, `xargs`
  and VAR=value prefixes); a file that is one of the command's redirect
  targets (`>`, `>>`, `>|`, `tee`), or a path argument of a file tool
  (`file_path`, `path`, …, the files of a diff or an apply_patch body),
  also when it is written as a temporary file renamed over that path. A
  shell whose argv does not show the command (it came in an environment
  variable, on stdin, encoded, or in a script file the agent wrote) is known
  by its children running the command's commands, or by that script file.

Activity of the agent's tree that no tool call explains is `Unexplained`
(the "agent ran curl by itself" case); before the agent's first LLM call it
is `Startup` instead. The agent's tree is the recorded command's (`roots`),
or, without roots, the processes that made LLM calls and their descendants.

`Correlator` is a sans-I/O stage fed events in capture order. It decides
each process and file change as soon as nothing still to come can change
the decision: when every tool call whose window holds it has had its result
sent back (or its agent exited), once events from a few seconds later have
arrived (the two ring buffers are read one after the other, so an LLM call
can arrive after process events that followed it), and once the first LLM
call has arrived (before it, activity is start-up). feed() returns what
became decidable; close() decides the rest.
"""
from __future__ import annotations

import bisect
import heapq
import os
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Union

from ..events import (
    Exec, Exit, FileKey, FileOp, Fork, Link, LlmCall, LlmCallRef, Open, ProcessKey, RawEvent, Startup, TlsData,
    ToolCallRef, ToolResult, Unexplained,
)
from . import providers
from .redact import redact_text
from .shell import SHELLS, Redirect, Script, Word, argv_forms, embedding, match_argv, parse, shell_script

MAX_DEPTH = 64
MAX_PROCESSES = 1 << 20  # programs remembered; beyond this new ones are counted, not linked
MAX_FILE_CHANGES = 1 << 20  # file changes waiting for a decision, and renames remembered
# How late an event may arrive after events that happened after it: the
# process ring and the TLS ring are drained one after the other every poll
# (100 ms), and a TLS record in pieces waits up to 2 s for the rest.
REORDER_NS = 3_000_000_000
_FOREVER = 1 << 62

O_ACCMODE, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0o3, 0o1, 0o2, 0o100, 0o1000
# Devices and kernel interfaces: opened for writing all the time, never files changed.
PSEUDO_FILE_PREFIXES = ("/dev/", "/proc/", "/sys/")

# Tool arguments that hold a shell command, and those that name a file.
COMMAND_KEYS = frozenset(("command", "cmd", "script", "commandline", "command_line", "shell_command",
                          "bash_command", "commands"))
PATH_KEYS = frozenset(("file_path", "path", "absolute_path", "filename", "filepath", "file", "notebook_path",
                       "target_file", "paths", "file_paths", "old_path", "new_path", "target_path", "dir_path"))
_SHELL_TOOL = re.compile(r"bash|shell|terminal|exec|command|run_?cmd|powershell", re.I)
_PATCH_PATH = re.compile(r"^\*\*\* (?:Add|Update|Delete) File: (.+?)\s*$|^\*\*\* Move to: (.+?)\s*$|"
                         r"^(?:---|\+\+\+) (?:[ab]/)?([^\t\n]+?)(?:\t.*)?\s*$|^diff --git a/(\S+) b/(\S+)\s*$|"
                         r"^rename (?:from|to) (.+?)\s*$", re.M)

# Scores: how strongly a piece of evidence ties activity to a tool call.
_ARGV_IS = 10.0  # argv is the tool's command
_EMBEDS = 9.0  # a shell whose script holds the tool's command
_FILE_TOOL = 9.0  # the agent wrote the file a file tool named
_INHERITS = 5.0  # started (or exec'd) by a process linked to the tool call
_SCRIPT = 7.0  # runs a script the agent wrote after the response
_A_COMMAND = 6.0  # argv is one of the tool's command's simple commands
_ITS_CHILDREN = 5.5  # a shell whose children run the tool's commands (its script does not show the command)
_REDIRECT = 4.0  # a redirect target of the tool's command
_A_PATH = 3.0  # a path among the tool's command's words
_WRITER_LINKED = 8.0  # written by a process linked to the tool call
_WEAK = 1.0  # the program and its arguments, or the file's name, appear in the arguments


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


# -- what the tool calls asked for ----------------------------------------------


def _strings(value: Any, where: str = "arguments") -> list[tuple[str, str]]:
    """Every string inside a tool call's arguments, with where it was."""
    if isinstance(value, str):
        return [(where, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{where}.{k}")]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{where}[{i}]")]
    return []


def _last_key(where: str) -> str:
    return re.sub(r"\[\d+\]$", "", where).rsplit(".", 1)[-1].lower()


def patch_paths(text: str) -> list[str]:
    """The files a unified diff or an apply_patch body changes."""
    if "*** " not in text and "\n+++ " not in text and not text.startswith(("--- ", "diff --git")):
        return []
    out = []
    for m in _PATCH_PATH.finditer(text):
        for g in m.groups():
            if g and g != "/dev/null" and g not in out:
                out.append(g)
    return out


@dataclass(frozen=True)
class _Command:
    where: str
    text: str
    script: Script
    by_program: dict[str, list[tuple[str, tuple[Word, ...]]]]  # program name -> (command text, form)
    path_words: list[str]  # literal arguments that look like paths


def _looks_like_path(word: str) -> bool:
    return not word.startswith("-") and ("/" in word or "." in word)


def _command(where: str, text: str) -> _Command:
    script = parse(text)
    by_program: dict[str, list[tuple[str, tuple[Word, ...]]]] = {}
    for command in script.commands:
        for form in command.forms:
            program = form[0].literal if form else None
            if program:
                by_program.setdefault(os.path.basename(program), []).append((command.text, form))
    path_words = [w.literal for command in script.commands for w in command.words[1:]
                  if w.literal and _looks_like_path(w.literal)]
    return _Command(where, text, script, by_program, path_words)


@dataclass(eq=False)
class _ToolCall:
    ref: ToolCallRef
    name: str | None
    agent: int  # pid of the process that made the LLM call
    start: int  # the response's end
    strings: list[tuple[str, str]]
    commands: list[_Command]
    argvs: list[tuple[str, list[str]]]  # commands given as argv lists ({"command": ["bash", "-lc", "…"]})
    paths: list[tuple[str, str]]
    end: int | None = None  # when its result went back; None: not yet
    answered: bool = False
    shells: int = 0  # shells linked to it as the one running its command
    waiting: list[_Item] = field(default_factory=list)


def _tool_call(ref: ToolCallRef, name: str | None, arguments: Any, agent: int, start: int) -> _ToolCall:
    strings = _strings(arguments)
    commands: list[_Command] = []
    argvs: list[tuple[str, list[str]]] = []
    paths: list[tuple[str, str]] = []
    shell_like = bool(name and _SHELL_TOOL.search(name))

    def add_command(where: str, text: str) -> None:
        if text.strip() and all(c.text != text for c in commands):
            commands.append(_command(where, text))

    def visit(value: Any, where: str) -> None:
        key = _last_key(where)
        if isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{where}.{k}")
        elif isinstance(value, list):
            if key in COMMAND_KEYS and value and all(isinstance(a, str) for a in value):
                argv = [a for a in value if isinstance(a, str)]
                argvs.append((where, argv))
                found = shell_script(argv)
                if found:
                    add_command(where, found[0])
                return
            for i, v in enumerate(value):
                visit(v, f"{where}[{i}]")
        elif isinstance(value, str):
            if key in COMMAND_KEYS:
                add_command(where, value)
            elif key in PATH_KEYS and value.strip():
                paths.append((where, value.strip()))
            for p in patch_paths(value):
                paths.append((f"{where} (a file the patch changes)", p))

    visit(arguments, "arguments")
    if not commands and shell_like:
        texts = [(w, s) for w, s in strings if s.strip()]
        if isinstance(arguments, str) and arguments.strip():
            add_command("arguments", arguments)
        elif len(texts) == 1:
            add_command(*texts[0])
    for c in commands:
        for body in c.script.heredocs:  # apply_patch <<'EOF' … EOF
            for p in patch_paths(body):
                paths.append((f"{c.where} (a file the patch changes)", p))
    return _ToolCall(ref, name, agent, start, strings, commands, argvs, paths)


def _path_matches(path: str, named: str) -> bool:
    """A changed file's absolute path is the one a tool named (absolute,
    relative to wherever it ran, or under ~)."""
    named = named.strip()
    if not named or not path:
        return False
    if named == path:
        return True
    if named.startswith("~/"):
        return path.endswith(named[1:])
    if named.startswith("/"):
        return os.path.normpath(named) == path
    norm = os.path.normpath(named)
    if norm.startswith(".."):
        norm = norm.lstrip("./")
    return norm not in (".", "") and path.endswith("/" + norm)


def _word_matches_path(word: Word, path: str) -> bool:
    literal = word.literal
    if literal is not None:
        return _path_matches(path, literal)
    parts = word.parts
    pattern = "".join(".*" if p is None else re.escape(p) for p in parts)
    if parts and isinstance(parts[0], str) and parts[0].startswith("/"):
        return re.fullmatch(pattern, path, re.S) is not None
    return re.fullmatch(".*/" + pattern if parts and parts[0] is not None else pattern, path, re.S) is not None


def _argv_evidence(argv: list[str], strings: list[tuple[str, str]]) -> tuple[int, str] | None:
    """(strength, why) when argv is the command a tool call asked for: 3, a
    string argument is the argv; 2, its program and arguments appear in one."""
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


def _specific(text: str) -> float:
    """Among commands that match equally, the longer one says more: a tie-break
    worth less than any evidence."""
    return min(len(text), 10_000) / 1e6


def _short(text: str, n: int = 80) -> str:
    """Command text quoted in evidence: on one line, cut, secrets out (the
    evidence is not redacted on its way out, unlike argv and arguments)."""
    text = " ".join(redact_text(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


# -- what the agent did -----------------------------------------------------------


@dataclass(eq=False, slots=True)
class Process:
    """One program a process ran (a fork that never exec'd is one too)."""

    key: ProcessKey
    ppid: int | None
    argv: list[str] | None  # None: forked, never exec'd
    exec_ns: int | None = None
    cwd: str = ""
    parent: Process | None = None  # what the parent ran when it forked this one
    previous: Process | None = None  # what this pid ran before exec'ing this
    exited: bool = False
    decided: bool = False
    link: _ToolCall | None = None
    role: str = ""
    whole_command: bool = False  # a shell whose script is exactly the tool's command (not a login shell)
    waiting: list[_Item] = field(default_factory=list)
    children: list[Process] = field(default_factory=list)
    _lineage: tuple[int, ...] | None = None
    agents_seen: tuple[int, list[int]] | None = None  # (agents known then, the agents above it)

    def lineage(self) -> tuple[int, ...]:
        """The pids of this program and those it came from, nearest first."""
        if self._lineage is None:
            pids: list[int] = []
            p: Process | None = self
            while p is not None and len(pids) < MAX_DEPTH:
                if p._lineage is not None and p is not self:
                    pids += [q for q in p._lineage if q not in pids]
                    break
                if p.key.pid not in pids:
                    pids.append(p.key.pid)
                p = p.up()
            self._lineage = tuple(pids)
        return self._lineage

    @property
    def when(self) -> int:
        return self.exec_ns if self.exec_ns is not None else self.key.start_ns

    def up(self) -> Process | None:
        """The program this one came from: the one it replaced, or its parent."""
        return self.previous if self.previous is not None else self.parent


@dataclass(eq=False, slots=True)
class _FileChange:
    key: FileKey
    new_path: str | None
    proc: Process | None
    decided: bool = False
    agents_seen: tuple[int, list[int]] | None = None

    @property
    def when(self) -> int:
        return self.key.ts


_Item = Union[Process, _FileChange]


@dataclass(eq=False)
class _Agent:
    """A process that made LLM calls, and the tool calls it was asked for."""

    pid: int
    tool_calls: list[_ToolCall] = field(default_factory=list)  # by start
    starts: list[int] = field(default_factory=list)
    open: list[_ToolCall] = field(default_factory=list)
    longest: int = 0  # the longest window that has ended
    last_started: int = -1

    def windows_at(self, when: int) -> list[_ToolCall]:
        """The ended windows that hold `when`."""
        out = []
        i = bisect.bisect_right(self.starts, when)
        earliest = when - self.longest
        while i > 0:
            i -= 1
            tc = self.tool_calls[i]
            if tc.start < earliest:
                break
            if tc.end is not None and when < tc.end:
                out.append(tc)
        return out


@dataclass
class _Candidate:
    score: float
    tool_call: _ToolCall
    evidence: dict[str, str | float]
    role: str
    whole_command: bool = False


_FIRST = "first"  # waiting for the first LLM call
_LATER = "later"  # waiting for events from REORDER_NS later


class Correlator:
    """Links, start-up and unexplained activity, and tool results, from the
    events of one run.

    `roots`: the pids of the recorded command (its tree is the agent's);
    None: every process that made an LLM call is an agent."""

    def __init__(self, roots: set[int] | None = None) -> None:
        self.roots = roots
        self.stats = {"correlation.processes_not_kept": 0, "correlation.files_not_kept": 0}
        self._kept = 0
        self._current: dict[int, Process] = {}  # pid -> what it runs now
        self._agents: dict[int, _Agent] = {}
        self._unanswered: dict[str, _ToolCall] = {}  # tool call id -> the call waiting for its result
        self._first_call: int | None = None
        self._first_send: int | None = None  # the first TLS write seen: no LLM call started before it
        self._max_ts = 0
        self._pending: dict[int, _Item] = {}  # id() -> the items not decided yet
        self._before_first: list[_Item] = []
        self._later: list[tuple[int, int, _Item]] = []  # heap of (ts, seq, item)
        self._seq = 0
        self._ready: deque[_Item] = deque()
        self._renames: dict[tuple[int, str], list[tuple[int, str]]] = {}  # (pid, from) -> [(ts, to)]
        self._renames_kept = 0
        self._agent_writes: dict[tuple[int, str], int] = {}  # (agent pid, path) -> when it last wrote it
        self._out: list[object] = []
        self._closed = False

    def set_roots(self, roots: set[int]) -> None:
        self.roots = set(roots)

    # -- input --------------------------------------------------------------------

    def feed(self, ev: object) -> list[object]:
        t = type(ev)
        if t is TlsData:  # most of the stream: it only moves the clock on
            tls: TlsData = ev  # type: ignore[assignment]
            if tls.ts > self._max_ts:
                self._max_ts = tls.ts
            if tls.dir == "send":
                self._tls_send(tls)
            if not self._later and not self._ready and not self._out:
                return []
        elif isinstance(ev, RawEvent):
            if ev.ts > self._max_ts:
                self._max_ts = ev.ts
            if t is Exec:
                self._exec(ev)  # type: ignore[arg-type]
            elif t is Fork:
                self._fork(ev)  # type: ignore[arg-type]
            elif t is Exit:
                self._exit(ev)  # type: ignore[arg-type]
            elif t is Open or t is FileOp:
                self._file(ev)  # type: ignore[arg-type]
        elif t is LlmCall:
            self._llm(ev)  # type: ignore[arg-type]
        later = self._later
        while later and later[0][0] + REORDER_NS <= self._max_ts:
            self._ready.append(heapq.heappop(later)[2])
        self._run()
        out, self._out = self._out, []
        return out

    def _tls_send(self, ev: TlsData) -> None:
        if self._first_send is None:
            self._first_send = ev.ts
            self._ready.extend(self._before_first)  # what came before it is start-up
            self._before_first = []
        elif ev.ts < self._first_send:
            self._first_send = ev.ts

    def close(self) -> list[object]:
        """Decides everything still open: tool calls whose result never went
        back run to the end of the recording."""
        self._closed = True
        self._max_ts = _FOREVER
        for agent in self._agents.values():
            for tc in list(agent.open):
                self._end_window(agent, tc, _FOREVER)
        self._ready.extend(self._before_first)
        self._before_first = []
        self._ready.extend(item for _, _, item in sorted(self._later, key=lambda x: (x[0], x[1])))
        self._later = []
        self._run()
        # What still waits on something that will never come, in time order.
        for item in sorted(self._pending.values(), key=lambda i: i.when):
            if not item.decided:
                self._decide(item)
                self._run()
        out, self._out = self._out, []
        return out

    def _exec(self, ev: Exec) -> None:
        p = self._current.get(ev.pid)
        if p is not None and p.argv is None:  # a forked child now runs its own program
            p.argv = ev.argv
            p.exec_ns = ev.ts
            p.cwd = ev.cwd
            if p.decided and p.link is None:  # judged as a bare fork: judge what it runs now
                p.decided = False
                self._arrive(p)
            return
        parent = p.parent if p is not None else self._current.get(ev.ppid)
        self._add(Process(ProcessKey(ev.pid, ev.ts), ev.ppid, ev.argv, ev.ts, ev.cwd, parent=parent, previous=p))

    def _fork(self, ev: Fork) -> None:
        self._add(Process(ProcessKey(ev.child_pid, ev.ts), ev.pid, None, parent=self._current.get(ev.pid)))

    def _add(self, p: Process) -> None:
        if self._kept >= MAX_PROCESSES:
            self.stats["correlation.processes_not_kept"] += 1
            return
        self._kept += 1
        self._current[p.key.pid] = p
        if p.parent is not None and p.previous is None:
            p.parent.children.append(p)
        self._arrive(p)

    def _exit(self, ev: Exit) -> None:
        p = self._current.pop(ev.pid, None)
        if p is not None:
            p.exited = True
            if not p.decided and p.argv is None:
                self._ready.append(p)  # it never exec'd: nothing more to wait for
        agent = self._agents.get(ev.pid)
        if agent is not None:
            for tc in list(agent.open):
                self._end_window(agent, tc, ev.ts)

    def _file(self, ev: Open | FileOp) -> None:
        key = file_change(ev)
        if key is None:
            return
        new_path = (ev.new_resolved or ev.new_path) if isinstance(ev, FileOp) else None
        if len(self._pending) >= MAX_FILE_CHANGES:
            self.stats["correlation.files_not_kept"] += 1
            return
        if key.op == "rename" and new_path and key.path and ev.pid in self._agents \
                and self._renames_kept < MAX_FILE_CHANGES:
            self._renames.setdefault((ev.pid, key.path), []).append((key.ts, new_path))
            self._renames_kept += 1
        if ev.pid in self._agents and self._renames_kept < MAX_FILE_CHANGES:
            written = new_path if key.op == "rename" else key.path if key.op == "write" else None
            if written:
                if (ev.pid, written) not in self._agent_writes:
                    self._renames_kept += 1
                self._agent_writes[(ev.pid, written)] = key.ts
        self._arrive(_FileChange(key, new_path, self._current.get(ev.pid)))

    def _llm(self, ev: LlmCall) -> None:
        if ev.side != "client":
            # A traced process answered it (a model server, a mock in a test
            # runner): its tool calls are its client's to run, not its own.
            return
        agent = self._agents.get(ev.pid)
        if agent is None:
            agent = self._agents[ev.pid] = _Agent(ev.pid)
        agent.last_started = max(agent.last_started, ev.started_ns)
        if ev.ended_ns > self._max_ts and not self._closed:
            self._max_ts = ev.ended_ns
        self._results(agent, ev)
        for i, tc in enumerate(ev.response.tool_calls):
            call = _tool_call(ToolCallRef(ev.pid, ev.started_ns, i, tc.id), tc.name, tc.arguments, ev.pid,
                              ev.ended_ns)
            at = bisect.bisect_right(agent.starts, call.start)
            agent.starts.insert(at, call.start)
            agent.tool_calls.insert(at, call)
            agent.open.append(call)
            if tc.id:
                self._unanswered[tc.id] = call
        if self._first_call is None or ev.started_ns < self._first_call:
            self._first_call = ev.started_ns
            self._ready.extend(self._before_first)
            self._before_first = []
        # What waited for later events may be decidable now: before this call's
        # start nothing new can come from its process.
        self._ready.extend(item for _, _, item in self._later)
        self._later = []

    def _results(self, agent: _Agent, ev: LlmCall) -> None:
        """The tool results this request carries back: each ends its tool
        call's window when it is the first to carry it."""
        if not agent.open and not self._unanswered:
            return
        found = providers.request_input(ev.provider, ev.api, ev.request)
        for block in found.tool_results:
            tc = self._unanswered.get(block.id) if block.id else None
            if tc is None and block.id is None and block.latest:
                # no ids (Gemini): the earliest unanswered call of that name
                tc = next((c for c in agent.open if not c.answered and c.ref.id is None
                           and (block.name is None or c.name == block.name) and c.start <= ev.started_ns), None)
            if tc is None or tc.answered or tc.start > ev.started_ns:
                continue
            tc.answered = True
            if tc.ref.id:
                self._unanswered.pop(tc.ref.id, None)
            self._out.append(ToolResult(ev.started_ns, tc.ref, LlmCallRef(ev.pid, ev.started_ns),
                                        ev.started_ns - tc.start, block.is_error,
                                        len(providers.content_text(block.content)), block.where))
            owner = self._agents.get(tc.agent)
            if owner is not None and tc.end is None:
                self._end_window(owner, tc, ev.started_ns)

    def _end_window(self, agent: _Agent, tc: _ToolCall, end: int) -> None:
        if tc.end is not None:
            return
        tc.end = max(end, tc.start)
        if tc in agent.open:
            agent.open.remove(tc)
        if tc.end < _FOREVER:
            agent.longest = max(agent.longest, tc.end - tc.start)
        else:
            agent.longest = _FOREVER
        if tc.ref.id and self._unanswered.get(tc.ref.id) is tc:
            del self._unanswered[tc.ref.id]
        self._ready.extend(tc.waiting)
        tc.waiting = []

    # -- deciding -----------------------------------------------------------------

    def _arrive(self, item: _Item) -> None:
        self._pending[id(item)] = item
        self._ready.append(item)

    def _run(self) -> None:
        ready = self._ready
        while ready:
            item = ready.popleft()
            if item.decided:
                continue
            blocker = self._blocker(item)
            if blocker is None:
                self._decide(item)
            elif blocker == _FIRST:
                self._before_first.append(item)
            elif blocker == _LATER:
                self._seq += 1
                heapq.heappush(self._later, (item.when, self._seq, item))
            else:
                assert not isinstance(blocker, str)
                blocker.waiting.append(item)

    def _chain(self, p: Process | None) -> list[Process]:
        """p and the programs it came from, up to the first process."""
        out: list[Process] = []
        while p is not None and len(out) < MAX_DEPTH:
            out.append(p)
            p = p.up()
        return out

    def _agent_pids(self, item: _Item) -> list[int]:
        """The processes above the item that made LLM calls, nearest first
        (for a file change, its writer too: file tools)."""
        agents = self._agents
        seen = item.agents_seen
        if seen is not None and seen[0] == len(agents):
            return seen[1]
        found = self._find_agent_pids(item)
        item.agents_seen = (len(agents), found)
        return found

    def _find_agent_pids(self, item: _Item) -> list[int]:
        agents = self._agents
        if isinstance(item, Process):
            own = item.key.pid
            lineage = item.parent.lineage() if item.parent is not None else ()
        else:
            own = -1
            if item.proc is None:
                return [item.key.pid] if item.key.pid in agents else []
            lineage = item.proc.lineage()
        return [pid for pid in lineage if pid in agents and pid != own]

    def _blocker(self, item: _Item) -> _ToolCall | Process | str | None:
        when = item.when
        if self._first_call is None and not self._closed:
            # Start-up can be told before any call arrives for what came
            # before the first TLS write; without roots, what no agent started
            # is nobody's.
            if self.roots is not None and (self._first_send is None or when >= self._first_send):
                return _FIRST
            return _LATER if when + REORDER_NS > self._max_ts else None
        agents = self._agent_pids(item)
        for pid in agents:
            for tc in self._agents[pid].open:
                if tc.start <= when:
                    return tc
        covered = bool(agents) and all(self._agents[pid].last_started > when for pid in agents)
        if not covered and self._first_call is not None and when < self._first_call:
            covered = True
        if not covered and when + REORDER_NS > self._max_ts:
            return _LATER
        if isinstance(item, Process):
            if item.argv is None and not item.exited and item.key.start_ns + REORDER_NS > self._max_ts:
                return _LATER  # give it the time to exec
            dep = item.up()
        else:
            dep = item.proc
        if dep is not None and not dep.decided and id(dep) in self._pending:
            return dep
        return None

    def _decide(self, item: _Item) -> None:
        item.decided = True
        self._pending.pop(id(item), None)
        if isinstance(item, Process):
            self._decide_process(item)
            self._ready.extend(item.waiting)
            item.waiting = []
        else:
            self._decide_file(item)

    def _in_tree(self, p: Process | None, pid: int) -> bool:
        within = self.roots if self.roots is not None else self._agents.keys()
        return pid in within or (p is not None and any(q in within for q in p.lineage()))

    def _own(self, pid: int) -> bool:
        """The agent's own processes: the recorded command and the LLM callers."""
        return pid in self._agents or (self.roots is not None and pid in self.roots)

    def _nearest_linked(self, p: Process | None) -> Process | None:
        for q in self._chain(p):
            if q.link is not None:
                return q
            if q.key.pid in self._agents:
                return None  # an agent's own children are its tool calls', not its parent's
        return None

    def _decide_process(self, p: Process) -> None:
        when = p.when
        best: _Candidate | None = None
        linked = self._nearest_linked(p.up())
        for pid in self._agent_pids(p):
            for tc in self._agents[pid].windows_at(when):
                c = self._process_candidate(p, tc, linked)
                if c is not None and (best is None or _better(c, best)):
                    best = c
        if linked is not None and linked.link is not None and (best is None or best.score < _INHERITS):
            c = self._process_candidate(p, linked.link, linked)
            if c is not None and (best is None or _better(c, best)):
                best = c
        if best is not None:
            tc = best.tool_call
            p.link, p.role, p.whole_command = tc, best.role, best.whole_command
            if best.role == "shell":
                tc.shells += 1
            self._out.append(Link(when, tc.ref, p.key, best.evidence, best.role))
            return
        if p.argv is None or self._own(p.key.pid) or not self._in_tree(p.parent, p.key.pid):
            return
        adopted = self._shell_of_children(p)
        if adopted is not None:
            p.link, p.role = adopted.tool_call, "shell"
            adopted.tool_call.shells += 1
            self._out.append(Link(when, adopted.tool_call.ref, p.key, adopted.evidence, "shell"))
            return
        self._flag(when, p.key)

    def _shell_of_children(self, p: Process) -> _Candidate | None:
        """A shell whose script does not show the tool's command (it came in
        an environment variable, on stdin, encoded) but whose children run
        the command's commands: the tool call's shell all the same."""
        assert p.argv is not None
        if not any(os.path.basename(f[0]).lstrip("-") in SHELLS for f in argv_forms(p.argv) if f):
            return None
        best: _Candidate | None = None
        for pid in self._agent_pids(p):
            for tc in self._agents[pid].windows_at(p.when):
                todo, seen = list(p.children), 0
                while todo and seen < 64:
                    child = todo.pop(0)
                    seen += 1
                    todo += child.children
                    if child.argv is None:
                        continue
                    found = _command_match(argv_forms(child.argv), tc)
                    if found is None:
                        continue
                    score = _ITS_CHILDREN + found[0] - _A_COMMAND
                    if best is None or score > best.score:
                        evidence: dict[str, str | float] = {
                            "arguments": (f"its child pid {child.key.pid} runs `{found[2]}`, a command of the tool's "
                                          f"command ({found[3]}); this shell's argv does not show the command"),
                            "after_llm_call_ms": round((p.when - tc.start) / 1e6, 1),
                            "lineage": f"descendant of pid {tc.agent}, which made the LLM call"}
                        best = _Candidate(score, tc, evidence, "shell")
                    break
        return best

    def _flag(self, when: int, target: ProcessKey | FileKey) -> None:
        if self._first_call is not None and when >= self._first_call:
            self._out.append(Unexplained(when, target, "no tool call explains it"))
        elif self._first_call is not None or (self._first_send is not None and when < self._first_send):
            self._out.append(Startup(when, target))
        else:
            self._out.append(Unexplained(when, target, "no LLM call was seen in this recording"))

    def _process_candidate(self, p: Process, tc: _ToolCall, linked: Process | None) -> _Candidate | None:
        evidence: dict[str, str | float] = {}
        in_window = tc.start <= p.when and (tc.end is None or p.when < tc.end)
        score = 0.0
        role = "command"
        whole = False
        argv = p.argv
        matched_command = False
        if argv is not None and in_window:
            found = self._argv_match(p, argv, tc)
            if found is not None:
                score, why, role, whole, matched_command = found
                evidence["arguments"] = why
        inherits = linked is not None and linked.link is tc
        if inherits:
            assert linked is not None
            score += _INHERITS
            if linked.key.pid == p.key.pid:
                evidence["parent_linked"] = (f"exec'd by a linked process: pid {linked.key.pid} ran a program "
                                             "linked to this tool call before")
            else:
                evidence["parent_linked"] = f"started by a linked process (pid {linked.key.pid})"
            if not evidence.get("arguments"):
                if linked.role == "command" or linked.whole_command:
                    role = "command"
                else:
                    role = "wrapper"
                    evidence["wrapper"] = (f"the wrapper's own: started by the shell around the tool's command "
                                           f"(pid {linked.key.pid}), not one of the command's commands")
        if score <= 0:
            return None
        if in_window:
            evidence["after_llm_call_ms"] = round((p.when - tc.start) / 1e6, 1)
            evidence["lineage"] = f"descendant of pid {tc.agent}, which made the LLM call"
        return _Candidate(score, tc, evidence, role, whole)

    def _argv_match(self, p: Process, argv: list[str], tc: _ToolCall) -> tuple[float, str, str, bool, bool] | None:
        """(score, why, role, whole command, one of its commands) when argv is what the tool asked to run."""
        forms = argv_forms(argv)
        shell = next((found for found in map(shell_script, forms) if found is not None), None)
        claimed = 0.5 if tc.shells else 0.0  # parallel calls of one command: one shell each
        for where, wanted in tc.argvs:
            if any(f == wanted for f in forms):
                if shell is not None:
                    return _ARGV_IS - claimed, f"argv is {where}", "shell", not shell[1], False
                return _ARGV_IS, f"argv is {where}", "command", False, True
        for c in tc.commands:
            if any(f and (f[-1] == c.text or " ".join(f) == c.text) for f in forms):
                if shell is not None:
                    return _ARGV_IS - claimed, f"argv is {c.where}", "shell", not shell[1], False
                return _ARGV_IS, f"argv is {c.where}", "command", False, True
        best: tuple[float, str, str, bool, bool] | None = None
        for f in forms:
            found = shell_script(f)
            if found is None:
                continue
            script, login = found
            parsed = parse(script)
            for c in tc.commands:
                how = embedding(parsed, c.text)
                if how is None:
                    continue
                tier, detail = how
                score = _EMBEDS + tier / 10 - claimed + _specific(c.text)
                exact = tier == 3 and detail == "it is the tool's command"
                why = (f"the tool's command ({c.where}) is this shell's script" if exact else
                       f"the tool's command ({c.where}) is embedded in this shell's script ({detail})")
                if best is None or score > best[0]:
                    best = (score, why, "shell", exact and not login, False)
        if best is not None:
            return best
        matched = _command_match(forms, tc)
        if matched is not None:
            score, tier, text, where = matched
            why = (f"argv is `{text}`, a command of the tool's command ({where})" if tier == 3 else
                   f"runs `{text}`, a command of the tool's command ({where})")
            return score, why, "command", False, True
        written = self._script_written(p, forms, tc)
        if written is not None:
            return written
        weak = _argv_evidence(argv, tc.strings)
        if weak is not None and not tc.commands:
            return (_ARGV_IS if weak[0] == 3 else _WEAK, weak[1], "command", False, True)
        return None

    def _script_written(self, p: Process, forms: list[list[str]], tc: _ToolCall
                        ) -> tuple[float, str, str, bool, bool] | None:
        """A program run on a file the agent wrote after the response: the tool's
        command written to a script (`bash /tmp/cmd.sh`, `python /tmp/cell.py`)."""
        for f in forms:
            for arg in f[1:3]:
                if arg.startswith("-"):
                    continue
                path = os.path.normpath(os.path.join(p.cwd or "/", arg))
                ts = self._agent_writes.get((tc.agent, path))
                if ts is not None and tc.start <= ts <= p.when:
                    role = "shell" if shell_script([f[0], "-c", ""]) is not None else "command"
                    return (_SCRIPT, f"runs {arg}, a script the agent (pid {tc.agent}) wrote after the response "
                            f"({round((ts - tc.start) / 1e6, 1)} ms)", role, False, role == "command")
        return None

    def _decide_file(self, f: _FileChange) -> None:
        key = f.key
        best: _Candidate | None = None
        writer = f.proc
        if writer is not None and writer.link is not None:
            best = self._file_candidate(f, writer.link, writer)
        for pid in self._agent_pids(f):
            for tc in self._agents[pid].windows_at(key.ts):
                if writer is not None and writer.link is tc:
                    continue  # weighed above
                c = self._file_candidate(f, tc, None)
                if c is not None and (best is None or _better(c, best)):
                    best = c
        if best is not None:
            self._out.append(Link(key.ts, best.tool_call.ref, key, best.evidence, best.role))
            return
        if self._own(key.pid) or not self._in_tree(writer, key.pid):
            return
        self._flag(key.ts, key)

    def _file_candidate(self, f: _FileChange, tc: _ToolCall, writer: Process | None) -> _Candidate | None:
        key = f.key
        evidence: dict[str, str | float] = {}
        score = 0.0
        role = "command"
        in_window = tc.start <= key.ts and (tc.end is None or key.ts < tc.end)
        paths = [p for p in (key.path, f.new_path) if p]
        if writer is not None:
            score += _WRITER_LINKED
            evidence["process"] = f"written by a linked process (pid {key.pid})"
        if in_window and key.pid == tc.agent:
            why = self._file_tool_evidence(f, tc)
            if why is not None:
                score += _FILE_TOOL
                evidence["arguments"] = why
                evidence["process"] = f"by the agent itself (pid {key.pid}), which made the LLM call"
        elif in_window or writer is not None:
            redirect = _redirect_of(paths, tc)
            if redirect is not None:
                score += _REDIRECT
                evidence["arguments"] = (f"a redirect target of the tool's command ({redirect[0]}): "
                                         f"`{_short(redirect[1].text)}`")
            elif (word := _path_word_of(paths, tc)) is not None:
                score += _A_PATH
                evidence["arguments"] = f"a path in the tool's command ({word[0]}): {_short(word[1], 60)}"
            elif in_window and writer is None:  # a linked command's own files are its, whatever their name
                why = next((w for w in (_path_evidence(p, tc.strings) for p in paths) if w), None)
                if why is not None:
                    score += _WEAK
                    evidence["arguments"] = why
        if score <= 0 or (writer is None and key.pid != tc.agent and not self._descends(f, tc.agent)):
            return None
        if writer is not None and "arguments" not in evidence:
            if writer.role == "command" or writer.whole_command:
                role = "command"
            else:
                role = "wrapper"
                evidence["wrapper"] = (f"the wrapper's own: written by the shell around the tool's command "
                                       f"(pid {writer.key.pid}), not one of the command's redirect targets")
        if in_window:
            evidence["after_llm_call_ms"] = round((key.ts - tc.start) / 1e6, 1)
        return _Candidate(score, tc, evidence, role)

    def _descends(self, f: _FileChange, agent: int) -> bool:
        return f.proc is not None and agent in f.proc.lineage()

    def _file_tool_evidence(self, f: _FileChange, tc: _ToolCall) -> str | None:
        key = f.key
        for where, named in tc.paths:
            if key.path and _path_matches(key.path, named):
                return f"path is {where}"
            if f.new_path and _path_matches(f.new_path, named):
                return f"rename target is {where}"
        if key.op == "write" and key.path:
            end = tc.end if tc.end is not None else _FOREVER
            for ts, to in self._renames.get((key.pid, key.path), ()):
                if key.ts <= ts < end:
                    for where, named in tc.paths:
                        if _path_matches(to, named):
                            return f"a temporary file pid {key.pid} renamed over {to} (path is {where})"
        return None


def _command_match(forms: list[list[str]], tc: _ToolCall) -> tuple[float, int, str, str] | None:
    """(score, tier, command text, where) when one of the argv forms is a
    simple command of the tool's command (`match_argv`)."""
    best: tuple[float, int, str, str] | None = None
    names = {os.path.basename(a) for f in forms for a in f[:3]}
    for c in tc.commands:
        for name in names:
            for command_text, form in c.by_program.get(name, ()):
                tier = max((match_argv(form, f) for f in forms), default=0)
                score = _A_COMMAND + tier / 10 + _specific(command_text)
                if tier and (best is None or score > best[0]):
                    best = (score, tier, _short(command_text), c.where)
    return best


def _redirect_of(paths: list[str], tc: _ToolCall) -> tuple[str, Redirect] | None:
    for c in tc.commands:
        for r in c.script.redirects:
            if any(_word_matches_path(r.target, p) for p in paths):
                return c.where, r
    return None


def _path_word_of(paths: list[str], tc: _ToolCall) -> tuple[str, str] | None:
    names = {os.path.basename(p) for p in paths}
    for c in tc.commands:
        for literal in c.path_words:
            if os.path.basename(literal.rstrip("/")) in names and any(_path_matches(p, literal) for p in paths):
                return c.where, literal
    return None


def _better(a: _Candidate, b: _Candidate) -> bool:
    """a explains the activity better than b: more evidence, then the more
    recent tool call, then the earlier one in the response."""
    if a.score != b.score:
        return a.score > b.score
    if a.tool_call.start != b.tool_call.start:
        return a.tool_call.start > b.tool_call.start
    return a.tool_call.ref.index < b.tool_call.ref.index
