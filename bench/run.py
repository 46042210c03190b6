#!/usr/bin/env python3
"""agentsight's benchmark suite (issue 6): every part side by side in one run,
as ratios and differences against the same run's baseline, never absolute
thresholds. Needs root (it loads BPF programs), gcc, node and bpftrace.

    sudo python3 bench/run.py [--quick] [--json FILE] [--only PART ...]

Parts (one module each, see their docstrings):
  percall    µs added per SSL_write_ex/SSL_read_ex (Python) and SSL_write/SSL_read (C)
  https      keep-alive HTTPS round trips (Python and node clients): trace vs bpftrace
  agent      agent-like workload (streamed LLM calls + a subprocess each): overhead of trace
  capacity   events/s the consumer sustains without loss: opens, SSL 100 B and 16 KiB
  startup    start-up to `ready` and peak RSS of trace, against bpftrace
  syscalls   µs added to open+close and write+read of every process

Each comparison alternates its conditions (A B A B ...) and reports medians.
`--quick` takes under ~3 minutes; the full run up to ~15.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import agent_workload  # noqa: E402
import capacity  # noqa: E402
import https_rtt  # noqa: E402
import syscalls  # noqa: E402
import percall  # noqa: E402
import startup  # noqa: E402
from common import BENCH, LIBSSL, NODE, NOISE, REPO, end_all, log  # noqa: E402

PARTS = {"percall": percall, "https": https_rtt, "agent": agent_workload, "capacity": capacity, "startup": startup,
         "syscalls": syscalls}
# Seconds each part may start new rounds for (a round under way finishes).
BUDGET = {"quick": {"percall": 35, "https": 25, "agent": 35, "capacity": 45, "startup": 10, "syscalls": 20},
          "full": {"percall": 150, "https": 150, "agent": 200, "capacity": 240, "startup": 60, "syscalls": 90}}


def meta(quick: bool) -> dict:
    def out(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=REPO).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "quick": quick, "kernel": platform.release(),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "git": out(["git", "rev-parse", "--short", "HEAD"]),
            "git_dirty": bool(out(["git", "status", "--porcelain", "--", "agentsight", "csrc", "prebuilt"])),
            "libssl": os.path.realpath(LIBSSL), "node": out([NODE, "--version"]),
            "bpftrace": out(["bpftrace", "--version"])}


def print_table(rows: list[tuple]) -> None:
    head = ("measurement", "under test", "result", "target")
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(4)]
    widths[2] = min(widths[2], 110)
    line = "  ".join("-" * w for w in widths)
    print(line)
    print("  ".join(str(h).ljust(w) for h, w in zip(head, widths)))
    print(line)
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small N, few rounds: under ~3 minutes")
    parser.add_argument("--json", type=Path, default=BENCH / "results" / "latest.json",
                        help="write the results here (default: bench/results/latest.json)")
    parser.add_argument("--only", nargs="+", choices=list(PARTS), help="run only these parts")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench/run.py: run as root: it loads BPF programs", file=sys.stderr)
        return 2
    missing = [t for t in ("gcc", "bpftrace", "node") if not shutil.which(t)]
    if missing:
        print(f"bench/run.py: missing {', '.join(missing)} (apt-get install -y {' '.join(missing)})",
              file=sys.stderr)
        return 2
    # SIGTERM ends the run like Ctrl-C: every process it started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    mode = "quick" if args.quick else "full"
    results: dict = {"meta": meta(args.quick), "parts": {}, "seconds": {}, "errors": {}}
    rows: list[tuple] = []
    started = time.monotonic()
    try:
        for name, module in PARTS.items():
            if args.only and name not in args.only:
                continue
            log(f"{name}: starting")
            t = time.monotonic()
            try:
                results["parts"][name] = module.run({"quick": args.quick, "budget_s": BUDGET[mode][name]})
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # one part failing must not lose the others
                log(f"{name}: failed: {type(exc).__name__}: {exc}")
                results["errors"][name] = f"{type(exc).__name__}: {exc}"
            finally:
                end_all()
            results["seconds"][name] = round(time.monotonic() - t, 1)
            log(f"{name}: done in {results['seconds'][name]:.0f} s")
    except KeyboardInterrupt:
        log("interrupted")
        end_all()
        return 130

    parts = results["parts"]
    for name in ("percall", "https", "agent", "capacity", "syscalls"):
        if name in parts:
            rows += PARTS[name].rows(parts[name])
    if "startup" in parts:
        loaded = {}
        if "https" in parts:
            loaded["HTTPS round trips"] = parts["https"]["tracers"].get("agentsight trace", {}).get("vm_hwm_kb_max")
        if "agent" in parts:
            loaded["agent-like workload"] = parts["agent"].get("vm_hwm_kb_max")
        rows += startup.rows(parts["startup"], loaded)
    results["table"] = [dict(zip(("measurement", "under_test", "result", "target"), r)) for r in rows]
    results["seconds"]["total"] = round(time.monotonic() - started, 1)
    results["foreign_tracers"] = NOISE

    print_table(rows)
    if NOISE:
        print(f"WARNING: {len(NOISE)} rounds ran while tracers this run did not start were attached "
              f"(parts: {', '.join(sorted({n['part'] for n in NOISE}))}): their figures are noisy")
    for name, err in results["errors"].items():
        print(f"{name}: FAILED: {err}")
    print(f"total {results['seconds']['total']:.0f} s; results in {args.json}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
