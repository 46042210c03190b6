"""Part: what a capture adds to the syscalls of every process.

agentsight follows syscalls on the per-syscall tracepoints: openat's entry
and return (the process collector's opens, and the ssl collector's notices
of TLS libraries opened later), unlink/rename/connect, and, once a program
hooked at the AEAD layer (rustls) is known, the entry of read, readv,
recvfrom, recvmsg and close, to tie each key to its socket. A program there
costs every call of that syscall, in every process. A small C program
(bench/workers/syscall_loop.c) times two loops: open(2) + close(2) of one
file (each open is also an event `trace` reports), and a one-byte write(2)
+ read(2) over a socket pair. Each is timed with nothing attached, under
`agentsight process` and `agentsight trace` (whose ready line tells whether
it follows reads), and under bpftrace with empty programs on the same
tracepoints (sys_enter_openat, sys_exit_openat, sys_enter_read,
sys_enter_close): what the attach points cost before any work is done.

Reported: median µs added per pair of syscalls against the same run's `off`.
"""
from __future__ import annotations

from pathlib import Path

from common import (WORKERS, Agentsight, Bpftrace, NoTracer, Worker, compile_c, median, rotated, scratch_dir,
                    timed_rounds)

from agentsight.collectors.tls.libraries import AEAD_KINDS

LOOPS = {"open": "open(2) + close(2)", "read": "write(2) + read(2), socket pair"}
PER_SYSCALL_SCRIPT = """BEGIN { printf("ready\\n"); }
tracepoint:syscalls:sys_enter_openat { }
tracepoint:syscalls:sys_exit_openat { }
tracepoint:syscalls:sys_enter_read { }
tracepoint:syscalls:sys_enter_close { }
"""


def run(cfg: dict) -> dict:
    quick = cfg["quick"]
    rounds = 3 if quick else 7
    n = 50000 if quick else 200000  # pairs of syscalls per batch
    batches = 3  # per loop and session; their median counts
    with scratch_dir("syscalls") as tmp:
        tmp = Path(tmp)
        worker = Worker([str(compile_c(WORKERS / "syscall_loop.c", tmp))], "syscall_loop")
        try:
            return _measure(worker, rounds, n, batches, tmp, cfg)
        finally:
            worker.close()


def _measure(worker: Worker, rounds: int, n: int, batches: int, tmp: Path, cfg: dict) -> dict:
    sessions = {
        "off": NoTracer,
        "agentsight process": lambda: Agentsight(["process"]),
        "agentsight trace": lambda: Agentsight(["trace"]),
        "bpftrace, empty programs on the same tracepoints": lambda: Bpftrace(PER_SYSCALL_SCRIPT, tmp),
    }
    samples: dict[str, dict[str, list[float]]] = {s: {loop: [] for loop in LOOPS} for s in sessions}
    aead_hooked: set[bool] = set()
    for loop in LOOPS:  # warm up
        worker.call(f"{loop} {n}")
    for r in timed_rounds("syscalls", rounds, cfg, 15):
        for name in rotated(list(sessions), r):
            tracer = sessions[name]()
            try:
                if name == "agentsight trace":
                    aead_hooked.add(_aead_hooked(tracer))
                for loop in LOOPS:
                    res = [worker.call(f"{loop} {n}") for _ in range(batches)]
                    samples[name][loop].append(median([x["ns"] / x["calls"] for x in res]))
            finally:
                tracer.stop()

    out: dict = {"pairs_per_batch": n, "rounds": len(samples["off"]["open"]),
                 "trace_follows_reads": sorted(aead_hooked), "loops": {}}
    for loop, label in LOOPS.items():
        base = median(samples["off"][loop])
        row: dict = {"label": label, "off_ns_per_pair": round(base, 1), "sessions": {}}
        for s in sessions:
            if s != "off":
                med = median(samples[s][loop])
                row["sessions"][s] = {"ns_per_pair": round(med, 1), "added_us_per_pair": round((med - base) / 1000, 3),
                                      "samples_ns": [round(x, 1) for x in samples[s][loop]]}
        out["loops"][loop] = row
    return out


def _aead_hooked(tracer: Agentsight) -> bool:
    """Whether trace hooked a program at the AEAD layer, and so follows reads."""
    ready = next((line for line in tracer.stderr if line.startswith("ready")), "")
    return any(f"({kind})" in ready for kind in AEAD_KINDS)


def rows(res: dict) -> list[tuple]:
    out = []
    follows = res.get("trace_follows_reads") == [True]
    for loop, row in res["loops"].items():
        for s, v in row["sessions"].items():
            under = s + (" (follows reads: an AEAD program is hooked)" if s == "agentsight trace" and follows
                         and loop == "read" else "")
            out.append((f"syscalls {row['label']} (off {row['off_ns_per_pair'] / 1000:.2f} µs)", under,
                        f"{v['added_us_per_pair']:+.3f} µs/pair", ""))
    return out
