"""Part 3: an agent-like workload, wall time with and without agentsight.

The client (bench/workers/agent_client.py, the openai SDK) makes streaming
chat completions to tests/llm_mock.py on 127.0.0.1 — a few hundred SSE
chunks each — and runs a short subprocess (`true`) after each call, as an
agent runs a tool. Two pacings of the stream: one chunk every CHUNK_MS (a
fast model streams a chunk every 10-30 ms, so this overstates the
overhead), and no delay at all (a stress case: the client is CPU-bound).

Reported: the client's own wall time for its calls, median with / median
without, as an overhead in percent.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from common import (PY, WORKERS, Agentsight, Worker, median, parse_summary, rotated, scratch_dir, timed_rounds)

# The capture under test: the client runs under `agentsight record -- CMD`
# (set "trace" to measure a system-wide trace instead).
CAPTURE = "record"

CHUNKS = 250          # SSE deltas per call
PIECE = 4             # characters per delta
CHUNK_MS = 2.0


def client_argv(server: dict, calls: int, result: Path) -> list[str]:
    return [PY, str(WORKERS / "agent_client.py"), server["base_url"], server["ca_file"], str(calls), str(result)]


def plain_run(argv: list[str], result: Path, tmp: Path) -> tuple[dict, dict]:
    subprocess.run(argv, check=True, timeout=600, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text()), {}


def capture_run(argv: list[str], result: Path, tmp: Path) -> tuple[dict, dict]:
    """The client run once under agentsight: (client's result, agentsight's summary)."""
    out = tmp / ("session.db" if CAPTURE == "record" else "capture.jsonl")
    if CAPTURE == "record":
        proc = subprocess.run([PY, "-m", "agentsight", "record", "-o", str(out), "--", *argv], check=True,
                              timeout=600, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        summary = parse_summary(proc.stderr)
    else:
        tracer = Agentsight([CAPTURE], out)
        try:
            subprocess.run(argv, check=True, timeout=600, stdout=subprocess.DEVNULL)
        finally:
            summary = tracer.stop()
    out.unlink(missing_ok=True)
    return json.loads(result.read_text()), summary


def run(cfg: dict) -> dict:
    quick = cfg["quick"]
    rounds = 2 if quick else 5
    calls = 3 if quick else 10
    variants = {f"{CHUNK_MS:g} ms between chunks": CHUNK_MS / 1000, "no delay (stress)": 0.0}
    conditions = {"off": plain_run, f"agentsight {CAPTURE}": capture_run}
    with scratch_dir("agent") as tmp:
        tmp = Path(tmp)
        server = Worker([PY, str(WORKERS / "llm_server.py")], "llm_server")
        result = tmp / "result.json"
        seconds = {v: {c: [] for c in conditions} for v in variants}
        summaries = []
        try:
            for r in timed_rounds("agent", rounds, cfg):
                for v, delay in variants.items():
                    server.call(f"script {CHUNKS * PIECE} {PIECE} {delay}")
                    for c in rotated(list(conditions), r):
                        res, summary = conditions[c](client_argv(server.info, calls, result), result, tmp)
                        seconds[v][c].append(res["seconds"])
                        if summary:
                            summaries.append(summary)
                        chunks = res["chunks"] / res["calls"]
                    server.call("reset")
        finally:
            server.close()

    out = {"capture": CAPTURE, "calls_per_run": calls, "chunks_per_call": chunks,
           "rounds": len(seconds[next(iter(variants))]["off"]), "variants": {},
           "vm_hwm_kb_max": max((s.get("vm_hwm_kb") or 0 for s in summaries), default=None),
           "lost_records": sum(s.get("lost_records") or 0 for s in summaries)}
    on = f"agentsight {CAPTURE}"
    for v in variants:
        base, med = median(seconds[v]["off"]), median(seconds[v][on])
        out["variants"][v] = {"off_s_per_call": round(base / calls, 4), "on_s_per_call": round(med / calls, 4),
                              "overhead_pct": round((med / base - 1) * 100, 2),
                              "samples_s": {c: [round(x, 3) for x in xs] for c, xs in seconds[v].items()}}
    return out


def rows(res: dict) -> list[tuple]:
    out = []
    for v, row in res["variants"].items():
        out.append((f"agent-like, {res['chunks_per_call']:.0f} SSE chunks + `true` per call, {v} "
                    f"(off {row['off_s_per_call'] * 1000:.0f} ms/call)",
                    f"agentsight {res['capture']}", f"{row['overhead_pct']:+.2f} %",
                    "<= 1 %" if "stress" not in v else ""))
    return out
