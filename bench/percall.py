"""Part 1: what the hooks add to one TLS call.

Two workload processes make TLS calls with no syscall in the loop (a client
and a server joined by memory BIOs): CPython's ssl module (SSL_write_ex /
SSL_read_ex) and a small C program built here against the system libssl
(SSL_write / SSL_read). Each is timed with nothing attached, with
`agentsight ssl --pid` (only that process), with `agentsight ssl` (every
process), and, to see where the time goes, with bpftrace's empty uprobes
(entry only; entry + return) on the same functions.

On OpenSSL 3 agentsight hooks ssl_write_internal / ssl_read_internal, where
all four functions meet and whose first instruction the kernel emulates
instead of single-stepping; bpftrace's probes sit on the exported functions.

Reported: median µs added per call against the same run's `off`.
"""
from __future__ import annotations

from pathlib import Path

from common import (LIBSSL, PY, WORKERS, Agentsight, Bpftrace, NoTracer, Worker, bpftrace_script, certificate,
                    compile_c, median, rotated, scratch_dir, timed_rounds)

PAYLOAD = 64
FUNCTIONS = ["SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"]


# --- the benchmark ---------------------------------------------------------------------------
def run(cfg: dict) -> dict:
    quick = cfg["quick"]
    rounds = 2 if quick else 5
    n = 4000 if quick else 10000       # round trips (2 calls) per batch
    batches = 3                         # per worker and session; their median counts
    with scratch_dir("percall") as tmp:
        tmp = Path(tmp)
        cert, key = certificate(tmp)
        exe = compile_c(WORKERS / "ssl_pingpong.c", tmp, ("-lssl", "-lcrypto"))
        workers = {
            "python (SSL_write_ex/SSL_read_ex)": Worker([PY, str(WORKERS / "py_ssl_pingpong.py"), str(cert), str(key)],
                                                         "py_ssl_pingpong"),
            "C (SSL_write/SSL_read)": Worker([str(exe), str(cert), str(key)], "ssl_pingpong"),
        }
        try:
            return _measure(workers, rounds, n, batches, tmp, cfg)
        finally:
            for w in workers.values():
                w.close()


def _measure(workers: dict[str, Worker], rounds: int, n: int, batches: int, tmp: Path, cfg: dict) -> dict:
    bt_fns = {LIBSSL: FUNCTIONS}
    # name -> (start(list of workers) -> tracer, one session per worker?)
    sessions: dict[str, tuple] = {
        "off": (lambda ws: NoTracer(), False),
        "agentsight ssl --pid": (lambda ws: Agentsight(["ssl", "--pid", str(ws[0].pid)]), True),
        "agentsight ssl (all processes)": (lambda ws: Agentsight(["ssl"]), False),
        "bpftrace empty uprobe": (lambda ws: Bpftrace(bpftrace_script(bt_fns, "entry"), tmp), False),
        "bpftrace empty uprobe+uretprobe": (lambda ws: Bpftrace(bpftrace_script(bt_fns, "empty"), tmp), False),
    }

    # samples[session][worker] = [ns per call, one per round]
    samples = {s: {w: [] for w in workers} for s in sessions}
    events = {s: {w: [] for w in workers} for s in sessions}
    for w in workers.values():                              # warm up
        w.call(f"calls {n} {PAYLOAD}")
    for r in timed_rounds("percall", rounds, cfg):
        for name in rotated(list(sessions), r):
            start, per_worker = sessions[name]
            groups = [[w] for w in workers] if per_worker else [list(workers)]
            for group in groups:
                tracer = start([workers[g] for g in group])
                try:
                    per = {}
                    for g in group:
                        res = [workers[g].call(f"calls {n} {PAYLOAD}") for _ in range(batches)]
                        per[g] = median([x["ns"] / x["calls"] for x in res])
                        samples[name][g].append(per[g])
                finally:
                    summary = tracer.stop()
                if summary.get("events") is not None:   # for `all`, other processes' calls count too
                    for g in group:
                        events[name][g].append(summary["events"] / (batches * 2 * n * len(group)))

    results = {"payload_bytes": PAYLOAD, "round_trips_per_batch": n, "rounds": len(samples["off"][next(iter(workers))]),
               "workers": {}}
    for w in workers:
        base = median(samples["off"][w])
        row = {"off_ns_per_call": round(base, 1), "sessions": {}}
        for s in sessions:
            if s == "off":
                continue
            med = median(samples[s][w])
            row["sessions"][s] = {
                "ns_per_call": round(med, 1),
                "added_us_per_call": round((med - base) / 1000, 2),
                "samples_ns": [round(x, 1) for x in samples[s][w]],
                "events_per_call": round(median(events[s][w]), 3) if events[s][w] else None,
            }
        results["workers"][w] = row
    return results


def rows(res: dict) -> list[tuple]:
    out = []
    for w, row in res["workers"].items():
        for s, v in row["sessions"].items():
            target = "<= 3 µs" if s == "agentsight ssl --pid" else ""
            out.append((f"per-call {w}", s, f"+{v['added_us_per_call']:.2f} µs/call", target))
    return out
