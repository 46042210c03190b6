"""A recording session in one SQLite file.

Written as events arrive and committed at least every second, so a crash
of agentsight or of the agent loses at most the last second. `meta.status`
says how the recording ended: `recording` (it did not end: agentsight was
killed or crashed), `complete`, or `stopped` with the reason.
"""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from ..analyzers import mask_event
from ..errors import AgentsightError

SCHEMA_VERSION = "1"
O_ACCMODE, O_WRONLY, O_RDWR, O_CREAT, O_TRUNC = 0o3, 0o1, 0o2, 0o100, 0o1000

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
-- What each tool call caused, and the evidence for it.
CREATE TABLE IF NOT EXISTS links (
    id INTEGER PRIMARY KEY, tool_call_id INTEGER, kind TEXT, target_id INTEGER, evidence TEXT);
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
"""


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# Devices and kernel interfaces: opened for writing all the time, never files changed.
PSEUDO_FILE_PREFIXES = ("/dev/", "/proc/", "/sys/")


def file_op(event: dict) -> str | None:
    """What an open did to the file, if it may have changed it."""
    if event.get("ret", -1) < 0:
        return None
    if (event.get("resolved") or event.get("path") or "").startswith(PSEUDO_FILE_PREFIXES):
        return None
    flags = event.get("flags", 0)
    if flags & O_ACCMODE in (O_WRONLY, O_RDWR) or flags & (O_CREAT | O_TRUNC):
        return "write"
    return None


class SessionWriter:
    COMMIT_SECONDS = 1.0

    def __init__(self, path: str, meta: dict[str, Any]):
        self.path = path
        if os.path.exists(path):
            raise AgentsightError(f"{path} exists already; choose another file with -o", exit_code=2)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise AgentsightError(f"cannot create {path}: {exc}", exit_code=2) from None
        # WAL: readers (report) see the last commit while recording goes on.
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        self.db.execute("BEGIN")
        self.set_meta(schema=SCHEMA_VERSION, status="recording", started_ns=time.time_ns(), **meta)
        self._last_commit = time.monotonic()
        self._current_process: dict[int, int] = {}  # pid -> processes.id of what it runs now
        self._not_execed: set[int] = set()  # rows of forks that have not exec'd yet
        self.counts = {"llm_calls": 0, "commands": 0, "files_written": 0, "connections": 0}
        self.tokens = {"input": 0, "output": 0}

    def set_meta(self, **values: Any) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                            [(k, _json(v)) for k, v in values.items()])

    def write_raw(self, events: list[dict]) -> None:
        rows = []
        for e in events:
            # Stored captures keep no secrets; TLS framing stays replayable.
            e = mask_event(e)
            rows.append((e.get("ts"), e.get("pid"), e.get("type"), _json(e)))
            handler = self._process_handlers.get(e.get("type"))
            if handler:
                handler(self, e)
        self.db.executemany("INSERT INTO raw_events (ts, pid, type, event) VALUES (?, ?, ?, ?)", rows)

    def write_derived(self, events: list[dict]) -> None:
        for e in events:
            if e.get("type") == "llm_call":
                self._llm_call(e)
            elif e.get("type") == "http":
                self.db.execute("INSERT INTO http_exchanges (ts, pid, record) VALUES (?, ?, ?)",
                                (e.get("ts"), e.get("pid"), _json(e)))

    def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.COMMIT_SECONDS:
            self.commit()

    def commit(self) -> None:
        self.db.execute("COMMIT")
        self.db.execute("BEGIN")
        self._last_commit = time.monotonic()

    def close(self, **meta: Any) -> None:
        self.set_meta(ended_ns=time.time_ns(), **meta)
        self.db.execute("COMMIT")
        # Back to one self-contained file.
        self.db.execute("PRAGMA journal_mode=DELETE")
        self.db.close()

    # --- process events -> rows ---

    def _exec(self, e: dict) -> None:
        self.counts["commands"] += 1
        row = self._current_process.get(e["pid"])
        values = (e.get("comm"), e.get("filename"), _json(e.get("argv", [])), int(e.get("argv_truncated", False)),
                  e.get("cwd"), e.get("uid"), e.get("ts"))
        if row in self._not_execed:
            self._not_execed.discard(row)
            # A forked child now runs its own program.
            self.db.execute("UPDATE processes SET comm=?, filename=?, argv=?, argv_truncated=?, cwd=?, uid=?, "
                            "exec_ns=? WHERE id=?", values + (row,))
            return
        if row is not None:
            self.db.execute("UPDATE processes SET end_ns = ? WHERE id = ?", (e.get("ts"), row))
        cur = self.db.execute(
            "INSERT INTO processes (pid, ppid, comm, filename, argv, argv_truncated, cwd, uid, start_ns, exec_ns) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", (e["pid"], e.get("ppid")) + values[:-1] + (e.get("ts"), e.get("ts")))
        self._current_process[e["pid"]] = cur.lastrowid

    def _fork(self, e: dict) -> None:
        cur = self.db.execute("INSERT INTO processes (pid, ppid, comm, uid, start_ns) VALUES (?, ?, ?, ?, ?)",
                              (e["child_pid"], e["pid"], e.get("comm"), e.get("uid"), e.get("ts")))
        self._current_process[e["child_pid"]] = cur.lastrowid
        self._not_execed.add(cur.lastrowid)

    def _exit(self, e: dict) -> None:
        row = self._current_process.pop(e["pid"], None)
        self._not_execed.discard(row)
        if row is None:
            cur = self.db.execute("INSERT INTO processes (pid, ppid, comm, uid) VALUES (?, ?, ?, ?)",
                                  (e["pid"], e.get("ppid"), e.get("comm"), e.get("uid")))
            row = cur.lastrowid
        self.db.execute("UPDATE processes SET end_ns = ?, exit_code = ?, signal = ? WHERE id = ?",
                        (e.get("ts"), e.get("exit_code"), e.get("signal"), row))

    def _open(self, e: dict) -> None:
        op = file_op(e)
        if op:
            self.counts["files_written"] += 1
            self.db.execute("INSERT INTO file_activity (ts, pid, op, path, ret) VALUES (?, ?, ?, ?, ?)",
                            (e.get("ts"), e.get("pid"), op, e.get("resolved") or e.get("path"), e.get("ret")))

    def _file(self, e: dict) -> None:
        self.counts["files_written"] += 1
        self.db.execute("INSERT INTO file_activity (ts, pid, op, path, new_path, ret) VALUES (?, ?, ?, ?, ?, ?)",
                        (e.get("ts"), e.get("pid"), e.get("type"), e.get("resolved") or e.get("path"),
                         e.get("new_resolved") or e.get("new_path"), e.get("ret")))

    def _connect(self, e: dict) -> None:
        self.counts["connections"] += 1
        self.db.execute("INSERT INTO connections (ts, pid, family, addr, port, ret) VALUES (?, ?, ?, ?, ?, ?)",
                        (e.get("ts"), e.get("pid"), e.get("family"), e.get("addr"), e.get("port"), e.get("ret")))

    _process_handlers = {"exec": _exec, "fork": _fork, "exit": _exit, "open": _open, "unlink": _file,
                         "rmdir": _file, "rename": _file, "connect": _connect}

    def _llm_call(self, e: dict) -> None:
        usage = e.get("usage") or {}
        self.counts["llm_calls"] += 1
        self.tokens["input"] += usage.get("input_tokens") or 0
        self.tokens["output"] += usage.get("output_tokens") or 0
        cur = self.db.execute(
            "INSERT INTO llm_calls (started_ns, ended_ns, pid, provider, model, input_tokens, output_tokens, status, "
            "incomplete, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (e.get("started_ns"), e.get("ended_ns"), e.get("pid"), e.get("provider"), e.get("model"),
             usage.get("input_tokens"), usage.get("output_tokens"), e.get("status"), int(bool(e.get("incomplete"))),
             _json(e)))
        for tc in (e.get("response") or {}).get("tool_calls") or []:
            self.db.execute("INSERT INTO tool_calls (llm_call_id, call_id, name, arguments) VALUES (?, ?, ?, ?)",
                            (cur.lastrowid, tc.get("id"), tc.get("name"), _json(tc.get("arguments"))))

    def replace_links(self, links: list[dict]) -> None:
        self.db.execute("DELETE FROM links")
        self.db.executemany("INSERT INTO links (tool_call_id, kind, target_id, evidence) VALUES (?, ?, ?, ?)",
                            [(l["tool_call_id"], l["kind"], l["target_id"], _json(l["evidence"])) for l in links])


def open_session(path: str) -> sqlite3.Connection:
    """A finished or unfinished session, for reading."""
    if not Path(path).exists():
        raise AgentsightError(f"{path}: no such file", exit_code=2)
    try:
        # Not read-only: a session whose recording was cut off may still
        # need its write-ahead log replayed.
        db = sqlite3.connect(path)
        db.row_factory = sqlite3.Row
        db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    except sqlite3.DatabaseError as exc:
        raise AgentsightError(f"{path} is not an agentsight session ({exc})", exit_code=2) from None
    return db


def read_meta(db: sqlite3.Connection) -> dict[str, Any]:
    return {row["key"]: orjson.loads(row["value"]) for row in db.execute("SELECT key, value FROM meta")}
