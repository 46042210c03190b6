"""What a session shows a person (`report`), and every event in it (`export`).

The report renders what the recording stored: the LLM calls (what led to
each, what came back, tokens and timings), the links that correlation made
between their tool calls and what those caused, the tool results as they
went back, start-up activity, and the activity correlation found no tool
call for. It computes none of it.

The text form cuts long text (messages, argv) with a visible "…"; `--json`
(`build_report`) holds everything uncut. Everything the text form prints
came from the traced programs or the APIs they called, so every value goes
through `printable` first: a terminal never gets a control character.
"""
from __future__ import annotations

import datetime
import shlex
import sqlite3
from typing import Any, BinaryIO

import orjson

from ..analyzers.providers import content_text, request_input
from ..sinks.session import read_meta
from .text import printable

TEXT_LINES = 4  # lines of a message shown before it is cut
TEXT_WIDTH = 160  # characters of a line
ARGV_WIDTH = 160
ARGUMENTS_WIDTH = 200

def _clock(ns: int | None) -> str:
    if not ns:
        return "?"
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


def _duration(ms: float | None) -> str:
    """A duration a person reads at a glance: 0.4 ms, 312 ms, 1.25 s, 3 min 5 s."""
    if ms is None:
        return "?"
    if ms < 10:
        return f"{ms:.1f} ms"
    if ms < 1000:
        return f"{ms:.0f} ms"
    if ms < 60_000:
        return f"{ms / 1000:.2f} s"
    return f"{int(ms // 60_000)} min {int(ms % 60_000 // 1000)} s"


def _cut(s: str, width: int) -> str:
    """One line of at most `width` characters; a cut one ends with "…"."""
    s = printable(s)
    return s if len(s) <= width else s[:width - 1] + "…"


def _cut_text(text: str, lines: int = TEXT_LINES, width: int = TEXT_WIDTH) -> list[str]:
    """A message as at most `lines` lines of `width`, and a marker saying how
    much was cut."""
    all_lines = text.strip("\n").split("\n")
    shown = [_cut(line, width) for line in all_lines[:lines]]
    rest = len(all_lines) - lines
    if rest > 0:
        shown.append(f"… ({rest} more line{'s' if rest > 1 else ''})")
    return shown or [""]


def _command(argv: list[str] | None) -> str:
    return shlex.join(argv) if argv else "(no exec)"


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / 1e6, 1)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() \
        is not None


def _process(p: dict[str, Any]) -> dict[str, Any]:
    return {"pid": p.get("pid"), "argv": orjson.loads(p.get("argv") or "null"), "exit_code": p.get("exit_code"),
            "signal": p.get("signal"), "started_ns": p.get("exec_ns") or p.get("start_ns"), "ended_ns": p.get("end_ns")}


def _file(f: dict[str, Any]) -> dict[str, Any]:
    return {"op": f.get("op"), "path": f.get("path"), "new_path": f.get("new_path"), "pid": f.get("pid"),
            "ts": f.get("ts")}


def build_report(db: sqlite3.Connection, path: str) -> dict[str, Any]:
    meta = read_meta(db)
    db.row_factory = sqlite3.Row
    processes = {r["id"]: dict(r) for r in db.execute("SELECT * FROM processes")}
    files = {r["id"]: dict(r) for r in db.execute("SELECT * FROM file_activity")}
    incomplete = []
    status = meta.get("status", "recording")
    losses = meta.get("losses") or {}
    if str(meta.get("schema")) in ("1", "2"):
        incomplete.append("recorded by an older agentsight: links and unexplained activity are as it stored them")
    if status == "recording":
        incomplete.append("the recording did not finish (agentsight was killed or crashed): up to its last second "
                          "is missing, and so are the links of its last seconds and of tool calls whose result "
                          "had not gone back yet")
    elif status != "complete":
        incomplete.append(f"the recording was {status.removeprefix('stopped: ')}")
    if meta.get("command_running_at_end"):
        incomplete.append("the command was still running when the recording stopped")
    lost_records = losses.get("ring_full_records") or meta.get("lost_records")
    if lost_records:
        incomplete.append(f"{lost_records} records ({losses.get('ring_full_bytes') or meta.get('lost_bytes', 0)} "
                          "bytes) were lost in a full ring buffer")
    incomplete_calls = (meta.get("analysis") or {}).get("llm.incomplete") or meta.get("incomplete_llm_calls")
    if incomplete_calls:
        incomplete.append(f"{incomplete_calls} LLM calls are incomplete")

    by_tool: dict[int, list[dict[str, Any]]] = {}
    for row in db.execute("SELECT * FROM links ORDER BY id"):
        by_tool.setdefault(row["tool_call_id"], []).append(dict(row))
    unexplained: dict[str, list[dict[str, Any]]] = {"process": [], "file": []}
    if _has_table(db, "unexplained"):
        for u in db.execute("SELECT * FROM unexplained ORDER BY id"):
            unexplained[u["kind"]].append(dict(u))
    startup: dict[str, list[dict[str, Any]]] = {"process": [], "file": []}
    if _has_table(db, "startup"):
        for s in db.execute("SELECT * FROM startup ORDER BY id"):
            startup[s["kind"]].append(dict(s))
    results: dict[int, dict[str, Any]] = {}  # tool_calls.id -> its result
    carried: dict[int, list[dict[str, Any]]] = {}  # llm_calls.id -> the results its request carried back
    if _has_table(db, "tool_results"):
        for r in db.execute("SELECT * FROM tool_results ORDER BY id"):
            results.setdefault(r["tool_call_id"], dict(r))
            carried.setdefault(r["llm_call_id"], []).append(dict(r))
    llm_started = {r["id"]: r["started_ns"] for r in db.execute("SELECT id, started_ns FROM llm_calls")}
    tool_names = {r["id"]: (r["call_id"], r["name"]) for r in db.execute("SELECT id, call_id, name FROM tool_calls")}

    calls = []
    tokens: dict[str, dict[str, int]] = {}
    for row in db.execute("SELECT * FROM llm_calls ORDER BY started_ns"):
        record = orjson.loads(row["record"])
        model = row["model"] or "?"
        t = tokens.setdefault(model, {"input": 0, "output": 0})
        t["input"] += row["input_tokens"] or 0
        t["output"] += row["output_tokens"] or 0
        tool_calls = []
        for tc in db.execute("SELECT * FROM tool_calls WHERE llm_call_id = ? ORDER BY id", (row["id"],)):
            activity = []
            for link in sorted(by_tool.get(tc["id"], []), key=lambda l: (l["kind"] != "process", l["id"])):
                evidence = orjson.loads(link["evidence"])
                role = link.get("role") or "command"
                if link["kind"] == "process":
                    p = processes.get(link["target_id"], {})
                    activity.append({"kind": "process", "role": role, **_process(p), "evidence": evidence})
                else:
                    f = files.get(link["target_id"], {})
                    activity.append({"kind": "file", "role": role, **_file(f), "evidence": evidence})
            result = results.get(tc["id"])
            tool_calls.append({
                "id": tc["call_id"], "name": tc["name"], "arguments": orjson.loads(tc["arguments"] or "null"),
                "result": None if result is None else {
                    "sent_ns": result["sent_ns"], "duration_ms": _ms(result["duration_ns"]),
                    "is_error": None if result["is_error"] is None else bool(result["is_error"]),
                    "size": result["size"], "llm_call_started_ns": llm_started.get(result["llm_call_id"])},
                "activity": activity})
        response = record.get("response") or {}
        usage = record.get("usage") or {}
        started, ended, first = row["started_ns"], row["ended_ns"], record.get("first_token_ns")
        calls.append({
            "started_ns": started, "ended_ns": ended, "provider": row["provider"], "api": record.get("api"),
            "model": row["model"], "served_model": response.get("model"), "input_tokens": row["input_tokens"],
            "output_tokens": row["output_tokens"],
            "cache_read_tokens": usage.get("cache_read_input_tokens"),
            "cache_write_tokens": usage.get("cache_creation_input_tokens"),
            "reasoning_tokens": usage.get("reasoning_tokens"), "usage": usage,
            "stream": record.get("stream"),
            "ttft_ms": _ms(first - started) if first and started else None,
            "latency_ms": _ms((ended or 0) - (started or 0)),
            "status": row["status"], "incomplete": bool(row["incomplete"]), "pid": row["pid"],
            "input": _input(record, carried.get(row["id"], []), tool_names),
            "text": response.get("text") or "", "thinking": response.get("thinking"),
            "stop_reason": response.get("stop_reason"), "error": record.get("error"), "tool_calls": tool_calls,
        })

    def listed(rows: list[dict[str, Any]], kind: str, extra: bool) -> list[dict[str, Any]]:
        out = []
        for u in rows:
            target = (processes if kind == "process" else files).get(u["target_id"])
            if target is None:
                continue
            item = _process(target) if kind == "process" else _file(target)
            if extra:
                item["reason"] = u["reason"]
            out.append(item)
        return out

    started, ended = meta.get("started_ns"), meta.get("ended_ns")
    last_event = db.execute("SELECT MAX(ts) FROM raw_events").fetchone()[0]
    return {
        "session": {"path": path, "status": status, "command": meta.get("command"), "pid": meta.get("pid"),
                    "comm": meta.get("comm"), "command_exit": meta.get("command_exit"),
                    "started_ns": started, "ended_ns": ended, "last_event_ns": last_event, "incomplete": incomplete},
        "startup": {"processes": listed(startup["process"], "process", False),
                    "files": listed(startup["file"], "file", False)},
        "llm_calls": calls,
        "unexplained": {"processes": listed(unexplained["process"], "process", True),
                        "files": listed(unexplained["file"], "file", True)},
        "totals": {
            "llm_calls": len(calls), "tokens_by_model": tokens,
            "tool_calls": sum(len(c["tool_calls"]) for c in calls),
            "tool_results": sum(len(v) for v in carried.values()),
            "commands": sum(1 for p in processes.values() if p["argv"] is not None),
            "files_written": len(files),
            "connections": db.execute("SELECT COUNT(*) FROM connections").fetchone()[0],
            "bytes_lost": (losses.get("ring_full_bytes") or meta.get("lost_bytes") or 0)
            + (losses.get("truncated_bytes") or meta.get("truncated_bytes") or 0),
        },
    }


def _input(record: dict[str, Any], carried: list[dict[str, Any]],
           tool_names: dict[int, tuple[str | None, str | None]]) -> dict[str, Any]:
    """What led to an LLM call: the tool results its request carried back
    (as correlation matched them), else the last message the user wrote."""
    found = request_input(record.get("provider") or "", record.get("api") or "", record.get("request"))
    blocks = {b.where: b for b in found.tool_results}
    if carried:
        out = []
        for r in carried:
            block = blocks.get(r["location"])
            call_id, name = tool_names.get(r["tool_call_id"], (None, None))
            out.append({"tool_call_id": call_id, "name": name, "sent_ns": r["sent_ns"],
                        "duration_ms": _ms(r["duration_ns"]),
                        "is_error": None if r["is_error"] is None else bool(r["is_error"]),
                        "content": content_text(block.content) if block is not None else None})
        return {"kind": "tool_results", "tool_results": out}
    if found.latest_is_tool_results:
        return {"kind": "tool_results", "tool_results": [
            {"tool_call_id": b.id, "name": b.name, "sent_ns": None, "duration_ms": None, "is_error": b.is_error,
             "content": content_text(b.content)} for b in found.tool_results if b.latest]}
    if found.user_text is not None:
        return {"kind": "user", "text": found.user_text}
    return {"kind": "none"}


def _evidence(e: dict[str, Any]) -> str:
    keys = ("arguments", "wrapper") if e.get("wrapper") else ("arguments", "parent_linked", "process")
    parts = [str(e[k]) for k in keys if e.get(k)]
    return printable("; ".join(parts))


def _tokens(c: dict[str, Any]) -> str:
    cache = []
    if c.get("cache_read_tokens") is not None:
        cache.append(f"cache read {c['cache_read_tokens']}")
    if c.get("cache_write_tokens") is not None:
        cache.append(f"cache write {c['cache_write_tokens']}")
    text = f"tokens in {c['input_tokens'] if c['input_tokens'] is not None else '?'}"
    if cache:
        text += f" ({', '.join(cache)})"
    text += f" · out {c['output_tokens'] if c['output_tokens'] is not None else '?'}"
    if c.get("reasoning_tokens"):
        text += f" (reasoning {c['reasoning_tokens']})"
    return text


def _end(p: dict[str, Any]) -> str:
    if p.get("signal"):
        return f"signal {p['signal']}"
    if p.get("exit_code") is None:
        return "then exec'd another program" if p.get("ended_ns") else "running"
    return f"exit {p['exit_code']}"


def _file_line(a: dict[str, Any]) -> str:
    target = f" -> {_cut(a['new_path'], ARGV_WIDTH)}" if a.get("new_path") else ""
    return f"{a['op'] or '?':<6} {_cut(a['path'] or '?', ARGV_WIDTH)}{target}"


def render_text(report: dict[str, Any]) -> str:
    s = report["session"]
    what = _command(s["command"]) if s["command"] else f"pid {s['pid']}" if s["pid"] else f"comm {s['comm']}"
    what = _cut(what, ARGV_WIDTH)
    if s["status"] == "recording":  # agentsight was killed: it never wrote how it ended
        last = s.get("last_event_ns")
        seconds = ((last or s["started_ns"] or 0) - (s["started_ns"] or 0)) / 1e9
        status = f"interrupted (the last event at {_clock(last)})" if last else "interrupted (no event was stored)"
        head = f"{status} · {what} · exit unknown · {seconds:.1f} s until the last event"
    else:
        seconds = ((s["ended_ns"] or s["started_ns"] or 0) - (s["started_ns"] or 0)) / 1e9
        exit_status = "unknown" if s["command_exit"] is None and s["command"] else s["command_exit"]
        head = f"{printable(s['status'])} · {what} · exit {printable(exit_status)} · {seconds:.1f} s"
    lines = [f"Session {printable(s['path'])}: {head}"]
    for reason in s["incomplete"]:
        lines.append(f"  incomplete: {printable(reason)}")

    start = report.get("startup") or {"processes": [], "files": []}
    if start["processes"] or start["files"]:
        lines += ["", "Start-up (before the first LLM call)"]
        for p in start["processes"]:
            lines.append(f"  {_clock(p['started_ns'])}  ran {_cut(_command(p['argv']), ARGV_WIDTH)}  "
                         f"(pid {p['pid']}, {_end(p)})")
        for f in start["files"]:
            lines.append(f"  {_file_line(f)}  (pid {f['pid']})")

    lines += ["", "LLM calls"]
    if not report["llm_calls"]:
        lines.append("  none")
    for n, c in enumerate(report["llm_calls"], 1):
        flag = "  (incomplete)" if c["incomplete"] else ""
        model = printable(c["model"])
        if c.get("served_model") and c["served_model"] != c["model"]:
            model += f" (served {printable(c['served_model'])})"
        ttft = _duration(c["ttft_ms"]) if c.get("ttft_ms") is not None else \
            "n/a (not streamed)" if not c.get("stream") else "?"
        lines.append(f"  #{n} {_clock(c['started_ns'])}  {printable(c['provider'])} {model}  "
                     f"status {c['status']}{flag}")
        lines.append(f"      {_tokens(c)} · first token {ttft} · total {_duration(c['latency_ms'])}")
        lines += _render_input(c.get("input") or {"kind": "none"})
        if c.get("error"):
            lines.append(f"      error: {_cut(orjson.dumps(c['error']).decode(), TEXT_WIDTH)}")
        text = c["text"] or ""
        if text:
            said = _cut_text(text)
            lines.append(f"      → assistant: {said[0]}")
            lines += [f"                   {line}" for line in said[1:]]
        elif not c["tool_calls"]:
            lines.append("      → assistant: (no text)")
        for tc in c["tool_calls"]:
            args = _cut(orjson.dumps(tc["arguments"]).decode(), ARGUMENTS_WIDTH)
            ident = f" {printable(tc['id'])}" if tc.get("id") else ""
            lines.append(f"      tool call {printable(tc['name'])}{ident} {args}")
            r = tc.get("result")
            if r is not None:
                err = " (an error)" if r.get("is_error") else ""
                lines.append(f"          result sent back {_clock(r['sent_ns'])}{err}: the tool took "
                             f"{_duration(r['duration_ms'])}")
            forks = 0
            for a in tc["activity"]:
                why = _evidence(a["evidence"])
                wrapper = "wrapper: " if a.get("role") == "wrapper" else ""
                if a["kind"] == "process":
                    if a["argv"] is None:
                        forks += 1
                        continue
                    verb = "shell" if a.get("role") == "shell" else "ran"
                    lines.append(f"          {wrapper}{verb:<6} {_cut(_command(a['argv']), ARGV_WIDTH)}  "
                                 f"(pid {a['pid']}, {_end(a)})  [{why}]")
                else:
                    lines.append(f"          {wrapper}{_file_line(a)}  (pid {a['pid']})  [{why}]")
            if forks:
                lines.append(f"          (and {forks} forked subshell{'s' if forks > 1 else ''} of linked processes)")
            if not tc["activity"]:
                lines.append("          (no activity linked)")
    lines += ["", "Unexplained activity"]
    u = report["unexplained"]
    if not u["processes"] and not u["files"]:
        lines.append("  none")
    for p in u["processes"]:
        lines.append(f"  {_clock(p['started_ns'])}  ran {_cut(_command(p['argv']), ARGV_WIDTH)}  "
                     f"(pid {p['pid']}, {_end(p)}): {printable(p['reason'])}")
    for f in u["files"]:
        lines.append(f"  {_file_line(f)}  (pid {f['pid']}): {printable(f['reason'])}")
    t = report["totals"]
    models = ", ".join(f"{printable(m)} {v['input']} in / {v['output']} out"
                       for m, v in t["tokens_by_model"].items()) or "none"
    lines += ["", "Totals",
              f"  LLM calls {t['llm_calls']} · tokens: {models}",
              f"  tool calls {t.get('tool_calls', 0)} · results sent back {t.get('tool_results', 0)}",
              f"  commands {t['commands']} · files written {t['files_written']} · connections {t['connections']}"
              f" · bytes lost {t['bytes_lost']}"]
    return "\n".join(lines) + "\n"


def _render_input(inp: dict[str, Any]) -> list[str]:
    if inp["kind"] == "user":
        said = _cut_text(inp["text"])
        return [f"      ← user: {said[0]}"] + [f"              {line}" for line in said[1:]]
    if inp["kind"] == "tool_results":
        out = []
        for r in inp["tool_results"]:
            name = printable(r.get("name") or r.get("tool_call_id") or "?")
            head = f"      ← tool result for {name}"
            if r.get("sent_ns"):
                head += f" (sent {_clock(r['sent_ns'])}, the tool took {_duration(r['duration_ms'])})"
            if r.get("is_error"):
                head += " (an error)"
            content = r.get("content")
            if content is None:
                out.append(head)
                continue
            said = _cut_text(content) if content.strip() else ["(empty)"]
            out.append(f"{head}: {said[0]}")
            out += [f"          {line}" for line in said[1:]]
        return out
    return []


def export_events(db: sqlite3.Connection, out: BinaryIO) -> int:
    """Raw events and derived records (llm_call, http), in time order."""
    query = """
        SELECT ts, event FROM raw_events
        UNION ALL SELECT ended_ns, record FROM llm_calls
        UNION ALL SELECT ts, record FROM http_exchanges
        ORDER BY 1"""
    n = 0
    for _, event in db.execute(query):
        out.write(event.encode() + b"\n")
        n += 1
    return n
