"""Part 5: start-up and memory.

Start-up: from the command's start to agentsight's `ready` line (every probe
attached), against bpftrace with the probes of part 2 (libssl.so.3 and
node), to its `Attaching N probes...` line and to the output of its BEGIN
probe, which runs once every probe is attached. Alternated, medians.

Memory: VmHWM (peak RSS) of the capture process read just before SIGINT,
idle here; under load it is taken from the other parts' sessions.
"""
from __future__ import annotations

import time
from pathlib import Path

from common import Agentsight, Bpftrace, bpftrace_script, log, median, rotated, scratch_dir
from https_rtt import PEER_SCRIPT_FUNCTIONS

IDLE_S = 0.5


def run(cfg: dict) -> dict:
    reps = 3 if cfg["quick"] else 7
    tracers = {
        "agentsight trace": lambda tmp: Agentsight(["trace"], tmp / "trace.jsonl"),
        "agentsight ssl": lambda tmp: Agentsight(["ssl"], tmp / "ssl.jsonl"),
        "bpftrace (peer)": lambda tmp: Bpftrace(bpftrace_script(PEER_SCRIPT_FUNCTIONS), tmp),
    }
    res = {t: [] for t in tracers}
    deadline = time.monotonic() + cfg["budget_s"]
    with scratch_dir("startup") as tmp:
        tmp = Path(tmp)
        for r in range(reps):
            if r and time.monotonic() > deadline:
                log("startup: time budget reached, fewer repetitions")
                break
            for name in rotated(list(tracers), r):
                tracer = tracers[name](tmp)
                time.sleep(IDLE_S)
                res[name].append(tracer.stop())
    out = {"repetitions": len(res["agentsight trace"])}
    for name, xs in res.items():
        out[name] = {
            "ready_s": round(median([x["ready_s"] for x in xs]), 3),
            "attaching_s": round(median([x["attaching_s"] for x in xs]), 3) if "attaching_s" in xs[0] else None,
            "stop_s": round(median([x["stop_s"] for x in xs]), 3),
            "vm_hwm_mb_idle": round(max(x["vm_hwm_kb"] or 0 for x in xs) / 1024, 1),
            "ring_rss_mb": round(max(x.get("ring_rss_kb") or 0 for x in xs) / 1024, 1),
            "samples_ready_s": [round(x["ready_s"], 3) for x in xs],
        }
    return out


def rows(res: dict, loaded_hwm_kb: dict[str, int]) -> list[tuple]:
    t, b = res["agentsight trace"], res["bpftrace (peer)"]
    out = [
        ("start-up to `ready` (all probes attached)", "agentsight trace",
         f"{t['ready_s']:.2f} s (bpftrace: {b['ready_s']:.2f} s to BEGIN, {b['attaching_s']:.2f} s to 'Attaching')",
         "<= 1 s"),
        ("start-up to `ready`", "agentsight ssl", f"{res['agentsight ssl']['ready_s']:.2f} s", ""),
        ("stop (SIGINT to exit, idle)", "agentsight trace",
         f"{t['stop_s']:.2f} s (bpftrace: {b['stop_s']:.2f} s)", ""),
        ("peak RSS (VmHWM), idle", "agentsight trace",
         f"{t['vm_hwm_mb_idle']:.0f} MB, of which ring mappings {t['ring_rss_mb']:.0f} MB "
         f"(ssl: {res['agentsight ssl']['vm_hwm_mb_idle']:.0f} MB; bpftrace: {b['vm_hwm_mb_idle']:.0f} MB)",
         "<= 150 MB"),
    ]
    for where, kb in loaded_hwm_kb.items():
        if kb:
            out.append((f"peak RSS under load ({where})", "agentsight trace", f"{kb / 1024:.0f} MB", "<= 150 MB"))
    return out
