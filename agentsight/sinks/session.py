"""A recording session in one SQLite file: the writer (a sink) and the reader.

Written as events arrive and committed at least every second, so a crash
of agentsight or of the agent loses at most the last second. `meta.status`
says how the recording ended: `recording` (it did not end: agentsight was
killed or crashed), `complete`, or `stopped: <why>`.
"""
from __future__ import annotations

import errno
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from ..analyzers.correlate import file_change
from ..errors import AgentsightError
from ..events import (
    Connect, EventDecodeError, Exec, Exit, FileKey, FileOp, Fork, HttpExchange, Link, LlmCall, LlmResponse, Open,
    LlmCallRef, ProcessKey, RawEvent, Startup, ToolCall, ToolCallRef, ToolResult, Unexplained, from_json,
)
from .base import Outcome, Sink
from .files import check_new, invoking_user
from .jsonl import safe_json

SCHEMA_VERSION = "3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
-- One row per program a process ran (a fork without exec is a row too).
CREATE TABLE IF NOT EXISTS processes (
    id INTEGER PRIMARY KEY, pid INTEGER, ppid INTEGER, comm TEXT, filename TEXT, argv TEXT,
    argv_truncated INTEGER, cwd TEXT, uid INTEGER, start_ns INTEGER, exec_ns INTEGER,
    end_ns INTEGER, exit_code INTEGER, signal INTEGER);
CREATE TABLE IF NOT EXISTS file_activity (
    id INTEGER PRIMARY KEY, ts INTEGER, pid INTEGER, op TEXT, path TEXT, new_path TEXT, ret INTEGER);
CREATE TABLE IF NOT EXISTS connections (
    id INTEGER PRIMARY KEY, ts INTEGER, pid INTEGER, family TEXT, addr TEXT, port INTEGER, ret INTEGER);
CREATE TABLE IF NOT EXISTS llm_calls (
    id INTEGER PRIMARY KEY, started_ns INTEGER, ended_ns INTEGER, pid INTEGER, provider TEXT, model TEXT,
    input_tokens INTEGER, output_tokens INTEGER, status INTEGER, incomplete INTEGER, record TEXT);
CREATE TABLE IF NOT EXISTS tool_calls (
    id INTEGER PRIMARY KEY, llm_call_id INTEGER, call_id TEXT, name TEXT, arguments TEXT);
CREATE TABLE IF NOT EXISTS http_exchanges (id INTEGER PRIMARY KEY, ts INTEGER, pid INTEGER, record TEXT);
-- What each tool call caused, and the evidence for it; role: shell, command or wrapper.
CREATE TABLE IF NOT EXISTS links (
    id INTEGER PRIMARY KEY, tool_call_id INTEGER, kind TEXT, target_id INTEGER, evidence TEXT, role TEXT);
-- Activity of the agent's tree that no tool call explains.
CREATE TABLE IF NOT EXISTS unexplained (
    id INTEGER PRIMARY KEY, kind TEXT, target_id INTEGER, reason TEXT);
-- Activity of the agent's tree before its first LLM call.
CREATE TABLE IF NOT EXISTS startup (id INTEGER PRIMARY KEY, kind TEXT, target_id INTEGER);
-- Each tool call's result as it went back to the model, in the request of llm_call_id.
CREATE TABLE IF NOT EXISTS tool_results (
    id INTEGER PRIMARY KEY, tool_call_id INTEGER, llm_call_id INTEGER, sent_ns INTEGER, duration_ns INTEGER,
    is_error INTEGER, size INTEGER, location TEXT);
CREATE TABLE IF NOT EXISTS raw_events (id INTEGER PRIMARY KEY, ts INTEGER, pid INTEGER, type TEXT, event TEXT);
CREATE INDEX IF NOT EXISTS raw_ts ON raw_events(ts);
CREATE INDEX IF NOT EXISTS raw_pid ON raw_events(pid);
CREATE INDEX IF NOT EXISTS processes_pid ON processes(pid);
CREATE INDEX IF NOT EXISTS processes_start ON processes(start_ns);
CREATE INDEX IF NOT EXISTS files_ts ON file_activity(ts);
CREATE INDEX IF NOT EXISTS files_pid ON file_activity(pid);
CREATE INDEX IF NOT EXISTS connections_ts ON connections(ts);
CREATE INDEX IF NOT EXISTS llm_started ON llm_calls(started_ns);
CREATE INDEX IF NOT EXISTS links_tool ON links(tool_call_id);
CREATE INDEX IF NOT EXISTS tool_results_tool ON tool_results(tool_call_id);
"""


def _json(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return orjson.dumps(safe_json(value)[0]).decode()


class SessionWriter(Sink):
    COMMIT_SECONDS = 1.0

    def __init__(self, path: str, meta: dict[str, Any], overwrite: bool = False):
        self.path = path
        for p in (path, path + "-wal", path + "-shm", path + "-journal"):
            check_new(p, overwrite, "--overwrite")
        owner = invoking_user()
        try:
            if overwrite:
                for p in (path, path + "-wal", path + "-shm", path + "-journal"):
                    if os.path.lexists(p):
                        os.unlink(p)
            # Created here, private and owned by whoever ran sudo; SQLite
            # gives its -wal and -shm files the same mode and owner.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            if owner is not None:
                os.fchown(fd, *owner)
            os.close(fd)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise AgentsightError(f"cannot create {path}: {getattr(exc, 'strerror', None) or exc}",
                                  exit_code=2) from None
        # WAL: readers (report) see the last commit while recording goes on.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.execute("BEGIN")
        self.set_meta(schema=SCHEMA_VERSION, status="recording", started_ns=time.time_ns(), **meta)
        self._last_commit = time.monotonic()
        self._current_process: dict[int, int] = {}  # pid -> processes.id of what it runs now
        self._not_execed: set[int] = set()  # rows of forks that have not exec'd yet
        self._process_rows: dict[ProcessKey, int] = {}
        self._file_rows: dict[FileKey, int] = {}
        self._tool_rows: dict[tuple[int, int, int], int] = {}  # (pid, started_ns, index) -> tool_calls.id
        self._llm_rows: dict[tuple[int, int], int] = {}  # (pid, started_ns) -> llm_calls.id
        self.counts = {"llm_calls": 0, "commands": 0, "files_written": 0, "connections": 0}
        self.tokens = {"input": 0, "output": 0}
        self._losses: dict[str, int] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {Exec: self._exec, Fork: self._fork, Exit: self._exit, Open: self._file, FileOp: self._file,
                          Connect: self._connect, LlmCall: self._llm_call, HttpExchange: self._http,
                          Link: self._link, Unexplained: self._unexplained, Startup: self._startup,
                          ToolResult: self._tool_result}

    def set_meta(self, **values: Any) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(k, _json(v)) for k, v in values.items()])

    def write(self, events: Sequence[Any]) -> None:
        raw = []
        handlers = self._handlers
        try:
            for e in events:
                if isinstance(e, RawEvent):
                    d = e.to_json()
                    raw.append((e.ts, e.pid, d["type"], _json(d)))
                handler = handlers.get(type(e))
                if handler is not None:
                    handler(e)
            self.db.executemany("INSERT INTO raw_events (ts, pid, type, event) VALUES (?, ?, ?, ?)", raw)
        except sqlite3.Error as exc:
            self._failed(exc)

    def _failed(self, exc: sqlite3.Error) -> None:
        full = isinstance(exc, sqlite3.OperationalError) and "full" in str(exc)
        raise AgentsightError(f"cannot write the session {self.path}: {exc}"
                              + ("; free some space" if full else ""), exit_code=1) from None

    def tick(self, now: float) -> None:
        if now - self._last_commit >= self.COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        try:
            self.db.execute("COMMIT")
            self.db.execute("BEGIN")
        except sqlite3.Error as exc:
            self._failed(exc)
        self._last_commit = time.monotonic()

    def close(self, outcome: Outcome | None = None, **meta: Any) -> None:
        if outcome is not None:
            meta = {"status": outcome.status, "losses": outcome.losses, "counts": outcome.counts,
                    "analysis": outcome.stats, **outcome.extra, **meta}
        try:
            self.set_meta(ended_ns=time.time_ns(), **meta)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.db.close()
            self._failed(exc)
        try:
            # Back to one self-contained file, unless someone is reading it
            # right now: then it stays a file with its -wal, complete as well.
            self.db.execute("PRAGMA busy_timeout = 1000")
            self.db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass
        finally:
            self.db.close()

    def losses(self) -> dict[str, int]:
        return dict(self._losses)

    # --- events -> rows ---

    def _exec(self, e: Exec) -> None:
        self.counts["commands"] += 1
        row = self._current_process.get(e.pid)
        values = (e.comm, e.filename, _json(e.argv), int(e.argv_truncated), e.cwd, e.uid, e.ts)
        if row is not None and row in self._not_execed:
            self._not_execed.discard(row)
            # A forked child now runs its own program.
            self.db.execute("UPDATE processes SET comm=?, filename=?, argv=?, argv_truncated=?, cwd=?, uid=?, "
                            "exec_ns=? WHERE id=?", values + (row,))
            return
        if row is not None:
            self.db.execute("UPDATE processes SET end_ns = ? WHERE id = ?", (e.ts, row))
        cur = self.db.execute(
            "INSERT INTO processes (pid, ppid, comm, filename, argv, argv_truncated, cwd, uid, start_ns, exec_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (e.pid, e.ppid) + values[:-1] + (e.ts, e.ts))
        self._remember_process(e.pid, ProcessKey(e.pid, e.ts), cur.lastrowid)

    def _remember_process(self, pid: int, key: ProcessKey, row: int | None) -> None:
        assert row is not None
        self._current_process[pid] = row
        self._process_rows[key] = row

    def _fork(self, e: Fork) -> None:
        cur = self.db.execute("INSERT INTO processes (pid, ppid, comm, uid, start_ns) VALUES (?, ?, ?, ?, ?)",
                              (e.child_pid, e.pid, e.comm, e.uid, e.ts))
        self._remember_process(e.child_pid, ProcessKey(e.child_pid, e.ts), cur.lastrowid)
        assert cur.lastrowid is not None
        self._not_execed.add(cur.lastrowid)

    def _exit(self, e: Exit) -> None:
        row = self._current_process.pop(e.pid, None)
        if row is None:
            cur = self.db.execute("INSERT INTO processes (pid, ppid, comm, uid) VALUES (?, ?, ?, ?)",
                                  (e.pid, e.ppid, e.comm, e.uid))
            row = cur.lastrowid
        if row is not None:
            self._not_execed.discard(row)
        self.db.execute("UPDATE processes SET end_ns = ?, exit_code = ?, signal = ? WHERE id = ?",
                        (e.ts, e.exit_code, e.signal, row))

    def _file(self, e: Open | FileOp) -> None:
        key = file_change(e)
        if key is None:
            return
        self.counts["files_written"] += 1
        new_path = (e.new_resolved or e.new_path) if isinstance(e, FileOp) else None
        cur = self.db.execute("INSERT INTO file_activity (ts, pid, op, path, new_path, ret) VALUES (?, ?, ?, ?, ?, ?)",
                              (key.ts, key.pid, key.op, key.path, new_path, e.ret))
        assert cur.lastrowid is not None
        self._file_rows[key] = cur.lastrowid

    def _connect(self, e: Connect) -> None:
        self.counts["connections"] += 1
        self.db.execute("INSERT INTO connections (ts, pid, family, addr, port, ret) VALUES (?, ?, ?, ?, ?, ?)",
                        (e.ts, e.pid, e.family, e.addr, e.port, e.ret))

    def _http(self, e: HttpExchange) -> None:
        self.db.execute("INSERT INTO http_exchanges (ts, pid, record) VALUES (?, ?, ?)", (e.ts, e.pid, _json(e.to_json())))

    def _llm_call(self, e: LlmCall) -> None:
        usage = e.usage
        self.counts["llm_calls"] += 1
        self.tokens["input"] += usage.get("input_tokens") or 0
        self.tokens["output"] += usage.get("output_tokens") or 0
        cur = self.db.execute(
            "INSERT INTO llm_calls (started_ns, ended_ns, pid, provider, model, input_tokens, output_tokens, status, "
            "incomplete, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.started_ns, e.ended_ns, e.pid, e.provider, e.model, usage.get("input_tokens"),
             usage.get("output_tokens"), e.status, int(e.incomplete), _json(e.to_json())))
        assert cur.lastrowid is not None
        self._llm_rows[(e.pid, e.started_ns)] = cur.lastrowid
        for i, tc in enumerate(e.response.tool_calls):
            tool = self.db.execute("INSERT INTO tool_calls (llm_call_id, call_id, name, arguments) VALUES (?, ?, ?, ?)",
                                   (cur.lastrowid, tc.id, tc.name, _json(tc.arguments)))
            assert tool.lastrowid is not None
            self._tool_rows[(e.pid, e.started_ns, i)] = tool.lastrowid

    def _target_row(self, target: ProcessKey | FileKey) -> int | None:
        if isinstance(target, ProcessKey):
            return self._process_rows.get(target)
        return self._file_rows.get(target)

    def _link(self, link: Link) -> None:
        ref = link.tool_call
        tool = self._tool_rows.get((ref.llm_pid, ref.llm_started_ns, ref.index))
        target = self._target_row(link.target)
        if tool is None or target is None:
            self._losses["links.unresolved"] = self._losses.get("links.unresolved", 0) + 1
            return
        self.db.execute("INSERT INTO links (tool_call_id, kind, target_id, evidence, role) VALUES (?, ?, ?, ?, ?)",
                        (tool, link.target_kind, target, _json(link.evidence), link.role))

    def _unexplained(self, u: Unexplained) -> None:
        target = self._target_row(u.target)
        if target is None:
            self._losses["unexplained.unresolved"] = self._losses.get("unexplained.unresolved", 0) + 1
            return
        self.db.execute("INSERT INTO unexplained (kind, target_id, reason) VALUES (?, ?, ?)",
                        (u.target_kind, target, u.reason))

    def _startup(self, s: Startup) -> None:
        target = self._target_row(s.target)
        if target is None:
            self._losses["startup.unresolved"] = self._losses.get("startup.unresolved", 0) + 1
            return
        self.db.execute("INSERT INTO startup (kind, target_id) VALUES (?, ?)", (s.target_kind, target))

    def _tool_result(self, r: ToolResult) -> None:
        ref = r.tool_call
        tool = self._tool_rows.get((ref.llm_pid, ref.llm_started_ns, ref.index))
        carrier = self._llm_rows.get((r.llm_call.pid, r.llm_call.started_ns))
        if tool is None or carrier is None:
            self._losses["tool_results.unresolved"] = self._losses.get("tool_results.unresolved", 0) + 1
            return
        self.db.execute("INSERT INTO tool_results (tool_call_id, llm_call_id, sent_ns, duration_ns, is_error, size, "
                        "location) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (tool, carrier, r.ts, r.duration_ns, None if r.is_error is None else int(r.is_error), r.size,
                         r.where))


def open_session(path: str) -> sqlite3.Connection:
    """A finished or unfinished session, for reading."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise AgentsightError(f"{path}: no such file", exit_code=2) from None
    except PermissionError:
        raise AgentsightError(f"{path}: permission denied (a directory on its path is not open to you)",
                              exit_code=2) from None
    if not os.access(p, os.R_OK):
        raise AgentsightError(f"{path}: permission denied (it belongs to uid {st.st_uid}; "
                              "read it as that user or with sudo)", exit_code=2)
    try:
        # Not read-only: a session whose recording was cut off may still
        # need its write-ahead log replayed.
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.OperationalError as exc:
        if "readonly" in str(exc) or "unable to open" in str(exc):
            raise AgentsightError(f"{path}: permission denied ({exc}); its -wal or -shm file may belong to "
                                  "another user: read it with sudo", exit_code=2) from None
        raise AgentsightError(f"{path} is not an agentsight session ({exc})", exit_code=2) from None
    except sqlite3.DatabaseError as exc:
        raise AgentsightError(f"{path} is not an agentsight session ({exc})", exit_code=2) from None
    except OSError as exc:
        if exc.errno == errno.EACCES:
            raise AgentsightError(f"{path}: permission denied", exit_code=2) from None
        raise
    return db


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
        is not None


def read_meta(db: sqlite3.Connection) -> dict[str, Any]:
    return {row["key"]: orjson.loads(row["value"]) for row in db.execute("SELECT key, value FROM meta")}


def _llm_call(d: dict[str, Any]) -> LlmCall | None:
    """An LLM call from its stored JSON form (docs/events.md)."""
    try:
        r = d.get("response") or {}
        response = LlmResponse(
            text=r.get("text") or "", stop_reason=r.get("stop_reason"), thinking=r.get("thinking"),
            model=r.get("model"), id=r.get("id"),
            tool_calls=[ToolCall(t.get("id"), t.get("name"), t.get("arguments")) for t in r.get("tool_calls") or ()
                        if isinstance(t, dict)])
        return LlmCall(
            ts=d["ts"], provider=d.get("provider") or "unknown", api=d.get("api") or "", model=d.get("model"),
            stream=bool(d.get("stream")), status=d.get("status"), method=d.get("method") or "",
            host=d.get("host") or "", path=d.get("path") or "", request=d.get("request"),
            request_headers=d.get("request_headers") or {}, response_headers=d.get("response_headers") or {},
            response=response, usage={k: v for k, v in (d.get("usage") or {}).items() if isinstance(v, int)},
            started_ns=d["started_ns"], first_token_ns=d.get("first_token_ns"), ended_ns=d["ended_ns"],
            pid=d["pid"], tid=d.get("tid") or d["pid"], comm=d.get("comm") or "", conn=d.get("conn") or 0,
            side=d.get("side") or "client", error=d.get("error"), incomplete_reason=d.get("incomplete_reason"),
            request_truncated=bool(d.get("request_truncated")), analysis_error=d.get("analysis_error"),
            protocol=d.get("protocol") or "http/1.1")
    except (KeyError, TypeError, AttributeError):
        return None


def session_events(db: sqlite3.Connection) -> Iterator[Any]:
    """A session as the typed events that made it, for sinks that read one
    back (`export --otlp`): the process events and LLM calls in time order,
    then the links, the tool results, the start-up and the unexplained
    activity. Rows that no longer decode are skipped."""
    db.row_factory = sqlite3.Row
    query = """
        SELECT ts, 0 AS k, event FROM raw_events WHERE type IN ('exec', 'exit', 'fork')
        UNION ALL SELECT ended_ns, 1, record FROM llm_calls
        ORDER BY 1, 2"""
    for row in db.execute(query):
        try:
            d = orjson.loads(row["event"])
        except orjson.JSONDecodeError:
            continue
        if row["k"] == 1:
            call = _llm_call(d)
            if call is not None:
                yield call
            continue
        try:
            yield from_json(d)
        except EventDecodeError:
            continue

    processes = {r["id"]: r for r in db.execute("SELECT id, pid, start_ns, exec_ns FROM processes")}
    files = {r["id"]: r for r in db.execute("SELECT id, ts, pid, op, path FROM file_activity")}
    calls = {r["id"]: r for r in db.execute("SELECT id, pid, started_ns FROM llm_calls")}
    tools: dict[int, ToolCallRef] = {}
    index: dict[int, int] = {}
    for t in db.execute("SELECT id, llm_call_id, call_id FROM tool_calls ORDER BY id"):
        call = calls.get(t["llm_call_id"])
        if call is None:
            continue
        i = index[t["llm_call_id"]] = index.get(t["llm_call_id"], -1) + 1
        tools[t["id"]] = ToolCallRef(call["pid"], call["started_ns"], i, t["call_id"])

    def target(kind: str, row_id: int) -> tuple[int, ProcessKey | FileKey] | None:
        if kind == "process":
            p = processes.get(row_id)
            if p is None or p["start_ns"] is None:
                return None
            return p["exec_ns"] or p["start_ns"], ProcessKey(p["pid"], p["start_ns"])
        f = files.get(row_id)
        return None if f is None else (f["ts"], FileKey(f["pid"], f["ts"], f["op"], f["path"]))

    for link in db.execute("SELECT * FROM links ORDER BY id"):
        ref, found = tools.get(link["tool_call_id"]), target(link["kind"], link["target_id"])
        if ref is not None and found is not None:
            try:
                evidence = orjson.loads(link["evidence"] or "{}")
            except orjson.JSONDecodeError:
                evidence = {}
            role = link["role"] if "role" in link.keys() and link["role"] else "command"
            yield Link(found[0], ref, found[1], evidence if isinstance(evidence, dict) else {}, role)
    if _has_table(db, "tool_results"):
        for r in db.execute("SELECT * FROM tool_results ORDER BY id"):
            ref, carrier = tools.get(r["tool_call_id"]), calls.get(r["llm_call_id"])
            if ref is not None and carrier is not None:
                yield ToolResult(r["sent_ns"], ref, LlmCallRef(carrier["pid"], carrier["started_ns"]),
                                 r["duration_ns"] or 0, None if r["is_error"] is None else bool(r["is_error"]),
                                 r["size"] or 0, r["location"] or "")
    if _has_table(db, "startup"):
        for st in db.execute("SELECT kind, target_id FROM startup ORDER BY id"):
            found = target(st["kind"], st["target_id"])
            if found is not None:
                yield Startup(found[0], found[1])
    has_unexplained = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'unexplained'").fetchone() is not None
    if has_unexplained:
        for u in db.execute("SELECT kind, target_id, reason FROM unexplained ORDER BY id"):
            found = target(u["kind"], u["target_id"])
            if found is not None:
                yield Unexplained(found[0], found[1], u["reason"] or "")
