"""A run of agentsight as OpenTelemetry GenAI traces: the span model.

Built from the pipeline's typed events, with no OpenTelemetry import (the
export itself is in otlp.py), so it runs on the capture thread at the cost
of a few dictionary operations per process event.

The trace model (OpenTelemetry GenAI semantic conventions):

    invoke_agent {agent}            one per agent run (record), or per agent
    |                               process tree and time window (trace)
    +- chat {model}                 one per LLM call, kind CLIENT
    |  +- execute_tool {name}       one per tool call the response asked for
    |     +- process sh             each process linked to the tool call;
    |        +- process curl        file changes are events on the process
    +- process curl                 activity no tool call explains, flagged
                                    agentsight.unexplained

Links between tool calls and what they caused may come at any time: as the
correlator makes them, or all at once when a recording ends. Span ids are
given here, so a child may follow its parent to the backend. A tool call's
span is built once its window has closed (the same process made its next
LLM call, or the agent ended) and SETTLE_SECONDS more have passed, so the
activity linked by then is in it as events; a process's span once it has
exited and been linked, SETTLE_SECONDS later. What is linked after its
tool call's span went out still ends up under it: a process as a child span,
a file change as a zero-length `file {op}` child span.
"""
from __future__ import annotations

import bisect
import heapq
import itertools
import os
import random
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..analyzers.redact import mask_argv, redact_json, redact_text
from ..events import Exec, Exit, FileKey, Fork, Link, LlmCall, ProcessKey, ToolCallRef, Unexplained
from . import otlp_content

SETTLE_SECONDS = 3.0
TRACE_IDLE_SECONDS = 120.0  # trace: a quiet agent's trace ends...
TRACE_WINDOW_SECONDS = 600.0  # ...and a busy agent's trace is cut after this long
MAX_PROCESSES = 1 << 16  # remembered; the oldest finished ones are forgotten first
MAX_DONE_TOOLS = 1 << 14  # tool calls already exported, kept for links that come late
MAX_TRACES_PER_AGENT = 16
MAX_DEPTH = 64
MAX_ARGV = 64  # process.command_args elements; more are cut with a marker

NS = 1_000_000_000

# gen_ai.provider.name for agentsight's provider names (the conventions' well-known values).
PROVIDERS = {"anthropic": "anthropic", "openai": "openai", "gemini": "gcp.gemini"}
OPERATIONS = {"generateContent": "generate_content", "streamGenerateContent": "generate_content"}
INTERPRETERS = re.compile(r"^(python[0-9.]*|node(js)?|bun|deno|ruby|perl|php|java|sh|bash|dash|zsh|uv|npx|env)$")

# Request fields -> gen_ai.request.* attributes (the first of a name found wins).
_REQUEST_ATTRIBUTES = (
    ("max_tokens", "gen_ai.request.max_tokens"), ("max_output_tokens", "gen_ai.request.max_tokens"),
    ("max_completion_tokens", "gen_ai.request.max_tokens"), ("temperature", "gen_ai.request.temperature"),
    ("top_p", "gen_ai.request.top_p"), ("seed", "gen_ai.request.seed"),
)

DURATION_BOUNDS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TOKEN_BOUNDS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)


@dataclass(slots=True)
class SpanEvent:
    name: str
    ts: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class SpanData:
    trace_id: int
    span_id: int
    parent_id: int | None
    name: str
    kind: str  # "internal" or "client"
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    events: list[SpanEvent] = field(default_factory=list)
    error: str | None = None  # the status description of an operation that failed
    resource: tuple[tuple[str, str], ...] = ()  # beyond the run's own: container.id


@dataclass(slots=True)
class ProcessInfo:
    """What /proc tells of a running process (live runs only)."""

    argv: list[str] | None = None
    executable: str | None = None
    container_id: str | None = None


_CONTAINER_ID = re.compile(r"[0-9a-f]{64}")


def container_id(cgroup_text: str) -> str | None:
    """The container a process runs in, from /proc/PID/cgroup: the 64-hex id
    that Docker, containerd, CRI-O and Podman put in the cgroup path
    (`docker-ID.scope`, `cri-containerd-ID.scope`, `/docker/ID`, `libpod-ID`)."""
    found = None
    for line in cgroup_text.splitlines():
        path = line.split(":", 2)[-1]
        ids = _CONTAINER_ID.findall(path)
        if ids:
            found = ids[-1]
    return found


def container_of(pid: int) -> str | None:
    """The container a running process is in (None: none, or it is gone)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            return container_id(f.read())
    except OSError:
        return None


def describe_running(pid: int) -> ProcessInfo:
    """argv, executable and container of a live process, from /proc."""
    info = ProcessInfo()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        info.argv = [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] or None
    except OSError:
        pass
    try:
        info.executable = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        pass
    info.container_id = container_of(pid)
    return info


def agent_name(argv: list[str] | None, executable: str | None, comm: str) -> str:
    """The program an agent is: `claude`, `aider`, `agent.py` (for
    `python3 agent.py`), `module` (for `python -m module`), else its comm."""
    if argv:
        program = os.path.basename(argv[0])
        if INTERPRETERS.match(program):
            args = iter(argv[1:])
            for a in args:
                if a == "-m":
                    return next(args, program)
                if a in ("-c", "-e", "--eval"):
                    return program
                if not a.startswith("-") and "=" not in a:
                    return os.path.basename(a)
        return program
    if executable:
        return os.path.basename(executable)
    return comm or "agent"


def _argv(argv: list[str]) -> list[str]:
    masked = mask_argv(argv)
    if len(masked) > MAX_ARGV:
        masked = masked[:MAX_ARGV] + [f"…[{len(argv) - MAX_ARGV} more arguments]"]
    return masked


def _server(host: str) -> tuple[str, int]:
    """server.address and server.port of a Host header (TLS: 443 by default)."""
    if host.startswith("["):  # [::1]:8443
        addr, _, rest = host[1:].partition("]")
        return addr, int(rest[1:]) if rest[1:].isdigit() else 443
    addr, _, port = host.rpartition(":")
    if addr and port.isdigit():
        return addr, int(port)
    return host, 443


def _flat(prefix: str, evidence: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": v if isinstance(v, (int, float)) else redact_text(str(v)) for k, v in evidence.items()}


def _usage(call: LlmCall) -> dict[str, int]:
    """The gen_ai.usage.* attributes. Input tokens include cached ones, as
    the conventions say; the Messages API reports them apart."""
    u = call.usage
    out: dict[str, int] = {}
    cache_read = u.get("cache_read_input_tokens")
    cache_write = u.get("cache_creation_input_tokens")
    inp = u.get("input_tokens")
    if inp is not None:
        if call.api == "messages":
            inp += (cache_read or 0) + (cache_write or 0)
        out["gen_ai.usage.input_tokens"] = inp
    outp = u.get("output_tokens")
    reasoning = u.get("reasoning_tokens")
    if outp is not None:
        if call.api in ("generateContent", "streamGenerateContent") and reasoning:
            outp += reasoning  # Gemini counts thoughts apart from the candidates
        out["gen_ai.usage.output_tokens"] = outp
    if cache_read is not None:
        out["gen_ai.usage.cache_read.input_tokens"] = cache_read
    if cache_write is not None:
        out["gen_ai.usage.cache_creation.input_tokens"] = cache_write
    if reasoning is not None:
        out["gen_ai.usage.reasoning.output_tokens"] = reasoning
    return out


def _error_type(call: LlmCall) -> str | None:
    """error.type of a failed call: the provider's error type or code, else
    the HTTP status, else how it was cut off."""
    err = call.error
    failed = err is not None or (call.status is not None and call.status >= 400) or call.incomplete
    if not failed:
        return None
    if err:
        for key in ("type", "code"):
            v = err.get(key)
            if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v):
                return str(v)[:64]
    if call.status is not None and call.status >= 400:
        return str(call.status)
    return call.incomplete_reason or "_OTHER"


# -- what the builder keeps ------------------------------------------------------


@dataclass(eq=False)
class _Trace:
    trace_id: int
    span_id: int
    agent_pid: int
    start_ns: int
    resource: tuple[tuple[str, str], ...]
    name: str
    argv: list[str] | None
    executable: str | None
    end_ns: int | None = None
    end_reason: str | None = None
    last_call_ns: int = 0
    last_activity_ns: int = 0
    calls: int = 0
    providers: dict[str, int] = field(default_factory=dict)
    models: set[str] = field(default_factory=set)
    tokens: dict[str, int] = field(default_factory=dict)
    unexplained: int = 0
    exit_code: int | None = None
    events: list[SpanEvent] = field(default_factory=list)
    exported: bool = False
    due: float | None = None


@dataclass(eq=False)
class _Tool:
    key: tuple[int, int, int]
    trace: _Trace
    span_id: int
    chat_span_id: int
    pid: int
    name: str
    call_id: str | None
    arguments: Any
    start_ns: int
    end_ns: int | None = None
    result: Any = None
    has_result: bool = False
    events: list[SpanEvent] = field(default_factory=list)
    exported: bool = False
    due: float | None = None


@dataclass(eq=False)
class _Proc:
    key: ProcessKey
    ppid: int | None
    comm: str = ""
    argv: list[str] | None = None
    filename: str | None = None
    cwd: str | None = None
    exec_ns: int | None = None
    end_ns: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    container: str | None = None
    looked_up: bool = False  # container: read from /proc when its exec was seen
    # what it is in the trace, once a link or the correlator says
    span_id: int | None = None
    trace: _Trace | None = None
    tool: _Tool | None = None
    evidence: dict[str, Any] | None = None
    unexplained: str | None = None
    events: list[SpanEvent] = field(default_factory=list)
    exported: bool = False
    due: float | None = None


class TraceBuilder:
    """Spans from events, in capture order.

    mode "record": the agents are `roots()` (the recorded command), one
    trace each for the whole run. mode "trace": every process that makes an
    LLM call with no agent above it is an agent, and its trace ends when it
    exits, after TRACE_IDLE_SECONDS without an LLM call, or after
    TRACE_WINDOW_SECONDS. `describe` tells what a running process is (its
    /proc), for agents whose exec was not seen, and `container` the container
    of each program as its exec is seen; both None when reading a file.
    `content`: gen_ai.input/output messages and tool arguments and results
    (redacted). feed() and due() return the spans that are complete."""

    def __init__(self, *, mode: str = "record", roots: Callable[[], Iterable[int]] | None = None,
                 content: bool = False, describe: Callable[[int], ProcessInfo] | None = None,
                 container: Callable[[int], str | None] | None = None,
                 wall_clock: Callable[[], int] | None = None, settle: float = SETTLE_SECONDS,
                 idle: float = TRACE_IDLE_SECONDS, window: float = TRACE_WINDOW_SECONDS,
                 rng: random.Random | None = None) -> None:
        self.mode = mode
        self._roots_fn = roots or (lambda: ())
        self._roots: frozenset[int] = frozenset()
        self.content = content
        self.describe = describe
        self.container = container
        self.wall_clock = wall_clock
        self.settle = settle
        self.idle_ns = int(idle * NS)
        self.window_ns = int(window * NS)
        self._rng = rng or random.Random()
        self.metrics = Metrics()
        self.stats = {"links_unresolved": 0, "processes_forgotten": 0, "late_file_spans": 0,
                      "tool_calls_forgotten": 0}
        self._now = 0.0
        self._procs: OrderedDict[ProcessKey, _Proc] = OrderedDict()
        self._current: dict[int, _Proc] = {}
        self._by_pid: dict[int, list[_Proc]] = {}
        self._parent: dict[int, int] = {}
        self._agents: dict[int, list[_Trace]] = {}  # agent pid -> its traces, the last one maybe open
        self._tools: dict[tuple[int, int, int], _Tool] = {}
        self._done_tools: OrderedDict[tuple[int, int, int], _Tool] = OrderedDict()
        self._open_tools: dict[int, list[_Tool]] = {}  # pid -> tool calls whose window is open
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = itertools.count()
        self.last_ns = 0

    # -- ids and time ----------------------------------------------------------

    def _id(self, bits: int) -> int:
        return self._rng.getrandbits(bits) or 1

    def _schedule(self, obj: _Trace | _Tool | _Proc, delay: float | None = None) -> None:
        obj.due = self._now + (self.settle if delay is None else delay)
        heapq.heappush(self._heap, (obj.due, next(self._seq), obj))

    def roots(self) -> frozenset[int]:
        if not self._roots:
            self._roots = frozenset(self._roots_fn())
        return self._roots

    # -- events ------------------------------------------------------------------

    def feed(self, ev: object, now: float) -> list[SpanData]:
        self._now = now
        t = type(ev)
        if t is Exec:
            return self._exec(ev)  # type: ignore[arg-type]
        if t is Fork:
            self._fork(ev)  # type: ignore[arg-type]
            return []
        if t is Exit:
            return self._exit(ev)  # type: ignore[arg-type]
        if t is LlmCall:
            return self._llm(ev)  # type: ignore[arg-type]
        if t is Link:
            return self._link(ev)  # type: ignore[arg-type]
        if t is Unexplained:
            return self._unexplained(ev)  # type: ignore[arg-type]
        return []

    def _remember(self, p: _Proc) -> None:
        self._procs[p.key] = p
        self._current[p.key.pid] = p
        history = self._by_pid.setdefault(p.key.pid, [])
        history.append(p)
        if len(history) > 8:
            del history[0]
        if len(self._procs) > MAX_PROCESSES:
            self._forget()

    def _forget(self) -> None:
        """Drops the oldest finished processes nothing waits for."""
        looked = 0
        for key in list(itertools.islice(self._procs, 4096)):
            p = self._procs[key]
            looked += 1
            if p.end_ns is not None and (p.span_id is None or p.exported):
                del self._procs[key]
                history = self._by_pid.get(key.pid)
                if history and p in history:
                    history.remove(p)
                self.stats["processes_forgotten"] += 1
                if len(self._procs) <= MAX_PROCESSES - 1024:
                    break

    def _exec(self, ev: Exec) -> list[SpanData]:
        self._parent.setdefault(ev.pid, ev.ppid)
        p = self._current.get(ev.pid)
        if p is not None and p.argv is None:  # a forked child runs its own program
            p.argv, p.filename, p.cwd, p.exec_ns, p.comm = ev.argv, ev.filename, ev.cwd, ev.ts, ev.comm
        else:
            if p is not None and p.end_ns is None:
                p.end_ns = ev.ts  # the program it ran before
            p = _Proc(ProcessKey(ev.pid, ev.ts), ev.ppid, ev.comm, ev.argv, ev.filename, ev.cwd, ev.ts)
            self._remember(p)
        if self.container is not None:
            # Now, while it runs: a short-lived agent is gone by the time its LLM call is analysed.
            p.container, p.looked_up = self.container(ev.pid), True
        self.last_ns = max(self.last_ns, ev.ts)
        traces = self._agents.get(ev.pid)
        if traces and traces[-1].end_ns is None and traces[-1].calls == 0:
            # `env python agent.py`: the agent is the last program it runs
            tr = traces[-1]
            tr.argv, tr.executable = ev.argv, ev.filename
            tr.name = agent_name(ev.argv, ev.filename, ev.comm)
        elif self.mode == "record" and ev.pid in self.roots() and not traces:
            self._open_trace(ev.pid, ev.ts)
        return []

    def _fork(self, ev: Fork) -> None:
        self._parent.setdefault(ev.child_pid, ev.pid)
        self._remember(_Proc(ProcessKey(ev.child_pid, ev.ts), ev.pid, ev.comm))
        self.last_ns = max(self.last_ns, ev.ts)

    def _exit(self, ev: Exit) -> list[SpanData]:
        self.last_ns = max(self.last_ns, ev.ts)
        p = self._current.pop(ev.pid, None)
        if p is not None:
            p.end_ns, p.exit_code, p.signal = ev.ts, ev.exit_code, ev.signal
            if p.span_id is not None and not p.exported:
                self._schedule(p)
        for tool in self._open_tools.pop(ev.pid, ()):
            self._close_tool(tool, ev.ts)
        traces = self._agents.get(ev.pid)
        if traces and traces[-1].end_ns is None:
            tr = traces[-1]
            tr.exit_code = ev.exit_code
            self._close_trace(tr, ev.ts, "the agent exited")
        return []

    # -- agents and their traces -------------------------------------------------

    def _agent_of(self, pid: int) -> int | None:
        roots = self.roots() if self.mode == "record" else frozenset()
        p: int | None = pid
        for _ in range(MAX_DEPTH):
            if p is None:
                return None
            if p in self._agents or p in roots:
                return p
            p = self._parent.get(p)
        return None

    def _open_trace(self, agent_pid: int, start_ns: int) -> _Trace:
        p = self._current.get(agent_pid)
        argv = p.argv if p is not None else None
        executable = p.filename if p is not None else None
        comm = p.comm if p is not None else ""
        container = None
        known = self._container_seen(agent_pid)
        if known is not None:
            container = known[0]
        elif self.describe is not None:
            info = self.describe(agent_pid)
            argv = argv or info.argv
            executable = executable or info.executable
            container = info.container_id
        traces = self._agents.setdefault(agent_pid, [])
        previous = traces[-1] if traces else None
        if previous is not None:  # a new window of the same agent
            argv, executable = previous.argv, previous.executable
            resource = previous.resource
            name = previous.name
        else:
            resource = (("container.id", container),) if container else ()
            name = agent_name(argv, executable, comm)
            if p is not None and p.exec_ns is not None and self.mode == "trace":
                start_ns = min(start_ns, p.exec_ns)
        tr = _Trace(self._id(128), self._id(64), agent_pid, start_ns, resource, name, argv, executable)
        tr.last_call_ns = tr.last_activity_ns = start_ns
        traces.append(tr)
        if len(traces) > MAX_TRACES_PER_AGENT:
            del traces[0]
        return tr

    def _container_seen(self, pid: int) -> tuple[str | None] | None:
        """(container,) of the nearest process up from `pid` whose exec was
        seen (children stay in their parent's container); None: none was."""
        q: int | None = pid
        for _ in range(MAX_DEPTH):
            p = self._current.get(q) if q is not None else None
            if p is None:
                return None
            if p.looked_up:
                return (p.container,)
            q = p.ppid
        return None

    def _trace_for(self, pid: int, ts: int, create: bool) -> _Trace | None:
        """The trace of the agent `pid` belongs to, at time `ts`."""
        agent = self._agent_of(pid)
        if agent is None:
            if not create:
                return None
            agent = pid
        traces = self._agents.get(agent)
        if traces and (traces[-1].end_ns is None or self.mode == "record"):
            return traces[-1]  # record: one trace for the whole run
        if traces and not create:
            for tr in reversed(traces):
                if tr.start_ns <= ts:
                    return tr
            return traces[0]
        if traces or create or agent in self.roots():
            return self._open_trace(agent, ts)
        return None

    def _close_trace(self, tr: _Trace, end_ns: int, reason: str) -> None:
        if tr.end_ns is not None:
            return
        tr.end_ns = max(end_ns, tr.start_ns)
        tr.end_reason = reason
        for pid, tools in list(self._open_tools.items()):
            keep = [t for t in tools if t.trace is not tr]
            for tool in tools:
                if tool.trace is tr:
                    self._close_tool(tool, tr.end_ns)
            if keep:
                self._open_tools[pid] = keep
            else:
                del self._open_tools[pid]
        self._schedule(tr)

    def _close_tool(self, tool: _Tool, end_ns: int) -> None:
        if tool.end_ns is None:
            tool.end_ns = max(end_ns, tool.start_ns)
            self._schedule(tool)

    # -- LLM calls -----------------------------------------------------------------

    def _llm(self, call: LlmCall) -> list[SpanData]:
        if call.side != "client":
            # A traced process answered it (a local model server): the same
            # call is a client's, and that is the span; its server is no agent.
            return []
        tr = self._trace_for(call.pid, call.started_ns, create=True)
        assert tr is not None
        if tr.end_ns is not None and not tr.exported:  # reported after the agent's exit
            tr.end_ns = max(tr.end_ns, call.ended_ns)
        self.last_ns = max(self.last_ns, call.ended_ns)
        messages = None
        if self.content:
            messages = otlp_content.input_messages(call)
        for tool in self._open_tools.pop(call.pid, ()):
            if messages is not None and tool.call_id:
                results = otlp_content.tool_results(messages[0])
                if tool.call_id in results:
                    tool.result, tool.has_result = results[tool.call_id], True
            self._close_tool(tool, call.started_ns)
        provider = PROVIDERS.get(call.provider, call.provider or "unknown")
        operation = OPERATIONS.get(call.api, "chat")
        authority = call.request_headers.get("host") or call.request_headers.get(":authority") or call.host
        address, port = _server(authority.lower())
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": operation, "gen_ai.provider.name": provider,
            "server.address": address, "server.port": port,
        }
        request = call.request if isinstance(call.request, dict) else {}
        if call.model:
            attrs["gen_ai.request.model"] = call.model
        for key, name in _REQUEST_ATTRIBUTES:
            v = request.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                attrs.setdefault(name, v)
        if call.stream:
            attrs["gen_ai.request.stream"] = True
        r = call.response
        if r.model:
            attrs["gen_ai.response.model"] = r.model
        if r.id:
            attrs["gen_ai.response.id"] = r.id
        if r.stop_reason:
            attrs["gen_ai.response.finish_reasons"] = [r.stop_reason]
        usage = _usage(call)
        attrs.update(usage)
        ttfc = None
        if call.stream and call.first_token_ns is not None:
            ttfc = max(call.first_token_ns - call.started_ns, 0) / NS
            attrs["gen_ai.response.time_to_first_chunk"] = ttfc
        attrs["agentsight.llm.api"] = call.api
        attrs["process.pid"] = call.pid
        if call.status is not None:
            attrs["http.response.status_code"] = call.status
        error_type = _error_type(call)
        description = None
        if error_type is not None:
            attrs["error.type"] = error_type
            message = (call.error or {}).get("message") if call.error else None
            description = redact_text(str(message))[:300] if message else error_type
            if call.incomplete_reason:
                attrs["agentsight.llm.incomplete_reason"] = call.incomplete_reason
        if messages is not None:
            inputs, system = messages
            attrs["gen_ai.input.messages"], cut_in = otlp_content.encode(inputs)
            if system:
                attrs["gen_ai.system_instructions"], _ = otlp_content.encode(system)
            attrs["gen_ai.output.messages"], cut_out = otlp_content.encode(otlp_content.output_messages(call))
            if cut_in or cut_out:
                attrs["agentsight.content.truncated"] = True
        name = f"{operation} {call.model}" if call.model else operation
        chat = SpanData(tr.trace_id, self._id(64), tr.span_id, name, "client", call.started_ns,
                        max(call.ended_ns, call.started_ns), attrs, error=description, resource=tr.resource)
        tr.calls += 1
        tr.providers[provider] = tr.providers.get(provider, 0) + 1
        if call.model:
            tr.models.add(call.model)
        for k, v in usage.items():
            tr.tokens[k] = tr.tokens.get(k, 0) + v
        tr.last_call_ns = max(tr.last_call_ns, call.ended_ns)
        tr.last_activity_ns = max(tr.last_activity_ns, call.ended_ns)
        self.metrics.record(tr.resource, attrs, usage, (call.ended_ns - call.started_ns) / NS, ttfc, call.ended_ns)

        opened = self._open_tools.setdefault(call.pid, [])
        for i, tc in enumerate(r.tool_calls):
            tool = _Tool((call.pid, call.started_ns, i), tr, self._id(64), chat.span_id, call.pid, tc.name or "unknown",
                         tc.id, tc.arguments, max(call.ended_ns, call.started_ns))
            self._tools[tool.key] = tool
            opened.append(tool)
        if not opened:
            del self._open_tools[call.pid]
        return [chat]

    # -- links and what no tool call explains ------------------------------------------

    def _tool(self, ref: ToolCallRef) -> _Tool | None:
        key = (ref.llm_pid, ref.llm_started_ns, ref.index)
        return self._tools.get(key) or self._done_tools.get(key)

    def _process(self, key: ProcessKey) -> _Proc:
        p = self._procs.get(key)
        if p is None:  # forgotten, or never seen: what the key says is all there is
            p = _Proc(key, self._parent.get(key.pid))
            self._procs[key] = p
        return p

    def _running_at(self, pid: int, ts: int) -> _Proc | None:
        for p in reversed(self._by_pid.get(pid, ())):
            if p.key.start_ns <= ts:
                return p
        return None

    def _link(self, link: Link) -> list[SpanData]:
        tool = self._tool(link.tool_call)
        if tool is None:
            self.stats["links_unresolved"] += 1
            return []
        target = link.target
        if isinstance(target, FileKey):
            return self._file(target, link.evidence, tool=tool)
        p = self._process(target)
        if p.span_id is not None:
            return []  # already placed
        p.span_id, p.trace, p.tool, p.evidence = self._id(64), tool.trace, tool, dict(link.evidence)
        return self._placed(p)

    def _unexplained(self, u: Unexplained) -> list[SpanData]:
        target = u.target
        tr = self._trace_for(target.pid, u.ts, create=False)
        if tr is None:
            self.stats["links_unresolved"] += 1
            return []
        if isinstance(target, FileKey):
            return self._file(target, {"reason": u.reason}, trace=tr)
        p = self._process(target)
        if p.span_id is not None:
            return []
        p.span_id, p.trace, p.unexplained = self._id(64), tr, u.reason
        tr.unexplained += 1
        return self._placed(p)

    def _placed(self, p: _Proc) -> list[SpanData]:
        if p.end_ns is not None or p.key.pid not in self._current or self._current[p.key.pid] is not p:
            self._schedule(p)
        return []

    def _file(self, f: FileKey, evidence: dict[str, Any], tool: _Tool | None = None,
              trace: _Trace | None = None) -> list[SpanData]:
        attrs: dict[str, Any] = {"file.path": redact_text(f.path or ""), "agentsight.file.operation": f.op,
                                 "process.pid": f.pid}
        if tool is not None:
            attrs.update(_flat("agentsight.link.evidence", evidence))
        else:
            attrs["agentsight.unexplained"] = True
            attrs["agentsight.unexplained.reason"] = str(evidence.get("reason", ""))
        event = SpanEvent(f"file.{f.op}", f.ts, attrs)
        p = self._running_at(f.pid, f.ts)
        if p is not None and p.span_id is not None and not p.exported and (
                (tool is not None and p.tool is tool) or (tool is None and p.unexplained is not None)):
            p.events.append(event)
            return []
        if tool is not None and not tool.exported:
            tool.events.append(event)
            return []
        if trace is not None and not trace.exported:
            trace.events.append(event)
            return []
        # Its span went out already: a zero-length span of its own, under it.
        owner = tool.trace if tool is not None else trace
        assert owner is not None
        self.stats["late_file_spans"] += 1
        parent = tool.span_id if tool is not None else owner.span_id
        return [SpanData(owner.trace_id, self._id(64), parent, f"file {f.op}", "internal", f.ts, f.ts, attrs,
                         resource=owner.resource)]

    # -- time ------------------------------------------------------------------------

    def due(self, now: float) -> list[SpanData]:
        """Spans whose wait is over; in "trace" mode, also ends the traces of
        agents that went quiet or ran for a whole window."""
        self._now = now
        if self.mode == "trace" and self.wall_clock is not None:
            wall = self.wall_clock()
            for traces in self._agents.values():
                tr = traces[-1]
                if tr.end_ns is None:
                    if wall - tr.last_call_ns > self.idle_ns:
                        self._close_trace(tr, tr.last_activity_ns, "no LLM call for a while")
                    elif wall - tr.start_ns > self.window_ns:
                        self._close_trace(tr, max(tr.last_activity_ns, wall), "the trace window ended")
        out: list[SpanData] = []
        heap = self._heap
        while heap and heap[0][0] <= now:
            due, _, obj = heapq.heappop(heap)
            if obj.exported or obj.due != due:
                continue
            out += self._emit(obj)
        return out

    def close(self, end_ns: int | None = None) -> list[SpanData]:
        """Everything still held, as the run ends at `end_ns`."""
        end = max(end_ns or 0, self.last_ns)
        for traces in self._agents.values():
            if traces[-1].end_ns is None:
                self._close_trace(traces[-1], max(end, traces[-1].last_activity_ns), "the capture ended")
        for tools in list(self._open_tools.values()):
            for tool in tools:
                self._close_tool(tool, end)
        self._open_tools.clear()
        out: list[SpanData] = []
        # Processes first, then tool calls, then agents: file events find a carrier.
        pending: list[Any] = [p for p in self._procs.values() if p.span_id is not None and not p.exported]
        pending += [t for t in self._tools.values() if not t.exported]
        pending += [tr for traces in self._agents.values() for tr in traces if not tr.exported]
        for obj in pending:
            if isinstance(obj, _Proc) and obj.end_ns is None:
                obj.end_ns = end
                obj.events.append(SpanEvent("agentsight.still_running", end, {}))
            out += self._emit(obj)
        self._heap.clear()
        return out

    # -- spans -------------------------------------------------------------------------

    def _emit(self, obj: _Trace | _Tool | _Proc) -> list[SpanData]:
        if isinstance(obj, _Proc):
            if obj.end_ns is None:
                if self._current.get(obj.key.pid) is obj:
                    return []  # due again when it exits
                obj.end_ns = obj.exec_ns or obj.key.start_ns  # forgotten, or never seen: no end known
            return [self._process_span(obj)]
        if isinstance(obj, _Tool):
            return [self._tool_span(obj)]
        return [self._agent_span(obj)]

    def _tool_span(self, tool: _Tool) -> SpanData:
        tool.exported = True
        if self._tools.pop(tool.key, None) is not None:
            self._done_tools[tool.key] = tool
            if len(self._done_tools) > MAX_DONE_TOOLS:
                self._done_tools.popitem(last=False)
                self.stats["tool_calls_forgotten"] += 1
        attrs: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": tool.name,
                                 "gen_ai.tool.type": "function"}
        if tool.call_id:
            attrs["gen_ai.tool.call.id"] = tool.call_id
        if self.content:
            attrs["gen_ai.tool.call.arguments"], _ = otlp_content.encode(redact_json(tool.arguments))
            if tool.has_result:
                attrs["gen_ai.tool.call.result"], _ = otlp_content.encode(redact_json(tool.result))
        end = tool.end_ns if tool.end_ns is not None else tool.start_ns
        return SpanData(tool.trace.trace_id, tool.span_id, tool.chat_span_id, f"execute_tool {tool.name}", "internal",
                        tool.start_ns, end, attrs, sorted(tool.events, key=lambda e: e.ts),
                        resource=tool.trace.resource)

    def _process_span(self, p: _Proc) -> SpanData:
        p.exported = True
        tr = p.trace
        assert tr is not None and p.span_id is not None
        attrs: dict[str, Any] = {"process.pid": p.key.pid}
        if p.ppid is not None:
            attrs["process.parent_pid"] = p.ppid
        if p.argv is not None:
            attrs["process.command_args"] = _argv(p.argv)
        if p.filename:
            attrs["process.executable.path"] = p.filename
            attrs["process.executable.name"] = os.path.basename(p.filename)
        if p.cwd:
            attrs["process.working_directory"] = p.cwd
        if p.exit_code is not None:
            attrs["process.exit.code"] = p.exit_code
        error = None
        if p.signal:
            attrs["agentsight.process.signal"] = p.signal
            error = f"killed by signal {p.signal}"
        if p.tool is not None:
            attrs.update(_flat("agentsight.link.evidence", p.evidence or {}))
        if p.unexplained is not None:
            attrs["agentsight.unexplained"] = True
            attrs["agentsight.unexplained.reason"] = p.unexplained
        # Under the span of the process that started it, when that one has one too.
        parent_id = p.tool.span_id if p.tool is not None else tr.span_id
        if p.ppid is not None:
            parent = self._running_at(p.ppid, p.key.start_ns)
            if parent is not None and parent is not p and parent.span_id is not None and parent.trace is tr and (
                    parent.tool is p.tool):
                parent_id = parent.span_id
        program = os.path.basename(p.argv[0]) if p.argv else os.path.basename(p.filename or "") or p.comm or "?"
        start = p.exec_ns or p.key.start_ns
        return SpanData(tr.trace_id, p.span_id, parent_id, f"process {program}", "internal", start,
                        max(p.end_ns or start, start), attrs, sorted(p.events, key=lambda e: e.ts), error=error,
                        resource=tr.resource)

    def _agent_span(self, tr: _Trace) -> SpanData:
        tr.exported = True
        attrs: dict[str, Any] = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": tr.name,
                                 "process.pid": tr.agent_pid}
        if tr.providers:
            attrs["gen_ai.provider.name"] = max(tr.providers.items(), key=lambda kv: kv[1])[0]
        if len(tr.models) == 1:
            attrs["gen_ai.request.model"] = next(iter(tr.models))
        if tr.argv:
            attrs["process.command_args"] = _argv(tr.argv)
        if tr.executable:
            attrs["process.executable.path"] = tr.executable
        if tr.exit_code is not None:
            attrs["process.exit.code"] = tr.exit_code
        attrs.update(tr.tokens)
        attrs["agentsight.llm_calls"] = tr.calls
        attrs["agentsight.unexplained.processes"] = tr.unexplained
        if tr.end_reason:
            attrs["agentsight.trace.end_reason"] = tr.end_reason
        end = tr.end_ns if tr.end_ns is not None else tr.last_activity_ns
        return SpanData(tr.trace_id, tr.span_id, None, f"invoke_agent {tr.name}", "internal", tr.start_ns,
                        max(end, tr.start_ns), attrs, sorted(tr.events, key=lambda e: e.ts), resource=tr.resource)


# -- metrics ----------------------------------------------------------------------------


@dataclass(slots=True)
class MetricPoint:
    """One cumulative data point of a histogram (`bounds` set) or a monotonic sum."""

    name: str
    unit: str
    description: str
    resource: tuple[tuple[str, str], ...]
    attributes: dict[str, Any]
    start_ns: int
    count: int = 0
    total: float = 0.0
    bounds: tuple[float, ...] = ()
    buckets: list[int] = field(default_factory=list)
    min: float = float("inf")
    max: float = float("-inf")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if self.bounds:
            self.buckets[bisect.bisect_left(self.bounds, value)] += 1
            self.min = min(self.min, value)
            self.max = max(self.max, value)


_METRIC_DIMENSIONS = ("gen_ai.operation.name", "gen_ai.provider.name", "gen_ai.request.model",
                      "gen_ai.response.model", "server.address", "server.port")
_HISTOGRAMS = {
    "gen_ai.client.token.usage": ("{token}", "Number of input and output tokens used.", TOKEN_BOUNDS),
    "gen_ai.client.operation.duration": ("s", "GenAI operation duration.", DURATION_BOUNDS),
    "gen_ai.client.operation.time_to_first_chunk": ("s", "Time to receive the first chunk of a streamed response.",
                                                    DURATION_BOUNDS),
}
_COUNTERS = {
    "gen_ai.usage.input_tokens": ("gen_ai.client.inference.usage.input_tokens", "Input tokens, cached ones included."),
    "gen_ai.usage.output_tokens": ("gen_ai.client.inference.usage.output_tokens", "Output tokens."),
    "gen_ai.usage.cache_read.input_tokens": ("gen_ai.client.inference.usage.cache_read.input_tokens",
                                             "Input tokens served from a provider's cache."),
    "gen_ai.usage.cache_creation.input_tokens": ("gen_ai.client.inference.usage.cache_write.input_tokens",
                                                 "Input tokens written to a provider's cache."),
}


class Metrics:
    """The GenAI client metrics, cumulative since the run began.

    gen_ai.client.token.usage (with gen_ai.token.type) and
    gen_ai.client.operation.duration (with error.type on failure), the
    conventions' histograms with their bucket boundaries; the time to first
    chunk of streamed calls; and the newer gen_ai.client.inference.usage.*
    token counters (gen_ai.token.modality "unknown": no API reports it)."""

    def __init__(self) -> None:
        self._points: dict[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, Any], ...]], MetricPoint] = {}

    def _point(self, name: str, unit: str, description: str, resource: tuple[tuple[str, str], ...],
               attrs: dict[str, Any], start_ns: int, bounds: tuple[float, ...] = ()) -> MetricPoint:
        key = (name, resource, tuple(sorted(attrs.items())))
        point = self._points.get(key)
        if point is None:
            point = MetricPoint(name, unit, description, resource, attrs, start_ns, bounds=bounds,
                                buckets=[0] * (len(bounds) + 1) if bounds else [])
            self._points[key] = point
        return point

    def record(self, resource: tuple[tuple[str, str], ...], span_attrs: dict[str, Any], usage: dict[str, int],
               seconds: float, ttfc: float | None, ts: int) -> None:
        dims = {k: span_attrs[k] for k in _METRIC_DIMENSIONS if k in span_attrs}
        start = ts - int(seconds * NS)
        unit, desc, bounds = _HISTOGRAMS["gen_ai.client.operation.duration"]
        duration_dims = dict(dims)
        if "error.type" in span_attrs:
            duration_dims["error.type"] = span_attrs["error.type"]
        self._point("gen_ai.client.operation.duration", unit, desc, resource, duration_dims, start, bounds).add(seconds)
        if ttfc is not None:
            unit, desc, bounds = _HISTOGRAMS["gen_ai.client.operation.time_to_first_chunk"]
            self._point("gen_ai.client.operation.time_to_first_chunk", unit, desc, resource, dims, start,
                        bounds).add(ttfc)
        unit, desc, bounds = _HISTOGRAMS["gen_ai.client.token.usage"]
        for kind, attr in (("input", "gen_ai.usage.input_tokens"), ("output", "gen_ai.usage.output_tokens")):
            if attr in usage:
                self._point("gen_ai.client.token.usage", unit, desc, resource, {**dims, "gen_ai.token.type": kind},
                            start, bounds).add(usage[attr])
        for attr, (name, desc) in _COUNTERS.items():
            if attr in usage:
                self._point(name, "{token}", desc, resource, {**dims, "gen_ai.token.modality": "unknown"},
                            start).add(usage[attr])

    def points(self) -> list[MetricPoint]:
        return list(self._points.values())
