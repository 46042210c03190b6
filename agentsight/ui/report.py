"""What a session shows a person (`report`), and every event in it (`export`).

The report renders what the recording stored: the LLM calls, the links that
correlation made between their tool calls and what those caused, and the
activity correlation found no tool call for. It computes none of it.
"""
from __future__ import annotations

import datetime
import shlex
import sqlite3
from typing import Any, BinaryIO

import orjson

from ..sinks.session import read_meta


def _clock(ns: int | None) -> str:
    if not ns:
        return "?"
    return datetime.datetime.fromtimestamp(ns / 1e9).strftime("%H:%M:%S.%f")[:-3]


def _command(argv: list[str] | None) -> str:
    return shlex.join(argv) if argv else "(no exec)"


def build_report(db: sqlite3.Connection, path: str) -> dict[str, Any]:
    meta = read_meta(db)
    db.row_factory = sqlite3.Row
    processes = {r["id"]: dict(r) for r in db.execute("SELECT * FROM processes")}
    files = {r["id"]: dict(r) for r in db.execute("SELECT * FROM file_activity")}
    incomplete = []
    status = meta.get("status", "recording")
    losses = meta.get("losses") or {}
    if str(meta.get("schema")) == "1":
        incomplete.append("recorded by an older agentsight: links and unexplained activity are as it stored them")
    if status == "recording":
        incomplete.append("the recording did not finish (agentsight was killed or crashed): up to its last second "
                          "is missing, and tool calls were not linked (links are made when a recording ends)")
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

    by_tool: dict[int, list[dict]] = {}
    for l in db.execute("SELECT * FROM links"):
        by_tool.setdefault(l["tool_call_id"], []).append(dict(l))
    unexplained: dict[str, list[dict[str, Any]]] = {"process": [], "file": []}
    has_unexplained = db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'unexplained'").fetchone() is not None
    if has_unexplained:
        for u in db.execute("SELECT * FROM unexplained ORDER BY id"):
            unexplained[u["kind"]].append(dict(u))

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
            for l in sorted(by_tool.get(tc["id"], []), key=lambda l: (l["kind"] != "process", l["target_id"])):
                evidence = orjson.loads(l["evidence"])
                if l["kind"] == "process":
                    p = processes.get(l["target_id"], {})
                    activity.append({"kind": "process", "pid": p.get("pid"), "argv": orjson.loads(p.get("argv") or "null"),
                                     "exit_code": p.get("exit_code"), "signal": p.get("signal"),
                                     "evidence": evidence})
                else:
                    f = files.get(l["target_id"], {})
                    activity.append({"kind": "file", "op": f.get("op"), "path": f.get("path"),
                                     "new_path": f.get("new_path"), "pid": f.get("pid"), "evidence": evidence})
            tool_calls.append({"id": tc["call_id"], "name": tc["name"],
                               "arguments": orjson.loads(tc["arguments"] or "null"), "activity": activity})
        calls.append({
            "started_ns": row["started_ns"], "provider": row["provider"], "model": row["model"],
            "input_tokens": row["input_tokens"], "output_tokens": row["output_tokens"],
            "latency_ms": round(((row["ended_ns"] or 0) - (row["started_ns"] or 0)) / 1e6, 1),
            "status": row["status"], "incomplete": bool(row["incomplete"]), "pid": row["pid"],
            "text": ((record.get("response") or {}).get("text") or "")[:200], "tool_calls": tool_calls,
        })

    unexplained_processes = []
    for u in unexplained["process"]:
        proc = processes.get(u["target_id"])
        if proc is not None:
            unexplained_processes.append({
                "pid": proc["pid"], "argv": orjson.loads(proc["argv"] or "null"), "exit_code": proc["exit_code"],
                "signal": proc["signal"], "started_ns": proc["exec_ns"] or proc["start_ns"], "reason": u["reason"]})
    unexplained_files = []
    for u in unexplained["file"]:
        change = files.get(u["target_id"])
        if change is not None:
            unexplained_files.append({"op": change["op"], "path": change["path"], "new_path": change["new_path"],
                                      "pid": change["pid"], "reason": u["reason"]})
    started, ended = meta.get("started_ns"), meta.get("ended_ns")
    last_event = db.execute("SELECT MAX(ts) FROM raw_events").fetchone()[0]
    return {
        "session": {"path": path, "status": status, "command": meta.get("command"), "pid": meta.get("pid"),
                    "comm": meta.get("comm"), "command_exit": meta.get("command_exit"),
                    "started_ns": started, "ended_ns": ended, "last_event_ns": last_event, "incomplete": incomplete},
        "llm_calls": calls,
        "unexplained": {"processes": unexplained_processes, "files": unexplained_files},
        "totals": {
            "llm_calls": len(calls), "tokens_by_model": tokens,
            "commands": sum(1 for p in processes.values() if p["argv"] is not None),
            "files_written": len(files),
            "connections": db.execute("SELECT COUNT(*) FROM connections").fetchone()[0],
            "bytes_lost": (losses.get("ring_full_bytes") or meta.get("lost_bytes") or 0)
            + (losses.get("truncated_bytes") or meta.get("truncated_bytes") or 0),
        },
    }


def _evidence(e: dict) -> str:
    parts = [v for k, v in e.items() if k in ("arguments", "parent_linked", "process")]
    return "; ".join(parts)


def render_text(report: dict[str, Any]) -> str:
    s = report["session"]
    what = _command(s["command"]) if s["command"] else f"pid {s['pid']}" if s["pid"] else f"comm {s['comm']}"
    if s["status"] == "recording":  # agentsight was killed: it never wrote how it ended
        last = s.get("last_event_ns")
        seconds = ((last or s["started_ns"] or 0) - (s["started_ns"] or 0)) / 1e9
        status = f"interrupted (the last event at {_clock(last)})" if last else "interrupted (no event was stored)"
        head = f"{status} · {what} · exit unknown · {seconds:.1f} s until the last event"
    else:
        seconds = ((s["ended_ns"] or s["started_ns"] or 0) - (s["started_ns"] or 0)) / 1e9
        exit_status = "unknown" if s["command_exit"] is None and s["command"] else s["command_exit"]
        head = f"{s['status']} · {what} · exit {exit_status} · {seconds:.1f} s"
    lines = [f"Session {s['path']}: {head}"]
    for reason in s["incomplete"]:
        lines.append(f"  incomplete: {reason}")
    lines += ["", "LLM calls"]
    if not report["llm_calls"]:
        lines.append("  none")
    for c in report["llm_calls"]:
        flag = "  (incomplete)" if c["incomplete"] else ""
        lines.append(f"  {_clock(c['started_ns'])}  {c['provider']} {c['model']}  in {c['input_tokens']}  "
                     f"out {c['output_tokens']}  {c['latency_ms'] / 1000:.2f} s  status {c['status']}{flag}")
        for tc in c["tool_calls"]:
            args = orjson.dumps(tc["arguments"]).decode()
            lines.append(f"      tool call {tc['name']} {args[:160]}")
            for a in tc["activity"]:
                why = _evidence(a["evidence"])
                if a["kind"] == "process":
                    end = f"signal {a['signal']}" if a["signal"] else f"exit {a['exit_code']}"
                    lines.append(f"          ran   {_command(a['argv'])[:120]}  (pid {a['pid']}, {end})  [{why}]")
                else:
                    target = f" -> {a['new_path']}" if a["new_path"] else ""
                    lines.append(f"          {a['op']:<5} {a['path']}{target}  [{why}]")
            if not tc["activity"]:
                lines.append("          (no activity linked)")
    lines += ["", "Unexplained activity"]
    u = report["unexplained"]
    if not u["processes"] and not u["files"]:
        lines.append("  none")
    for p in u["processes"]:
        end = f"signal {p['signal']}" if p["signal"] else f"exit {p['exit_code']}"
        lines.append(f"  {_clock(p['started_ns'])}  ran {_command(p['argv'])[:120]}  (pid {p['pid']}, {end}): "
                     f"{p['reason']}")
    for f in u["files"]:
        lines.append(f"  {f['op']} {f['path']} (pid {f['pid']})")
    t = report["totals"]
    models = ", ".join(f"{m} {v['input']} in / {v['output']} out" for m, v in t["tokens_by_model"].items()) or "none"
    lines += ["", "Totals",
              f"  LLM calls {t['llm_calls']} · tokens: {models}",
              f"  commands {t['commands']} · files written {t['files_written']} · connections {t['connections']}"
              f" · bytes lost {t['bytes_lost']}"]
    return "\n".join(lines) + "\n"


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
