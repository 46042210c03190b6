"""What the web UI reads from one session file: windows of the timeline,
the process tree a level at a time, one LLM call in full.

Every answer is bounded, whatever the session's size: the timeline sends
at most `limit` items per kind for the range asked (with counts and a
density histogram for the rest), the tree a page of children, a call its
texts cut (the full text of one part on request). Rows are read through
`open_session`, the report's reader, on connections that cannot write.

Items are named by natural keys, the same ones the correlator and the
live feed use, so an item read from the file and one pushed live are the
same item: `c:PID:STARTED` an LLM call, `t:PID:STARTED:INDEX` one of its
tool calls, `p:PID:START` a program a process ran, `f:PID:TS` a file change.
"""
from __future__ import annotations

import bisect
import concurrent.futures
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Any

import orjson

from ...errors import AgentsightError
from ...sinks.session import open_session, read_meta
from .conversation import conversation

if TYPE_CHECKING:
    from .feed import WebFeed

TIMELINE_LIMIT = 1000  # items per kind in one answer, unless asked for fewer
MAX_LIMIT = 5000
BUCKETS = 160
CALL_TEXT = 300  # characters of a response shown beside its call on the timeline
ARGV_CHARS = 400
ARGS_CHARS = 2000
PART_CHARS = 4000
FOLDED_CHARS = 300  # older messages of a long conversation: their start only
RECENT_MESSAGES = 40
LINKS_PER_TOOL = 5  # on the timeline; a call's detail has them all
LINKED_ARGV_CHARS = 160
FILES_PER_PROCESS = 200
LOSS_MARKS = 500
TREE_PAGE = 200
NO_END = 1 << 62


class NotFound(AgentsightError):
    def __init__(self, message: str):
        super().__init__(message, exit_code=2)


def process_id(pid: int, start_ns: int | None, row: int | None = None) -> str:
    return f"p:{pid}:{start_ns}" if start_ns is not None else f"p:{pid}:r{row}"


def file_id(pid: int, ts: int) -> str:
    return f"f:{pid}:{ts}"


def call_id(pid: int, started_ns: int) -> str:
    return f"c:{pid}:{started_ns}"


def tool_id(pid: int, started_ns: int, index: int) -> str:
    return f"t:{pid}:{started_ns}:{index}"


def parse_id(text: str, prefix: str, parts: int) -> list[int]:
    fields = text.split(":")
    if len(fields) != parts + 1 or fields[0] != prefix:
        raise NotFound(f"not a valid id: {text[:80]!r}")
    try:
        return [int(f) for f in fields[1:]]
    except ValueError:
        raise NotFound(f"not a valid id: {text[:80]!r}") from None


def cut(text: str | None, n: int) -> tuple[str | None, int]:
    """The text cut to n characters, and how many were left out."""
    if text is None or len(text) <= n:
        return text, 0
    return text[:n], len(text) - n


def argv_text(argv: list[str] | None, n: int = ARGV_CHARS) -> tuple[list[str] | None, int]:
    """argv with its total length bounded; how many characters were left out."""
    if argv is None:
        return None, 0
    out, used, left = [], 0, 0
    for a in argv:
        if used >= n:
            left += len(a)
            continue
        piece = a[: n - used]
        left += len(a) - len(piece)
        used += len(piece)
        out.append(piece)
    return out, left


def command_of(arguments: Any) -> str | None:
    """The shell command a tool call asks for, when its arguments hold one."""
    if isinstance(arguments, dict):
        for key in ("command", "cmd", "script", "code"):
            v = arguments.get(key)
            if isinstance(v, str):
                return v
            if isinstance(v, list) and v and all(isinstance(a, str) for a in v):
                return " ".join(v)
    return None


def _loads(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _like(q: str) -> str:
    return "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def process_item(row: sqlite3.Row | dict, parent: str | None, argv_chars: int = ARGV_CHARS) -> dict[str, Any]:
    argv, argv_cut = argv_text(_loads(row["argv"]), argv_chars)
    start = row["exec_ns"] or row["start_ns"]
    item = {"id": process_id(row["pid"], row["start_ns"], row["id"]), "kind": "process",
            "t0": start if start is not None else row["end_ns"], "t1": row["end_ns"], "pid": row["pid"],
            "ppid": row["ppid"], "parent": parent, "comm": row["comm"], "argv": argv, "cwd": row["cwd"],
            "exit_code": row["exit_code"], "signal": row["signal"]}
    if argv_cut or row["argv_truncated"]:
        item["argv_cut"] = argv_cut or True
    return item


def file_item(row: sqlite3.Row | dict, proc: str | None) -> dict[str, Any]:
    return {"id": file_id(row["pid"], row["ts"]), "kind": "file", "t0": row["ts"], "pid": row["pid"], "op": row["op"],
            "path": row["path"], "new_path": row["new_path"], "proc": proc}


def call_summary(record: dict) -> dict[str, Any]:
    """What the timeline shows of a call beyond its columns."""
    response: dict[str, Any] = record["response"] if isinstance(record.get("response"), dict) else {}
    text, left = cut(response.get("text") if isinstance(response.get("text"), str) else "", CALL_TEXT)
    first, started = record.get("first_token_ns"), record.get("started_ns")
    return {"ttft": first - started if isinstance(first, int) and isinstance(started, int) else None,
            "text": text, "text_cut": left, "stop": response.get("stop_reason"),
            "thinking": bool(response.get("thinking")),
            "incomplete_reason": record.get("incomplete_reason")}


RESPONSE_KEY = '"response":{'


def summary_of_record(text: str | None) -> dict[str, Any]:
    """call_summary() of a stored record without parsing its request (most
    of it, and all of a long conversation). Everything from the top-level
    "response" key on is a JSON object of its own once given a "{": the
    key is found from the end, as JSON never holds it inside a string (its
    quote would be escaped), and a match deeper down leaves closing
    brackets over, which no parser accepts. Anything else: the whole
    record is parsed."""
    if not text:
        return call_summary({})
    end = len(text)
    for _ in range(8):
        at = text.rfind(RESPONSE_KEY, 0, end)
        if at < 0:
            break
        try:
            tail = orjson.loads("{" + text[at:])
        except orjson.JSONDecodeError:
            end = at
            continue
        if isinstance(tail, dict) and "started_ns" in tail:
            return call_summary(tail)
        break
    record = _loads(text)
    return call_summary(record if isinstance(record, dict) else {})


def tool_item(tool: str, call: str, t0: int, name: str | None, the_call_id: str | None, arguments: Any) -> dict:
    args, left = cut(orjson.dumps(arguments).decode() if not isinstance(arguments, str) else arguments, ARGS_CHARS)
    command, _ = cut(command_of(arguments), ARGS_CHARS)
    return {"id": tool, "kind": "tool", "call": call, "t0": t0, "name": name, "call_id": the_call_id, "args": args,
            "args_cut": left, "command": command, "links": []}


class ProcessIndex:
    """The shape of the process tree, kept in memory: pid, ppid and start of
    every row, each row's parent row, and each pid's programs by time.
    Rows are only ever added (a growing session is read again from where
    it was)."""

    def __init__(self) -> None:
        self.last = 0
        self.rows: dict[int, tuple[int, int | None, int | None]] = {}  # id -> (pid, ppid, start_ns)
        self.parent: dict[int, int | None] = {}
        self.children: dict[int | None, list[int]] = {None: []}
        self.by_pid: dict[int, list[tuple[int, int]]] = {}  # pid -> [(start_ns, id)] sorted
        self.by_key: dict[str, int] = {}

    def refresh(self, db: sqlite3.Connection) -> None:
        for row_id, pid, ppid, start in db.execute(
                "SELECT id, pid, ppid, start_ns FROM processes WHERE id > ? ORDER BY id", (self.last,)):
            self.last = row_id
            self.rows[row_id] = (pid, ppid, start)
            self.by_key[process_id(pid, start, row_id)] = row_id
            parent = self.current(ppid, start) if ppid is not None else None
            self.parent[row_id] = parent
            self.children.setdefault(parent, []).append(row_id)
            if start is not None:
                bisect.insort(self.by_pid.setdefault(pid, []), (start, row_id))

    def current(self, pid: int, ts: int | None) -> int | None:
        """The row of the program `pid` ran at `ts`."""
        programs = self.by_pid.get(pid)
        if not programs:
            return None
        if ts is None:
            return programs[-1][1]
        i = bisect.bisect_right(programs, (ts, 1 << 62))
        return programs[i - 1][1] if i else None

    def key(self, row_id: int | None) -> str | None:
        if row_id is None or row_id not in self.rows:
            return None
        pid, _, start = self.rows[row_id]
        return process_id(pid, start, row_id)

    def subtree(self, row_id: int) -> list[int]:
        out, todo = [], [row_id]
        while todo:
            r = todo.pop()
            out.append(r)
            todo += self.children.get(r, [])
        return out


def _optional(db: sqlite3.Connection, sql: str, last: int) -> list[tuple]:
    """The rows of a table an older session may not have (none then)."""
    try:
        return db.execute(sql, (last,)).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return []
        raise


class Caches:
    """Small tables every answer needs, kept in memory and refreshed by rowid."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.index = ProcessIndex()
        self.calls: dict[int, tuple[int, int]] = {}  # llm row -> (pid, started_ns)
        self.tools: dict[int, tuple[int, int, str | None, str | None]] = {}  # tool row -> (llm row, index, id, name)
        self.tools_of: dict[int, list[int]] = {}
        # tool row -> [(kind, target row, evidence, role)]; (kind, target row) -> (tool row, evidence, role)
        self.links_of: dict[int, list[tuple[str, int, str, str]]] = {}
        self.link_to: dict[tuple[str, int], tuple[int, str, str]] = {}
        self.unexplained: dict[tuple[str, int], str] = {}
        self.startup: set[tuple[str, int]] = set()
        self.results: dict[int, dict[str, Any]] = {}  # tool row -> its result going back
        self.summaries: dict[int, dict[str, Any]] = {}
        self.losses: list[dict[str, Any]] = []
        self.last = {"llm_calls": 0, "tool_calls": 0, "links": 0, "unexplained": 0, "startup": 0, "tool_results": 0,
                     "raw_events": 0}
        self.refreshed = 0.0
        self.link_roles: bool | None = None  # links.role: sessions of schema 3 on

    def refresh(self, db: sqlite3.Connection, every: float) -> None:
        with self.lock:
            now = time.monotonic()
            if now - self.refreshed < every:
                return
            self.refreshed = now
            self.index.refresh(db)
            last = self.last
            for row_id, pid, started in db.execute(
                    "SELECT id, pid, started_ns FROM llm_calls WHERE id > ? ORDER BY id", (last["llm_calls"],)):
                self.calls[row_id] = (pid, started)
                last["llm_calls"] = row_id
            for row_id, llm, cid, name in db.execute(
                    "SELECT id, llm_call_id, call_id, name FROM tool_calls WHERE id > ? ORDER BY id",
                    (last["tool_calls"],)):
                siblings = self.tools_of.setdefault(llm, [])
                self.tools[row_id] = (llm, len(siblings), cid, name)
                siblings.append(row_id)
                last["tool_calls"] = row_id
            if self.link_roles is None:
                self.link_roles = any(c[1] == "role" for c in db.execute("PRAGMA table_info(links)"))
            role = "role" if self.link_roles else "'command'"
            for row_id, tool, kind, target, evidence, link_role in db.execute(
                    f"SELECT id, tool_call_id, kind, target_id, evidence, {role} FROM links WHERE id > ? ORDER BY id",
                    (last["links"],)):
                self.links_of.setdefault(tool, []).append((kind, target, evidence, link_role))
                self.link_to.setdefault((kind, target), (tool, evidence, link_role))
                last["links"] = row_id
            # Tables older sessions do not have.
            for row_id, kind, target, reason in _optional(
                    db, "SELECT id, kind, target_id, reason FROM unexplained WHERE id > ? ORDER BY id",
                    last["unexplained"]):
                self.unexplained[(kind, target)] = reason
                last["unexplained"] = row_id
            for row_id, kind, target in _optional(
                    db, "SELECT id, kind, target_id FROM startup WHERE id > ? ORDER BY id", last["startup"]):
                self.startup.add((kind, target))
                last["startup"] = row_id
            for row_id, tool, sent, took, is_error, size in _optional(
                    db, "SELECT id, tool_call_id, sent_ns, duration_ns, is_error, size FROM tool_results WHERE id > ? "
                    "ORDER BY id", last["tool_results"]):
                self.results.setdefault(tool, {"sent_ns": sent, "duration_ns": took,
                                               "is_error": None if is_error is None else bool(is_error), "size": size})
                last["tool_results"] = row_id
            self._scan_losses(db)

    def _scan_losses(self, db: sqlite3.Connection) -> None:
        """TLS calls with bytes lost before them (`gap`) or cut (`truncated`).
        In the JSON form both counts sit before the payload, so only the
        head of each event is searched."""
        if len(self.losses) >= LOSS_MARKS:
            return
        for row_id, ts, pid, head in db.execute(
                "SELECT id, ts, pid, substr(event, 1, 400) FROM raw_events WHERE id > ? AND type = 'ssl' "
                "AND instr(event, ',\"truncated\":0,\"gap\":0,') = 0 ORDER BY id LIMIT ?",
                (self.last["raw_events"], LOSS_MARKS - len(self.losses))):
            gap = truncated = 0
            try:
                after = head.split(',"truncated":', 1)[1]
                truncated = int(after.split(",", 1)[0])
                gap = int(after.split(',"gap":', 1)[1].split(",", 1)[0])
            except (IndexError, ValueError):
                pass
            what = ", ".join(s for s in (f"{gap} bytes lost before this TLS call" if gap else "",
                                         f"{truncated} bytes of it not captured" if truncated else "") if s)
            self.losses.append({"id": f"x:{pid}:{ts}", "kind": "loss", "t0": ts, "pid": pid,
                                "what": what or "TLS bytes lost"})
            self.last["raw_events"] = row_id
        row = db.execute("SELECT max(id) FROM raw_events").fetchone()
        self.last["raw_events"] = max(self.last["raw_events"], row[0] or 0)

    def tool_key(self, tool_row: int) -> str | None:
        t = self.tools.get(tool_row)
        if t is None or t[0] not in self.calls:
            return None
        pid, started = self.calls[t[0]]
        return tool_id(pid, started, t[1])


class SessionStore:
    """One session file, read by a few worker threads, each on its own
    connection (sqlite3 connections stay in the thread that made them)."""

    def __init__(self, path: str, feed: WebFeed | None = None, workers: int = 4):
        self.path = path
        self.feed = feed
        db = open_session(path)  # a clear error now rather than at the first page
        try:
            unfinished = read_meta(db).get("status", "recording") == "recording"
        finally:
            db.close()
        self._local = threading.local()
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="agentsight-web-db")
        self.caches = Caches()
        # A growing session (this recording's, or one another agentsight is
        # still writing) is looked at again at most this often.
        self.refresh_every = 0.25 if feed is not None else 1.0 if unfinished else 3600.0
        self._warm = self._pool.submit(self._warm_up)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def run(self, method: str, **kwargs: Any) -> Any:
        """`method` on a worker thread, with that thread's connection."""
        return self._pool.submit(self._call, method, kwargs).result()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = open_session(self.path)
            db.execute("PRAGMA query_only = ON")
            self._local.db = db
        return db

    def _call(self, method: str, kwargs: dict) -> Any:
        db = self._db()
        try:
            self.caches.refresh(db, self.refresh_every)
            return getattr(self, "q_" + method)(db, **kwargs)
        finally:
            self._release(db)

    def _release(self, db: sqlite3.Connection) -> None:
        # While it is being recorded, the file is not held open between
        # answers: the writer needs it to itself when it closes.
        if self.feed is not None:
            self._local.db = None
            db.close()

    def _warm_up(self) -> None:
        """Reads each call's summary once, ahead of the first page that shows it."""
        db = self._db()
        try:
            self.caches.refresh(db, 0)
            for row_id, record in db.execute("SELECT id, record FROM llm_calls ORDER BY started_ns"):
                if row_id not in self.caches.summaries:
                    self.caches.summaries[row_id] = summary_of_record(record)
        finally:
            self._release(db)

    # -- answers ------------------------------------------------------------------

    def q_summary(self, db: sqlite3.Connection) -> dict[str, Any]:
        meta = read_meta(db)
        lo, hi = self._bounds(db, meta)
        losses = meta.get("losses") or {}
        status = meta.get("status", "recording")
        live = self.feed is not None and not self.feed.closed
        notes = []
        if status == "recording" and not live:
            notes.append("the recording has not finished: it is still going on (reload to see more), or "
                         "agentsight was killed or crashed, and then its last second is missing and tool calls "
                         "may not be linked")
        elif status not in ("complete", "recording"):
            notes.append(f"the recording was {status.removeprefix('stopped: ')}")
        if meta.get("command_running_at_end"):
            notes.append("the command was still running when the recording stopped")
        incomplete = (meta.get("analysis") or {}).get("llm.incomplete")
        if incomplete:
            notes.append(f"{incomplete} LLM calls are incomplete")
        calls = db.execute("SELECT count(*), sum(input_tokens), sum(output_tokens) FROM llm_calls").fetchone()
        totals = {
            "llm_calls": calls[0], "input_tokens": calls[1] or 0, "output_tokens": calls[2] or 0,
            "processes": db.execute("SELECT count(*) FROM processes").fetchone()[0],
            "files_written": db.execute("SELECT count(*) FROM file_activity").fetchone()[0],
            "links": sum(len(v) for v in self.caches.links_of.values()),
            "unexplained": len(self.caches.unexplained),
        }
        return {"path": self.path, "status": status, "live": live, "command": meta.get("command"),
                "pid": meta.get("pid"), "comm": meta.get("comm"), "host": meta.get("host"),
                "command_exit": meta.get("command_exit"), "started_ns": meta.get("started_ns"),
                "ended_ns": meta.get("ended_ns"), "bounds": [lo, hi], "now_ns": time.time_ns(),
                "losses": {k: v for k, v in losses.items() if v}, "notes": notes, "totals": totals,
                "feed_losses": self.feed.losses() if self.feed is not None else {}}

    def _bounds(self, db: sqlite3.Connection, meta: dict) -> tuple[int, int]:
        """From the first to the last thing recorded (the recording's own
        start and end when there is nothing), up to now while it goes on."""
        values = list(db.execute("SELECT min(start_ns), max(coalesce(end_ns, exec_ns, start_ns)) FROM processes")
                      .fetchone())
        values += db.execute("SELECT min(started_ns), max(ended_ns) FROM llm_calls").fetchone()
        values += db.execute("SELECT min(ts), max(ts) FROM file_activity").fetchone()
        if not any(isinstance(v, int) for v in values):
            values = [meta.get("started_ns"), meta.get("ended_ns")]
        if self.feed is not None and not self.feed.closed:
            values.append(time.time_ns())
        known = [v for v in values if isinstance(v, int)]
        if not known:
            now = time.time_ns()
            return now, now
        return min(known), max(known)

    def _pids(self, proc: str | None) -> list[int] | None:
        if not proc:
            return None
        row = self.caches.index.by_key.get(proc)
        if row is None:
            raise NotFound(f"no process {proc[:80]!r} in this session")
        rows = self.caches.index.rows
        return sorted({rows[r][0] for r in self.caches.index.subtree(row)})

    def q_timeline(self, db: sqlite3.Connection, start: int | None = None, end: int | None = None,
                   since: int | None = None, kinds: frozenset[str] = frozenset(("llm", "process", "file", "loss")),
                   proc: str | None = None, q: str | None = None, unexplained: bool = False,
                   limit: int = TIMELINE_LIMIT) -> dict[str, Any]:
        lo_all, hi_all = self._bounds(db, read_meta(db))
        lo = start if start is not None else lo_all
        hi = end if end is not None else hi_all
        since = since if since is not None else -NO_END
        limit = max(1, min(limit, MAX_LIMIT))
        pids = self._pids(proc)
        pattern = _like(q) if q else None
        # argv, records and tool arguments are stored as JSON: the text as it is written there.
        in_json = _like(orjson.dumps(q).decode()[1:-1]) if q else None
        items: list[dict[str, Any]] = []
        counts: dict[str, int] = {}
        more: dict[str, str] = {}
        buckets: dict[str, list[int]] = {}

        def page(kind: str, rows: list, t0: Any) -> list:
            if len(rows) > limit:
                more[kind] = str(t0(rows[limit]))  # a string: JSON numbers in a page lose the last digits
                return rows[:limit]
            return rows

        caches = self.caches
        if "llm" in kinds and not unexplained:
            where = ["started_ns <= ?", "coalesce(ended_ns, started_ns) >= ?", "started_ns >= ?"]
            args: list[Any] = [hi, lo, since]
            if pids is not None:
                where.append("pid IN (SELECT value FROM json_each(?))")
                args.append(orjson.dumps(pids).decode())
            if pattern:
                # The record holds the whole request: a search finds the conversation too.
                where.append("(model LIKE ? ESCAPE '\\' OR record LIKE ? ESCAPE '\\' OR id IN "
                             "(SELECT llm_call_id FROM tool_calls WHERE name LIKE ? ESCAPE '\\' "
                             "OR arguments LIKE ? ESCAPE '\\'))")
                args += [pattern, in_json, pattern, in_json]
            sql = " AND ".join(where)
            rows = db.execute(f"SELECT id, started_ns, ended_ns, pid, provider, model, input_tokens, output_tokens, "
                              f"status, incomplete FROM llm_calls WHERE {sql} ORDER BY started_ns LIMIT ?",
                              args + [limit + 1]).fetchall()
            rows = page("llm", rows, lambda r: r["started_ns"])
            counts["llm"] = len(rows) if "llm" not in more else db.execute(
                f"SELECT count(*) FROM llm_calls WHERE {sql}", args).fetchone()[0]
            items += self._calls(db, rows)
        if "process" in kinds:
            where = ["start_ns <= ?", "coalesce(end_ns, ?) >= ?", "coalesce(exec_ns, start_ns) >= ?"]
            args = [hi, NO_END, lo, since]
            if pids is not None:
                where.append("pid IN (SELECT value FROM json_each(?))")
                args.append(orjson.dumps(pids).decode())
            if pattern:
                where.append("(argv LIKE ? ESCAPE '\\' OR cwd LIKE ? ESCAPE '\\' OR comm LIKE ? ESCAPE '\\')")
                args += [in_json, pattern, pattern]
            if unexplained:
                where.append("id IN (SELECT value FROM json_each(?))")
                args.append(orjson.dumps([t for k, t in caches.unexplained if k == "process"]).decode())
            sql = " AND ".join(where)
            rows = db.execute(f"SELECT * FROM processes WHERE {sql} ORDER BY start_ns LIMIT ?",
                              args + [limit + 1]).fetchall()
            rows = page("process", rows, lambda r: r["exec_ns"] or r["start_ns"])
            if "process" in more:
                counts["process"] = db.execute(f"SELECT count(*) FROM processes WHERE {sql}", args).fetchone()[0]
                buckets["process"] = self._buckets(db, "processes", "coalesce(exec_ns, start_ns)", sql, args, lo, hi)
            else:
                counts["process"] = len(rows)
            items += [self._process(r) for r in rows]
        if "file" in kinds:
            where = ["ts BETWEEN ? AND ?", "ts >= ?"]
            args = [lo, hi, since]
            if pids is not None:
                where.append("pid IN (SELECT value FROM json_each(?))")
                args.append(orjson.dumps(pids).decode())
            if pattern:
                where.append("(path LIKE ? ESCAPE '\\' OR new_path LIKE ? ESCAPE '\\')")
                args += [pattern] * 2
            if unexplained:
                where.append("id IN (SELECT value FROM json_each(?))")
                args.append(orjson.dumps([t for k, t in caches.unexplained if k == "file"]).decode())
            sql = " AND ".join(where)
            rows = db.execute(f"SELECT * FROM file_activity WHERE {sql} ORDER BY ts LIMIT ?",
                              args + [limit + 1]).fetchall()
            rows = page("file", rows, lambda r: r["ts"])
            if "file" in more:
                counts["file"] = db.execute(f"SELECT count(*) FROM file_activity WHERE {sql}", args).fetchone()[0]
                buckets["file"] = self._buckets(db, "file_activity", "ts", sql, args, lo, hi)
            else:
                counts["file"] = len(rows)
            items += [self._file(r) for r in rows]
        if "loss" in kinds and not pattern:
            pid_set = set(pids) if pids is not None else None
            marks = [m for m in caches.losses if lo <= m["t0"] <= hi and m["t0"] >= since
                     and (pid_set is None or m["pid"] in pid_set)]
            counts["loss"] = len(marks)
            items += marks[:limit]
        return {"from": lo, "to": hi, "bounds": [lo_all, hi_all], "items": items, "counts": counts, "more": more,
                "buckets": buckets, "now_ns": time.time_ns()}

    def _buckets(self, db: sqlite3.Connection, table: str, t: str, sql: str, args: list, lo: int,
                 hi: int) -> list[int]:
        width = max(1, (hi - lo) // BUCKETS + 1)
        out = [0] * BUCKETS
        for b, n in db.execute(f"SELECT (max({t}, ?) - ?) / ? AS b, count(*) FROM {table} WHERE {sql} GROUP BY b",
                               [lo, lo, width] + args):
            if 0 <= b < BUCKETS:
                out[b] += n
        return out

    def _process(self, row: sqlite3.Row) -> dict[str, Any]:
        caches = self.caches
        item = process_item(row, caches.index.key(caches.index.parent.get(row["id"])))
        self._attach(item, "process", row["id"])
        return item

    def _file(self, row: sqlite3.Row) -> dict[str, Any]:
        caches = self.caches
        item = file_item(row, caches.index.key(caches.index.current(row["pid"], row["ts"])))
        self._attach(item, "file", row["id"])
        return item

    def _attach(self, item: dict, kind: str, row_id: int) -> None:
        caches = self.caches
        link = caches.link_to.get((kind, row_id))
        if link is not None:
            item["link"] = {"tool": caches.tool_key(link[0]), "evidence": _loads(link[1]), "role": link[2]}
        reason = caches.unexplained.get((kind, row_id))
        if reason is not None:
            item["unexplained"] = reason
        if (kind, row_id) in caches.startup:
            item["startup"] = True

    def _summary(self, db: sqlite3.Connection, row_id: int) -> dict[str, Any]:
        s = self.caches.summaries.get(row_id)
        if s is None:
            record = db.execute("SELECT record FROM llm_calls WHERE id = ?", (row_id,)).fetchone()
            s = summary_of_record(record[0] if record else None)
            self.caches.summaries[row_id] = s
        return s

    def _calls(self, db: sqlite3.Connection, rows: list) -> list[dict[str, Any]]:
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        tools: dict[int, list] = {}
        for t in db.execute("SELECT id, llm_call_id, call_id, name, arguments FROM tool_calls WHERE llm_call_id IN "
                            "(SELECT value FROM json_each(?)) ORDER BY id", (orjson.dumps(ids).decode(),)):
            tools.setdefault(t["llm_call_id"], []).append(t)
        out = []
        for r in rows:
            cid = call_id(r["pid"], r["started_ns"])
            item = {"id": cid, "kind": "llm", "t0": r["started_ns"], "t1": r["ended_ns"], "pid": r["pid"],
                    "provider": r["provider"], "model": r["model"], "in": r["input_tokens"],
                    "out": r["output_tokens"], "status": r["status"], "incomplete": bool(r["incomplete"]),
                    **self._summary(db, r["id"])}
            item["tools"] = [self._tool(db, cid, r, i, t) for i, t in enumerate(tools.get(r["id"], []))]
            out.append(item)
        return out

    def _tool(self, db: sqlite3.Connection, cid: str, call: sqlite3.Row, index: int, t: sqlite3.Row,
              links: int = LINKS_PER_TOOL) -> dict[str, Any]:
        item = tool_item(tool_id(call["pid"], call["started_ns"], index), cid, call["ended_ns"], t["name"],
                         t["call_id"], _loads(t["arguments"]))
        linked = self.caches.links_of.get(t["id"], [])
        item["links_total"] = len(linked)
        item["links"] = [self._link_target(db, *link) for link in linked[:links]]
        item["result"] = self.caches.results.get(t["id"])
        return item

    def _link_target(self, db: sqlite3.Connection, kind: str, target: int, evidence: str,
                     role: str) -> dict[str, Any]:
        """The link, with what it points to in short (the row under the tool call)."""
        caches = self.caches
        item: dict[str, Any] | None = None
        if kind == "process":
            row = db.execute("SELECT * FROM processes WHERE id = ?", (target,)).fetchone()
            if row:
                item = process_item(row, caches.index.key(caches.index.parent.get(row["id"])), LINKED_ARGV_CHARS)
                del item["cwd"], item["comm"]
        else:
            row = db.execute("SELECT * FROM file_activity WHERE id = ?", (target,)).fetchone()
            if row:
                item = file_item(row, caches.index.key(caches.index.current(row["pid"], row["ts"])))
        return {"target": item["id"] if item else None, "target_kind": kind, "evidence": _loads(evidence),
                "role": role, "item": item}

    # -- the process tree -----------------------------------------------------------

    def q_children(self, db: sqlite3.Connection, parent: str | None = None, offset: int = 0,
                   limit: int = TREE_PAGE) -> dict[str, Any]:
        index = self.caches.index
        if parent:
            row = index.by_key.get(parent)
            if row is None:
                raise NotFound(f"no process {parent[:80]!r} in this session")
        else:
            row = None
        kids = index.children.get(row, [])
        limit = max(1, min(limit, MAX_LIMIT))
        page = kids[offset:offset + limit]
        rows = {r["id"]: r for r in db.execute("SELECT * FROM processes WHERE id IN (SELECT value FROM json_each(?))",
                                               (orjson.dumps(page).decode(),))}
        nodes = []
        for r in page:
            if r in rows:
                item = self._process(rows[r])
                item["children"] = len(index.children.get(r, []))
                nodes.append(item)
        return {"parent": parent, "offset": offset, "total": len(kids), "nodes": nodes}

    def q_process(self, db: sqlite3.Connection, id: str) -> dict[str, Any]:
        index = self.caches.index
        row_id = index.by_key.get(id)
        row = db.execute("SELECT * FROM processes WHERE id = ?", (row_id,)).fetchone() if row_id else None
        if row_id is None or row is None:
            raise NotFound(f"no process {id[:80]!r} in this session")
        item = self._process(row)
        full, _ = argv_text(_loads(row["argv"]), 1 << 20)
        item.update(argv=full, argv_cut=bool(row["argv_truncated"]), filename=row["filename"], uid=row["uid"],
                    start_ns=row["start_ns"], exec_ns=row["exec_ns"])
        item["children"] = len(index.children.get(row_id, []))
        item["descendants"] = len(index.subtree(row_id)) - 1
        if "link" in item and item["link"]["tool"]:
            item["tool"] = self._tool_by_key(db, item["link"]["tool"], links=0)
        # The files this program changed: its pid, from its start until the next program of that pid.
        programs = index.by_pid.get(row["pid"], [])
        start = row["start_ns"] or 0
        later = [s for s, r in programs if s > start]
        until = later[0] if later else NO_END
        files = db.execute("SELECT * FROM file_activity WHERE pid = ? AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
                           (row["pid"], start, until, FILES_PER_PROCESS + 1)).fetchall()
        item["files"] = [self._file(f) for f in files[:FILES_PER_PROCESS]]
        item["files_more"] = len(files) > FILES_PER_PROCESS
        return item

    def _call_row(self, db: sqlite3.Connection, id: str) -> sqlite3.Row | None:
        pid, started = parse_id(id, "c", 2)
        return db.execute("SELECT * FROM llm_calls WHERE started_ns = ? AND pid = ?", (started, pid)).fetchone()

    def _tool_by_key(self, db: sqlite3.Connection, key: str, links: int = LINKS_PER_TOOL) -> dict[str, Any] | None:
        pid, started, index = parse_id(key, "t", 3)
        call = db.execute("SELECT * FROM llm_calls WHERE started_ns = ? AND pid = ?", (started, pid)).fetchone()
        if call is None:
            return None
        rows = db.execute("SELECT * FROM tool_calls WHERE llm_call_id = ? ORDER BY id", (call["id"],)).fetchall()
        if index >= len(rows):
            return None
        item = self._tool(db, call_id(pid, started), call, index, rows[index], links)
        item["model"] = call["model"]
        return item

    # -- one LLM call ------------------------------------------------------------------

    def _record(self, db: sqlite3.Connection, id: str) -> tuple[sqlite3.Row | None, dict]:
        row = self._call_row(db, id)
        if row is not None:
            return row, _loads(row["record"]) or {}
        if self.feed is not None:  # pushed live, not yet committed to the file
            record = self.feed.recent_record(id)
            if record is not None:
                return None, record
        raise NotFound(f"no LLM call {id[:80]!r} in this session")

    def q_call(self, db: sqlite3.Connection, id: str) -> dict[str, Any]:
        row, record = self._record(db, id)
        conv = conversation(record.get("request"))
        messages = conv["messages"]
        for m_index, m in enumerate(messages):
            budget = PART_CHARS if m_index >= len(messages) - RECENT_MESSAGES else FOLDED_CHARS
            for p_index, part in enumerate(m["parts"]):
                self._cut_part(part, f"m.{m_index}.{p_index}", budget)
            m["folded"] = m_index < len(messages) - RECENT_MESSAGES
        for i, part in enumerate(conv["system"]):
            self._cut_part(part, f"s.{i}", PART_CHARS)
        for i, tool in enumerate(conv["tools"]):
            self._cut_part(tool, f"d.{i}", FOLDED_CHARS * 4)
        response: dict[str, Any] = record["response"] if isinstance(record.get("response"), dict) else {}
        out_response: dict[str, Any] = {"stop_reason": response.get("stop_reason"), "model": response.get("model"),
                                        "id": response.get("id")}
        for field in ("text", "thinking"):
            value = response.get(field)
            if isinstance(value, str):
                part = {"text": value}
                self._cut_part(part, f"r.{field}", PART_CHARS * 4)
                out_response[field] = part
        tools = []
        rows = db.execute("SELECT * FROM tool_calls WHERE llm_call_id = ? ORDER BY id",
                          (row["id"],)).fetchall() if row is not None else []
        for i, tc in enumerate(response.get("tool_calls") or []):
            if not isinstance(tc, dict):
                continue
            if i < len(rows) and row is not None:
                item = self._tool(db, id, row, i, rows[i], links=1000)
            else:
                item = tool_item(tool_id(record.get("pid", 0), record.get("started_ns", 0), i), id,
                                 record.get("ended_ns", 0), tc.get("name"), tc.get("id"), tc.get("arguments"))
            full = tc.get("arguments")
            part = {"text": full if isinstance(full, str) else orjson.dumps(full, option=orjson.OPT_INDENT_2).decode()}
            self._cut_part(part, f"a.{i}", PART_CHARS * 4)
            item["arguments"] = part
            tools.append(item)
        started, first, ended = record.get("started_ns"), record.get("first_token_ns"), record.get("ended_ns")
        return {
            "id": id, "provider": record.get("provider"), "api": record.get("api"), "model": record.get("model"),
            "stream": record.get("stream"), "status": record.get("status"), "method": record.get("method"),
            "host": record.get("host"), "path": record.get("path"), "pid": record.get("pid"),
            "comm": record.get("comm"), "protocol": record.get("protocol", "http/1.1"),
            "timings": {"started_ns": started, "first_token_ns": first, "ended_ns": ended,
                        "latency_ns": ended - started if isinstance(ended, int) and isinstance(started, int) else None,
                        "ttft_ns": first - started if isinstance(first, int) and isinstance(started, int) else None},
            "usage": record.get("usage") or {},
            "request_headers": record.get("request_headers") or {},
            "response_headers": record.get("response_headers") or {},
            "conversation": conv, "response": out_response, "tool_calls": tools,
            "incomplete_reason": record.get("incomplete_reason"), "error": record.get("error"),
            "request_truncated": bool(record.get("request_truncated")),
            "analysis_error": record.get("analysis_error"),
        }

    @staticmethod
    def _cut_part(part: dict, address: str, n: int) -> None:
        text, left = cut(part.get("text"), n)
        part["text"] = text
        if left:
            part["cut"] = left
            part["address"] = address

    def q_text(self, db: sqlite3.Connection, id: str, part: str) -> dict[str, Any]:
        """The whole text of one part of a call, by the address q_call gave it."""
        _, record = self._record(db, id)
        where = part.split(".")
        try:
            if where[0] == "m":
                text = conversation(record.get("request"))["messages"][int(where[1])]["parts"][int(where[2])]["text"]
            elif where[0] == "s":
                text = conversation(record.get("request"))["system"][int(where[1])]["text"]
            elif where[0] == "d":
                text = conversation(record.get("request"))["tools"][int(where[1])]["text"]
            elif where[0] == "r" and where[1] in ("text", "thinking"):
                text = record["response"][where[1]]
            elif where[0] == "a":
                args = record["response"]["tool_calls"][int(where[1])]["arguments"]
                text = args if isinstance(args, str) else orjson.dumps(args, option=orjson.OPT_INDENT_2).decode()
            else:
                raise KeyError(part)
        except (KeyError, IndexError, ValueError, TypeError):
            raise NotFound(f"no part {part[:40]!r} in LLM call {id[:80]!r}") from None
        return {"id": id, "part": part, "text": text if isinstance(text, str) else orjson.dumps(text).decode()}
