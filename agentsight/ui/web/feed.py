"""The live feed of `record --serve`: a sink that turns the run's events
into the web UI's items and pushes them to every open page.

The capture must never wait for a browser. `write()` only appends the
events to a bounded queue (beyond it they are dropped and counted, and the
pages told to read the session file again); a thread of its own makes the
items and hands each page its own bounded queue of encoded batches, which
a slow page overflows into the same re-read. The session file, written by
the SessionWriter beside this sink, stays the truth: a page loads from it
and the feed only brings what came after, so items carry the natural keys
of store.py and a page merges the two.

Links and unexplained activity are shown whenever the correlator emits
them, during the run or at its end.
"""
from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ...analyzers.correlate import file_change
from ...events import Exec, Exit, FileKey, FileOp, Fork, Link, LlmCall, Open, ProcessKey, Startup, ToolResult, Unexplained
from ...sinks.base import Outcome, Sink
from ...sinks.jsonl import safe_json
from .store import (
    ARGV_CHARS, argv_text, call_id, call_summary, file_id, process_id, tool_id, tool_item,
)

MAX_PENDING_EVENTS = 100_000
MAX_PAGE_FRAMES = 2_000  # batches waiting for one page
REPLAY_SECONDS = 5.0  # what a page that just connected is sent again (it loaded the file up to ~1 s ago)
REPLAY_FRAMES = 2_000
RECENT_CALLS = 64  # calls kept whole until the session file has them
KNOWN_TARGETS = 100_000  # processes and files remembered to describe links to them
STATS_SECONDS = 1.0


def _encode(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(safe_json(value)[0])


def frame(event: str, data: Any) -> bytes:
    """One server-sent event (JSON never holds a raw newline)."""
    return b"event: " + event.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class Page:
    """One open page's queue of frames."""

    def __init__(self) -> None:
        self.frames: collections.deque[bytes] = collections.deque()
        self.ready = threading.Event()
        self.overflowed = False
        self.closed = False

    def put(self, data: bytes) -> None:
        if self.overflowed:
            return
        if len(self.frames) >= MAX_PAGE_FRAMES:
            # Too slow to keep up: it reads the file again instead.
            self.frames.clear()
            self.overflowed = True
        else:
            self.frames.append(data)
        self.ready.set()

    def take(self, timeout: float) -> list[bytes]:
        """What is waiting (a `resync` after an overflow), after waiting up to `timeout`."""
        self.ready.wait(timeout)
        self.ready.clear()
        out = []
        while self.frames:
            out.append(self.frames.popleft())
        if self.overflowed:
            self.overflowed = False
            out = [frame("resync", {"reason": "this page fell behind"})]
        return out


class _Lru(collections.OrderedDict):
    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > self.size:
            self.popitem(last=False)


class WebFeed(Sink):
    kinds = frozenset(("exec", "exit", "fork", "open", "file", "llm_call", "link", "unexplained", "startup",
                       "tool_result"))

    def __init__(self, capture_losses: Callable[[], dict[str, int]] | None = None):
        """`capture_losses`: what the capture has lost so far; asked for
        about once a second, on the capture's thread (between batches)."""
        self.capture_losses = capture_losses or (lambda: {})
        self._capture_lost: dict[str, int] = {}
        self._asked_at = 0.0
        self.closed = False
        self.dropped = 0
        self._pending: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._pages: list[Page] = []
        self._pages_lock = threading.Lock()
        self._replay: collections.deque[tuple[float, bytes]] = collections.deque(maxlen=REPLAY_FRAMES)
        self._recent: _Lru = _Lru(RECENT_CALLS)
        self._targets: _Lru = _Lru(KNOWN_TARGETS)  # process or file id -> its item
        self._current: dict[int, str] = {}  # pid -> id of the program it runs
        self._not_execed: set[str] = set()
        self._lost_before: dict[str, int] = {}
        self._stats_at = 0.0
        self._dropped_told = 0
        self._outcome: Outcome | None = None
        self._thread = threading.Thread(target=self._run, name="agentsight-web-feed", daemon=True)
        self._thread.start()

    # -- the sink: on the capture's thread, as little as possible --------------------

    def write(self, events: Sequence[Any]) -> None:
        if not events:
            return
        room = MAX_PENDING_EVENTS - len(self._pending)
        if room < len(events):
            self.dropped += len(events) - max(room, 0)
            events = events[:max(room, 0)]
        self._pending.extend(events)
        self._wake.set()

    def tick(self, now: float) -> None:
        if now - self._asked_at >= STATS_SECONDS:
            self._asked_at = now
            self._capture_lost = {k: v for k, v in self.capture_losses().items() if v}

    def close(self, outcome: Outcome | None = None) -> None:
        if outcome is not None:
            self._capture_lost = {k: v for k, v in outcome.losses.items() if v and isinstance(v, int)}
        self._outcome = outcome
        self.closed = True
        self._wake.set()
        self._thread.join(10)

    def losses(self) -> dict[str, int]:
        return {"events_dropped": self.dropped} if self.dropped else {}

    # -- pages -----------------------------------------------------------------------

    def subscribe(self) -> Page:
        page = Page()
        with self._pages_lock:
            horizon = time.monotonic() - REPLAY_SECONDS
            for at, data in self._replay:
                if at >= horizon:
                    page.put(data)
            self._pages.append(page)
        return page

    def unsubscribe(self, page: Page) -> None:
        page.closed = True
        with self._pages_lock:
            if page in self._pages:
                self._pages.remove(page)

    def _broadcast(self, data: bytes, keep: bool = True) -> None:
        with self._pages_lock:
            if keep:
                self._replay.append((time.monotonic(), data))
            for page in self._pages:
                page.put(data)

    def recent_record(self, id: str) -> dict[str, Any] | None:
        event = self._recent.get(id)
        return event.to_json() if event is not None else None

    # -- events -> items, on the feed's thread ----------------------------------------

    def _run(self) -> None:
        while True:
            self._wake.wait(STATS_SECONDS)
            self._wake.clear()
            while self._pending:
                events: list[Any] = []
                while self._pending and len(events) < 5000:
                    events.append(self._pending.popleft())
                items = []
                for e in events:
                    try:
                        items += self._items(e)
                    except Exception as exc:  # noqa: BLE001 - one odd event must not end the feed
                        items.append({"kind": "loss", "id": f"x:feed:{time.time_ns()}", "t0": time.time_ns(),
                                      "pid": None, "what": f"the live view could not show an event: {exc}"})
                if items:
                    self._broadcast(frame("items", {"items": items}))
            self._stats()
            if self.closed and not self._pending:
                outcome = self._outcome
                self._broadcast(frame("end", {"status": outcome.status if outcome else "complete"}))
                return

    def _stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < STATS_SECONDS and not self.closed:
            return
        self._stats_at = now
        lost = self._capture_lost
        items = []
        grew = {k: v - self._lost_before.get(k, 0) for k, v in lost.items() if v > self._lost_before.get(k, 0)}
        if grew:
            ts = time.time_ns()
            items.append({"kind": "loss", "id": f"x:capture:{ts}", "t0": ts, "pid": None,
                          "what": "lost: " + ", ".join(f"{k} +{v}" for k, v in sorted(grew.items()))})
        self._lost_before = lost
        if self.dropped > self._dropped_told:
            ts = time.time_ns()
            items.append({"kind": "loss", "id": f"x:feed:{ts}", "t0": ts, "pid": None,
                          "what": f"{self.dropped - self._dropped_told} events not shown live (the browser feed "
                                  "fell behind); reloading shows them"})
            self._dropped_told = self.dropped
            self._broadcast(frame("resync", {"reason": "events were dropped"}), keep=False)
        if items:
            self._broadcast(frame("items", {"items": items}))
        self._broadcast(frame("stats", {"losses": lost, "feed_dropped": self.dropped, "now_ns": time.time_ns()}),
                        keep=False)

    def _remember(self, item: dict) -> dict:
        self._targets.put(item["id"], item)
        return item

    def _items(self, e: Any) -> list[dict[str, Any]]:
        t = type(e)
        if t is Fork:
            key = process_id(e.child_pid, e.ts)
            item = {"id": key, "kind": "process", "t0": e.ts, "t1": None, "pid": e.child_pid, "ppid": e.pid,
                    "parent": self._current.get(e.pid), "comm": e.comm, "argv": None, "cwd": None,
                    "exit_code": None, "signal": None}
            self._current[e.child_pid] = key
            self._not_execed.add(key)
            return [self._remember(item)]
        if t is Exec:
            argv, left = argv_text(e.argv, ARGV_CHARS)
            fields = {"t0": e.ts, "comm": e.comm, "argv": argv, "cwd": e.cwd}
            if left or e.argv_truncated:
                fields["argv_cut"] = left or True
            running = self._current.get(e.pid)
            out = []
            if running is not None and running in self._not_execed:  # a forked child now runs its own program
                self._not_execed.discard(running)
                item = dict(self._targets.get(running) or {"id": running, "kind": "process", "pid": e.pid}, **fields)
                return [self._remember(item)]
            if running is not None:  # the program it ran before ends here
                out.append({"id": running, "kind": "process", "pid": e.pid, "t1": e.ts})
            key = process_id(e.pid, e.ts)
            item = {"id": key, "kind": "process", "t1": None, "pid": e.pid, "ppid": e.ppid,
                    "parent": self._current.get(e.ppid), "exit_code": None, "signal": None, **fields}
            self._current[e.pid] = key
            out.append(self._remember(item))
            return out
        if t is Exit:
            ended = self._current.pop(e.pid, None)
            if ended is None:
                return []
            key = ended
            self._not_execed.discard(key)
            update = {"id": key, "kind": "process", "pid": e.pid, "t1": e.ts, "exit_code": e.exit_code,
                      "signal": e.signal}
            known = self._targets.get(key)
            if known is not None:
                known.update(update)
            return [update]
        if t is Open or t is FileOp:
            change = file_change(e)
            if change is None:
                return []
            new_path = (e.new_resolved or e.new_path) if t is FileOp else None
            return [self._remember({"id": file_id(e.pid, e.ts), "kind": "file", "t0": change.ts, "pid": e.pid,
                                    "op": change.op, "path": change.path, "new_path": new_path,
                                    "proc": self._current.get(e.pid)})]
        if t is LlmCall:
            cid = call_id(e.pid, e.started_ns)
            self._recent.put(cid, e)
            summary = call_summary({"response": {"text": e.response.text, "stop_reason": e.response.stop_reason,
                                                 "thinking": e.response.thinking},
                                    "first_token_ns": e.first_token_ns, "started_ns": e.started_ns,
                                    "incomplete_reason": e.incomplete_reason})
            tools = [tool_item(tool_id(e.pid, e.started_ns, i), cid, e.ended_ns, tc.name, tc.id, tc.arguments)
                     for i, tc in enumerate(e.response.tool_calls)]
            return [{"id": cid, "kind": "llm", "t0": e.started_ns, "t1": e.ended_ns, "pid": e.pid,
                     "provider": e.provider, "model": e.model, "in": e.usage.get("input_tokens"),
                     "out": e.usage.get("output_tokens"), "status": e.status, "incomplete": e.incomplete,
                     **summary, "tools": tools}]
        if t is Link:
            target = self._target_id(e.target)
            ref = e.tool_call
            tool = tool_id(ref.llm_pid, ref.llm_started_ns, ref.index)
            return [{"id": f"l:{tool}:{target}", "kind": "link", "tool": tool, "target": target,
                     "target_kind": e.target_kind, "evidence": e.evidence, "role": e.role,
                     "item": self._targets.get(target)}]
        if t is Startup:
            target = self._target_id(e.target)
            return [{"id": f"s:{target}", "kind": "startup", "target": target, "target_kind": e.target_kind,
                     "item": self._targets.get(target)}]
        if t is ToolResult:
            ref = e.tool_call
            return [{"id": f"r:{ref.llm_pid}:{ref.llm_started_ns}:{ref.index}", "kind": "tool_result",
                     "tool": tool_id(ref.llm_pid, ref.llm_started_ns, ref.index),
                     "result": {"sent_ns": e.ts, "duration_ns": e.duration_ns, "is_error": e.is_error,
                                "size": e.size}}]
        if t is Unexplained:
            target = self._target_id(e.target)
            return [{"id": f"u:{target}", "kind": "unexplained", "target": target, "target_kind": e.target_kind,
                     "reason": e.reason, "item": self._targets.get(target)}]
        return []

    @staticmethod
    def _target_id(target: ProcessKey | FileKey) -> str:
        if isinstance(target, ProcessKey):
            return process_id(target.pid, target.start_ns)
        return file_id(target.pid, target.ts)
